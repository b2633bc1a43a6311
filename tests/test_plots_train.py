"""The fine-tuning figures (``persona_explorer.plots.train``): the loss per step with its
epochs, and the persona shift's bars per vector (base, tuned, tuned with a context)."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from persona_explorer.plots.train import ShiftBar, loss_figure, shift_figure

N_LAYERS = 30


def serialisable(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())  # what gradio does with a figure


def test_the_loss_is_drawn_per_step_with_epochs_and_their_means() -> None:
    losses = [3.0, 2.5, 2.0, 1.8, 1.2, 1.0]
    fig = loss_figure(losses, [3, 6], epoch_losses=[2.5, 1.333])
    serialisable(fig)
    line, *means = fig.data
    assert list(line.x) == [1, 2, 3, 4, 5, 6] and list(line.y) == losses
    assert [list(m.y) for m in means] == [[2.5, 2.5], [1.333, 1.333]]
    assert list(means[1].x) == [3.5, 6.5]  # the second epoch's steps
    # One dotted line between the two epochs (the run's end draws none), both labelled.
    assert [s.x0 for s in fig.layout.shapes] == [3.5]
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["epoch 1", "epoch 2"]
    assert "1.000 after step 6 of 6" in fig.layout.title.text


def test_a_live_loss_keeps_its_axis_while_the_line_grows() -> None:
    fig = loss_figure([2.0, 1.5], [], total_steps=8)
    assert tuple(fig.layout.xaxis.range) == (0.5, 8.5)
    assert "step 2 of 8" in fig.layout.title.text
    waiting = loss_figure([], total_steps=8)
    serialisable(waiting)
    assert "waiting" in waiting.layout.title.text and list(waiting.data[0].x) == []
    # Mid-run, after the first of two epochs: both halves labelled, the first one's mean shown.
    mid = loss_figure([3.0, 2.0, 1.0, 0.9, 0.8], [4], total_steps=8, epoch_losses=[1.725])
    assert [a.text for a in mid.layout.annotations] == ["epoch 1", "epoch 2"]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"losses": [1.0, float("nan")]}, "finite"),
        ({"losses": "1,2"}, "sequence"),
        ({"losses": [1.0, 2.0], "epoch_boundaries": [2, 1]}, "increasing"),
        ({"losses": [1.0, 2.0], "epoch_boundaries": [3]}, "beyond the last step"),
        ({"losses": [1.0, 2.0], "epoch_boundaries": [0]}, ">= 1"),
        ({"losses": [1.0, 2.0], "total_steps": 1}, "less than the steps drawn"),
        ({"losses": [1.0], "epoch_boundaries": [1], "epoch_losses": [1.0, 2.0]}, "one mean"),
        ({"losses": [1.0], "epoch_boundaries": [1.0]}, "int"),
    ],
)
def test_bad_losses_are_refused(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        loss_figure(**kwargs)


def bars(fig: go.Figure) -> list[go.Bar]:
    return [t for t in fig.data if isinstance(t, go.Bar)]


def test_every_vector_shares_one_axis_in_units_of_its_own_length() -> None:
    """The issue's misleading case: a large raw shift on a long vector next to a small one on a
    short vector. In persona lengths the order can flip, and the axis says the unit."""
    rows = [
        ShiftBar("sycophantic", 14, 1.0, 30.1, scale=100.0),  # +29.1 raw, 0.29 lengths
        {"name": "evil", "layer": 20, "base": 2.0, "tuned": 8.0, "scale": 10.0},  # +6.0, 0.6
    ]
    fig = shift_figure(rows, N_LAYERS)
    serialisable(fig)
    drawn = bars(fig)
    assert len(drawn) == 1  # one bar series, every vector on the same axis
    assert list(drawn[0].y) == ["sycophantic · layer 14", "evil · layer 20"]
    assert list(drawn[0].x) == pytest.approx([0.291, 0.6])
    assert drawn[0].x[1] > drawn[0].x[0]  # evil moved further, though its raw shift is smaller
    # Raw units stay on hover.
    assert [round(c[0], 3) for c in drawn[0].customdata] == [29.1, 6.0]
    assert "activation units" in drawn[0].hovertemplate
    assert "persona lengths" in fig.layout.xaxis.title.text
    assert fig.layout.xaxis.zeroline  # 0 = the base model
    assert ShiftBar("x", 1, 1.0, 3.0, scale=4.0).relative == 0.5


def test_the_inoculated_run_is_a_second_bar_and_the_prediction_a_diamond() -> None:
    rows = [
        ShiftBar("evil", 20, 1.0, 2.0, scale=2.0, predicted=4.0),
        ShiftBar("pirate", 20, 0.0, 0.5, scale=1.0),
    ]
    fig = shift_figure(rows, N_LAYERS, inoculated={"evil": 1.25}, inoculated_label="with ctx")
    drawn = bars(fig)
    assert [b.name for b in drawn] == ["tuned", "with ctx"]
    assert list(drawn[1].y) == ["evil · layer 20"]
    assert list(drawn[1].x) == pytest.approx([0.125])
    assert drawn[1].marker.color != drawn[0].marker.color
    diamonds = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(diamonds) == 1 and list(diamonds[0].x) == pytest.approx([2.0])
    assert diamonds[0].marker.symbol == "diamond"


def test_user_text_in_the_shift_figure_is_escaped() -> None:
    rows = [ShiftBar("<b>evil</b>", 3, 0.0, 1.0, scale=1.0)]
    fig = shift_figure(rows, N_LAYERS, inoculated_label="<i>x</i>", inoculated={"<b>evil</b>": 2})
    text = json.dumps(serialisable(fig))
    assert "<b>evil" not in text and "&lt;b&gt;evil" in text
    assert "<i>x" not in text


@pytest.mark.parametrize(
    ("rows", "kwargs", "pattern"),
    [
        ([], {}, "at least one"),
        ([ShiftBar("a", 1, 0.0, 1.0, 1.0)] * 2, {}, "once"),
        ([ShiftBar("a", 99, 0.0, 1.0, 1.0)], {}, "out of range"),
        ([ShiftBar("a", 1, 0.0, float("inf"), 1.0)], {}, "finite"),
        ([{"name": "", "layer": 1, "base": 0, "tuned": 1, "scale": 1}], {}, "non-empty"),
        ([ShiftBar("a", 1, 0.0, 1.0, 1.0)], {"inoculated": {"b": 1.0}}, "not in rows"),
        ([ShiftBar(str(i), 1, 0.0, 1.0, 1.0) for i in range(9)], {}, "at most 8"),
        ([ShiftBar("a", 1, 0.0, 1.0, 0.0)], {}, "positive"),
        ([{"name": "a", "layer": 1, "base": 0, "tuned": 1}], {}, "scale"),
    ],
)
def test_bad_shift_rows_are_refused(rows: list, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        shift_figure(rows, N_LAYERS, **kwargs)
