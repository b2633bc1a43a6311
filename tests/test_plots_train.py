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


def test_each_vector_gets_a_panel_with_base_and_tuned_and_its_shift() -> None:
    rows = [
        ShiftBar("evil", 20, 1.25, 1.75, predicted=5.7),
        {"name": "sycophantic", "layer": 14, "base": -0.5, "tuned": -0.75},
    ]
    fig = shift_figure(rows, N_LAYERS)
    serialisable(fig)
    drawn = bars(fig)
    assert [(b.y[0], b.x[0]) for b in drawn] == [
        ("base model", 1.25), ("tuned", 1.75), ("base model", -0.5), ("tuned", -0.75),
    ]  # fmt: skip
    assert not any(b.showlegend for b in drawn)  # named on their axis instead
    titles = [a.text for a in fig.layout.annotations]
    assert "evil · layer 20 · shift +0.50" in titles[0]
    assert "screening predicted +5.70" in titles[0]
    assert "shift −0.25" in titles[1] and "predicted" not in titles[1]
    assert ShiftBar("x", 1, 1.0, 3.0).shift == 2.0


def test_the_inoculated_run_is_a_third_bar() -> None:
    rows = [ShiftBar("evil", 20, 1.0, 2.0), ShiftBar("pirate", 20, 0.0, 0.5)]
    fig = shift_figure(rows, N_LAYERS, inoculated={"evil": 1.25}, inoculated_label="with ctx")
    drawn = bars(fig)
    assert [b.y[0] for b in drawn] == ["base model", "tuned", "with ctx", "base model", "tuned"]
    assert "(with ctx: +0.25)" in fig.layout.annotations[0].text
    assert drawn[2].marker.color != drawn[1].marker.color


def test_user_text_in_the_shift_figure_is_escaped() -> None:
    rows = [ShiftBar("<b>evil</b>", 3, 0.0, 1.0)]
    fig = shift_figure(rows, N_LAYERS, inoculated_label="<i>x</i>", inoculated={"<b>evil</b>": 2})
    text = json.dumps(serialisable(fig))
    assert "<b>evil" not in text and "&lt;b&gt;evil" in text
    assert "<i>x" not in text


@pytest.mark.parametrize(
    ("rows", "kwargs", "pattern"),
    [
        ([], {}, "at least one"),
        ([ShiftBar("a", 1, 0.0, 1.0)] * 2, {}, "once"),
        ([ShiftBar("a", 99, 0.0, 1.0)], {}, "out of range"),
        ([ShiftBar("a", 1, 0.0, float("inf"))], {}, "finite"),
        ([{"name": "", "layer": 1, "base": 0, "tuned": 1}], {}, "non-empty"),
        ([ShiftBar("a", 1, 0.0, 1.0)], {"inoculated": {"b": 1.0}}, "not in rows"),
        ([ShiftBar(str(i), 1, 0.0, 1.0) for i in range(9)], {}, "at most 8"),
    ],
)
def test_bad_shift_rows_are_refused(rows: list, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        shift_figure(rows, N_LAYERS, **kwargs)
