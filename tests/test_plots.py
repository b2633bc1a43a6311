from __future__ import annotations

import html
import json
import math
import re

import plotly.graph_objects as go
import pytest

from persona_explorer.plots import (
    BASELINE_COLOR,
    STEERED_COLORS,
    cosine_heatmap_figure,
    empty_figure,
    layer_projection_figure,
    separation_figure,
    similarity_statements,
    strength_strip_figure,
    token_panels_html,
    token_projection_html,
    token_view_caption,
)
from persona_explorer.plots.similarity import relation


def _annotation_texts(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def _serialisable(fig: go.Figure) -> None:
    # What gradio does with a figure: it must survive JSON.
    json.loads(fig.to_json())


# --------------------------------------------------------------------------- layer projection

BASE = [0.0, 0.5, 1.0, 1.5, 2.0]
ROWS = {"+2.0": [0.0, 0.6, 2.0, 3.0, 3.5], "-1.5": [0.0, 0.4, -0.5, -1.0, -1.2]}


def _top(fig: go.Figure) -> list:
    return [t for t in fig.data if t.yaxis in (None, "y")]


def _bottom(fig: go.Figure) -> list:
    return [t for t in fig.data if t.yaxis == "y2"]


def _rects(fig: go.Figure) -> list:
    return [s for s in fig.layout.shapes if s.type == "rect"]


def _lines(fig: go.Figure) -> list:
    return [s for s in fig.layout.shapes if s.type == "line"]


def test_layer_projection_two_panels() -> None:
    fig = layer_projection_figure(BASE, ROWS, steered_layers=[2, 3], title="My title")
    assert [t.name for t in _top(fig)] == ["baseline", "+2.0", "-1.5"]
    assert [t.name for t in _bottom(fig)] == ["+2.0", "-1.5"]
    for trace, values in zip(_bottom(fig), ROWS.values(), strict=True):
        # Exactly steered − baseline, layer by layer.
        assert list(trace.y) == [v - b for v, b in zip(values, BASE, strict=True)]
        assert trace.showlegend is False
        assert "+.3f" in trace.hovertemplate
    for trace in fig.data:
        assert list(trace.x) == [0, 1, 2, 3, 4]
    for trace in _top(fig):
        assert ":.3f" in trace.hovertemplate
    # The bottom panel shares the layer axis and shows its zero line.
    assert fig.layout.xaxis2.matches == "x" or fig.layout.xaxis.matches == "x2"
    assert fig.layout.xaxis2.title.text == "Layer"
    assert fig.layout.yaxis.title.text == "Projection (activation units)"
    assert "baseline" in fig.layout.yaxis2.title.text.lower()
    assert fig.layout.yaxis2.zeroline is True and fig.layout.yaxis2.rangemode == "tozero"
    assert fig.layout.yaxis.domain[1] - fig.layout.yaxis.domain[0] > (
        fig.layout.yaxis2.domain[1] - fig.layout.yaxis2.domain[0]
    )
    assert tuple(fig.layout.xaxis.range) == (-0.5, 4.5)
    assert fig.layout.title.text == "My title"
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied
    _serialisable(fig)


def test_layer_projection_colours_and_markers() -> None:
    rows = {f"row {k}": [float(k)] * 4 for k in range(3)}
    fig = layer_projection_figure([0.0] * 4, rows, [1])
    top = _top(fig)
    assert top[0].line.color == BASELINE_COLOR and top[0].line.dash == "dot"
    colors = [t.line.color for t in top[1:]]
    assert colors == list(STEERED_COLORS[:3])
    assert len(set(colors)) == 3 and BASELINE_COLOR not in colors
    assert len({t.marker.symbol for t in top[1:]}) == 3
    assert all(t.line.dash is None for t in top[1:])  # only baselines are dotted
    # Each row's change from the baseline keeps the row's colour and legend group.
    for row, diff in zip(top[1:], _bottom(fig), strict=True):
        assert diff.line.color == row.line.color
        assert diff.legendgroup == row.legendgroup


def test_layer_projection_injected_band_in_both_panels() -> None:
    fig = layer_projection_figure(BASE, ROWS, steered_layers=[2, 3])
    rects = _rects(fig)
    # Layers 2 and 3 are adjacent: one band covering both, in each panel.
    assert [(r.x0, r.x1) for r in rects] == [(1.5, 3.5), (1.5, 3.5)]
    assert {r.yref for r in rects} == {"y domain", "y2 domain"}
    assert _annotation_texts(fig) == ["injected at 2–3", "injected at 2–3"]


def test_layer_projection_separate_bands_and_single_sequence() -> None:
    fig = layer_projection_figure([1, 2, 3, 4], [2, 3, 4, 5], steered_layers=(0, 3))
    assert [t.name for t in _top(fig)] == ["baseline", "steered"]
    assert sorted((s.x0, s.x1) for s in _rects(fig)) == [(-0.5, 0.5)] * 2 + [(2.5, 3.5)] * 2
    texts = _annotation_texts(fig)
    assert texts.count("injected at 0") == 2 and texts.count("injected at 3") == 2


def test_layer_projection_readout_line() -> None:
    fig = layer_projection_figure(BASE, ROWS, steered_layers=[2], readout_layer=3)
    lines = _lines(fig)
    assert len(lines) == 2  # one per panel
    assert all(line.x0 == line.x1 == 3 and line.line.dash == "dash" for line in lines)
    assert _annotation_texts(fig).count("read-out") == 1
    with pytest.raises(ValueError, match="readout_layer 5 is out of range"):
        layer_projection_figure(BASE, ROWS, readout_layer=5)


def test_layer_projection_delta_false_is_the_single_panel() -> None:
    fig = layer_projection_figure(
        BASE, ROWS, steered_layers=[2, 3], title="My title", delta=False, readout_layer=1
    )
    assert [t.name for t in fig.data] == ["baseline", "+2.0", "-1.5"]
    assert fig.data[1].line.color == STEERED_COLORS[0]
    assert "yaxis2" not in fig.layout.to_plotly_json()
    assert [(r.x0, r.x1) for r in _rects(fig)] == [(1.5, 3.5)]
    assert _annotation_texts(fig) == ["injected at 2–3", "read-out"]
    assert fig.layout.xaxis.title.text == "Layer"
    assert fig.layout.yaxis.title.text == "Projection (activation units)"
    custom = layer_projection_figure(BASE, ROWS, delta=False, y_title="Projection at 3")
    assert custom.layout.yaxis.title.text == "Projection at 3"


def test_layer_projection_baseline_only() -> None:
    fig = layer_projection_figure([1.0, 2.0], {}, ())
    assert [t.name for t in fig.data] == ["baseline"]
    assert len(fig.layout.shapes) == 0
    assert "yaxis2" not in fig.layout.to_plotly_json()  # nothing to subtract
    assert len(layer_projection_figure([1.0, 2.0], []).data) == 1


def test_layer_projection_per_row_baselines() -> None:
    rows = {"a": [1.0, 2.0, 3.0], "b": [0.0, -1.0, -2.0]}
    own = {"a": [0.5, 0.5, 0.5], "b": [0.0, 0.1, 0.2]}
    fig = layer_projection_figure(None, rows, [1], baselines=own)
    names = [t.name for t in _top(fig)]
    assert "baseline" not in names  # no shared baseline was given
    assert names == ["baseline (dotted, per row)", "a · baseline", "a", "b · baseline", "b"]
    key = _top(fig)[0]
    assert key.showlegend is not False and list(key.x) == [None]
    for label in rows:
        base_trace = next(t for t in fig.data if t.name == f"{label} · baseline")
        row_trace = next(t for t in _top(fig) if t.name == label)
        assert base_trace.line.dash == "dot" and base_trace.line.color == row_trace.line.color
        assert base_trace.showlegend is False
        diff = next(t for t in _bottom(fig) if t.name == label)
        assert list(diff.y) == [v - b for v, b in zip(rows[label], own[label], strict=True)]


def test_layer_projection_mixed_baselines() -> None:
    fig = layer_projection_figure(
        [1.0, 1.0], {"a": [2.0, 3.0], "b": [4.0, 5.0]}, baselines={"a": [0.0, 1.0]}
    )
    diffs = {t.name: list(t.y) for t in _bottom(fig)}
    assert diffs == {"a": [2.0, 2.0], "b": [3.0, 4.0]}  # b falls back to the shared baseline
    assert _top(fig)[0].name == "baseline"


def test_layer_projection_escapes_labels_and_wraps_title() -> None:
    label = "<b>x</b> & y"
    title = "Projection onto <script>alert(1)</script> " + "with a very long persona name " * 3
    fig = layer_projection_figure([1.0, 2.0], {label: [2.0, 3.0]}, [0], title)
    assert {t.name for t in fig.data} >= {"&lt;b&gt;x&lt;/b&gt; &amp; y"}
    head = fig.layout.title.text
    assert "<script>" not in head and "&lt;script&gt;" in head
    lines = head.split("<br>")
    assert len(lines) > 1
    assert all(len(html.unescape(line)) <= 44 for line in lines)


@pytest.mark.parametrize(
    ("make", "height"),
    [
        (lambda: layer_projection_figure(BASE, ROWS, [2]), 480),
        (lambda: layer_projection_figure(BASE, ROWS, [2], delta=False), 400),
        (lambda: separation_figure([0.1, 0.2, 0.3], 1, [1.0, 2.0, 3.0]), 400),
        (lambda: strength_strip_figure([1.0, 2.0], [1.0, 2.0], 0), 400),
        (lambda: cosine_heatmap_figure(["a", "b"], [[1, 0], [0, 1]], 0), 360),
    ],
)
def test_figures_fit_a_phone(make, height: int) -> None:
    fig = make()
    layout = fig.layout
    assert layout.autosize is True and layout.width is None and layout.height == height
    assert layout.legend.orientation == "h" and layout.legend.y >= 1.0
    assert layout.legend.yanchor == "bottom"  # above the plot, never over the curves
    assert layout.margin.l <= 16 and layout.margin.r <= 16  # automargin grows what is needed
    axes = [k for k in layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]
    assert axes
    assert all(layout[k].automargin is True for k in axes)
    assert layout.font.size >= 12


def test_layer_ticks_fit_the_width() -> None:
    few = layer_projection_figure([1.0] * 5, [])
    assert few.layout.xaxis.tickmode == "linear" and few.layout.xaxis.dtick == 1
    many = layer_projection_figure(list(range(64)), [], [])
    # Plotly picks (whole-number) ticks from the axis' pixel length: fewer on a phone.
    assert many.layout.xaxis.tickmode == "auto" and not many.layout.xaxis.nticks
    assert many.layout.xaxis.minor.dtick == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"baseline": [], "steered": []}, "baseline is empty"),
        ({"baseline": [1, 2], "steered": [1, 2, 3]}, "steered has 3 values but baseline has 2"),
        ({"baseline": [1, 2], "steered": {"a": [1]}}, r"steered\['a'\] has 1 values"),
        ({"baseline": [1, math.nan], "steered": []}, r"baseline\[1\] must be a finite number"),
        ({"baseline": [1, 2], "steered": [1, math.inf]}, "finite"),
        ({"baseline": [1, "2"], "steered": []}, r"baseline\[1\] must be a number"),
        (
            {"baseline": [1, 2], "steered": [], "steered_layers": [2]},
            "out of range: this model has layers 0-1",
        ),
        ({"baseline": [1, 2], "steered": [], "steered_layers": [0.5]}, "integer layer index"),
        ({"baseline": [1, 2], "steered": [], "steered_layers": [True]}, "integer layer index"),
        ({"baseline": [1, 2], "steered": {"": [1, 2]}}, "labels must be a non-empty"),
        ({"baseline": None, "steered": {"a": [1, 2]}}, "baseline is required"),
        (
            {"baseline": None, "steered": {"a": [1, 2], "b": [1, 2]}, "baselines": {"a": [1, 2]}},
            "baseline is required",
        ),
        (
            {"baseline": [1, 2], "steered": {"a": [1, 2]}, "baselines": {"z": [1, 2]}},
            r"baselines\['z'\] has no steered row",
        ),
        (
            {"baseline": [1, 2], "steered": {"a": [1, 2]}, "baselines": {"a": [1]}},
            r"baselines\['a'\] has 1 values but baseline has 2",
        ),
        (
            {"baseline": [1, 2], "steered": {"a": [1, 2]}, "baselines": [[1, 2]]},
            "baselines must be a mapping",
        ),
        ({"baseline": [1, 2], "steered": [], "readout_layer": -1}, "out of range"),
    ],
)
def test_layer_projection_validation(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        layer_projection_figure(**kwargs)


# --------------------------------------------------------------------------- separation


def test_separation_figure_highlights_best_layer() -> None:
    sep = [0.1, 0.4, 2.5, 1.0]
    fig = separation_figure(sep, best_layer=2)
    assert len(fig.data) == 1
    bar = fig.data[0]
    assert isinstance(bar, go.Bar)
    assert list(bar.x) == [0, 1, 2, 3]
    colors = list(bar.marker.color)
    assert colors[2] == STEERED_COLORS[0]
    assert len(set(colors)) == 2 and colors.count(colors[0]) == 3
    texts = _annotation_texts(fig)
    assert len(texts) == 1 and "layer 2" in texts[0] and "2.500" in texts[0]
    assert fig.layout.annotations[0].x == 2
    assert tuple(fig.layout.xaxis.range) == (-0.5, 3.5)
    _serialisable(fig)


def test_separation_figure_with_norms_on_secondary_axis() -> None:
    fig = separation_figure([0.1, 0.2, 0.3], best_layer=None, norms=[1.0, 2.0, 4.0])
    assert len(fig.data) == 2
    assert fig.data[1].name == "vector norm"
    assert fig.data[1].yaxis == "y2"
    assert fig.layout.yaxis2.title.text == "Vector norm"
    assert not fig.layout.annotations


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (([1, 2], 2), "best_layer 2 is out of range"),
        (([1, 2], -1), "out of range"),
        (([1, 2], 1, [1.0]), "norms has 1 values but separation has 2"),
        (([1, math.nan], 0), "finite"),
        (([], None), "separation is empty"),
    ],
)
def test_separation_validation(args: tuple, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        separation_figure(*args)


# --------------------------------------------------------------------------- cosine heatmap


def test_cosine_heatmap() -> None:
    names = ["evil", "sycophantic", "pirate"]
    matrix = [[1.0, 0.3, -0.2], [0.3, 1.0, 0.1], [-0.2, 0.1, 1.0000001]]
    fig = cosine_heatmap_figure(names, matrix, layer=15)
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert (heat.zmin, heat.zmax) == (-1.0, 1.0)
    assert list(heat.x) == names and list(heat.y) == names
    assert heat.z[2][2] == 1.0  # float overshoot clipped
    assert heat.texttemplate  # small matrices are annotated
    assert "layer 15" in fig.layout.title.text
    assert ":.3f" in heat.hovertemplate
    _serialisable(fig)


def test_cosine_heatmap_large_matrix_not_annotated() -> None:
    n = 11
    names = [f"p{i}" for i in range(n)]
    matrix = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    fig = cosine_heatmap_figure(names, matrix, 0)
    assert not fig.data[0].texttemplate
    assert fig.layout.xaxis.tickangle == -45  # long names stay apart on a phone
    assert cosine_heatmap_figure(names[:10], [r[:10] for r in matrix[:10]], 0).data[0].texttemplate


def test_cosine_heatmap_escapes_names_and_words_cells() -> None:
    names = ["<i>a</i>", "b"]
    fig = cosine_heatmap_figure(names, [[1.0, -0.6], [-0.6, 1.0]], 2, title="<b>T</b>")
    heat = fig.data[0]
    assert list(heat.x) == ["&lt;i&gt;a&lt;/i&gt;", "b"]
    assert fig.layout.title.text == "&lt;b&gt;T&lt;/b&gt;"
    assert list(heat.customdata[0][1]) == [
        "&lt;i&gt;a&lt;/i&gt;",
        "b",
        "point in opposite directions",
    ]
    assert heat.customdata[0][0][2] == "the same vector"
    assert "%{customdata[2]}" in heat.hovertemplate
    assert fig.layout.xaxis.tickangle == 0 and fig.layout.yaxis.automargin is True


def test_a_long_name_is_cut_on_the_axes_and_whole_on_hover() -> None:
    """One visitor's 80-character name must not squash the map for everybody."""
    long = "x" * 80
    names = [long, long[:-1] + "y", "b"]
    fig = cosine_heatmap_figure(names, [[1.0, 0.1, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]], 2)
    heat = fig.data[0]
    assert max(len(t) for t in heat.x) <= 30
    assert len(set(heat.x)) == 3  # still one column each
    assert list(heat.x) == list(heat.y)
    assert heat.customdata[0][1][0] == long  # hover names it whole


@pytest.mark.parametrize(
    ("names", "matrix", "pattern"),
    [
        (["a", "b"], [[1, 0]], "matrix has 1 rows but there are 2 names"),
        (["a", "b"], [[1, 0], [0]], r"matrix\[1\] has 1 values"),
        (["a", "a"], [[1, 0], [0, 1]], "unique"),
        (["a", "b"], [[1, 1.5], [0, 1]], "outside"),
        (["a", "b"], [[1, math.nan], [0, 1]], "finite"),
        ([], [], "names is empty"),
    ],
)
def test_cosine_heatmap_validation(names: list, matrix: list, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        cosine_heatmap_figure(names, matrix, 3)


# --------------------------------------------------------------------------- statements


@pytest.mark.parametrize(
    ("cosine", "words"),
    [
        (1.0, "point almost the same way"),
        (0.9, "point almost the same way"),
        (0.894, "point much the same way"),
        (0.5, "point much the same way"),
        (0.496, "point much the same way"),  # prints as 0.50: banded as printed
        (0.49, "point partly the same way"),
        (0.2, "point partly the same way"),
        (0.19, "are nearly unrelated"),
        (0.0, "are nearly unrelated"),
        (-0.19, "are nearly unrelated"),
        (-0.2, "point partly in opposite directions"),
        (-0.49, "point partly in opposite directions"),
        (-0.5, "point in opposite directions"),
        (-0.89, "point in opposite directions"),
        (-0.9, "point in almost exactly opposite directions"),
        (-1.0, "point in almost exactly opposite directions"),
    ],
)
def test_relation_bands(cosine: float, words: str) -> None:
    assert relation(cosine) == words


def test_relation_never_calls_a_positive_cosine_opposite() -> None:
    for k in range(0, 1001):
        assert "opposite" not in relation(k / 1000)
    for k in range(1, 195):  # down to −0.194, which prints as −0.19
        assert relation(-k / 1000) == "are nearly unrelated"


NAMES = ["pirate", "sarcastic", "formal", "optimistic", "pessimistic"]
MATRIX = [
    [1.0, 0.76, -0.54, 0.35, 0.65],
    [0.76, 1.0, -0.48, 0.25, 0.5],
    [-0.54, -0.48, 1.0, -0.25, -0.59],
    [0.35, 0.25, -0.25, 1.0, 0.11],
    [0.65, 0.5, -0.59, 0.11, 1.0],
]


def test_similarity_statements() -> None:
    out = similarity_statements(NAMES, MATRIX, top=2)
    assert out == [
        "pirate and sarcastic point much the same way (cosine 0.76).",
        "pirate and pessimistic point much the same way (cosine 0.65).",
        "formal and pessimistic point in opposite directions (cosine −0.59).",
        "pirate and formal point in opposite directions (cosine −0.54).",
        "optimistic and pessimistic are nearly unrelated (cosine 0.11).",
    ]
    assert len(similarity_statements(NAMES, MATRIX)) == 3 + 3 + 1


def test_similarity_statements_never_opposite_for_positive() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 6)
        m = [[1.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                m[i][j] = m[j][i] = rng.uniform(-1, 1)
        for sentence in similarity_statements([f"v{i}" for i in range(n)], m, top=10):
            found = re.search(r"\(cosine (−?[0-9.]+)\)", sentence)
            if found and not found.group(1).startswith("−"):
                assert "opposite" not in sentence, sentence


def test_similarity_statements_when_nothing_is_aligned_or_opposite() -> None:
    out = similarity_statements(["a", "b"], [[1.0, 0.05], [0.05, 1.0]])
    assert out == [
        "No two of them point the same way: every cosine is below 0.20.",
        "None of them point in opposite directions: every cosine is above −0.20.",
        "a and b are nearly unrelated (cosine 0.05).",
    ]
    # Negative zero prints without a sign.
    assert "(cosine 0.00)" in similarity_statements(["a", "b"], [[1, -0.001], [-0.001, 1]])[-1]
    assert similarity_statements(["only"], [[1.0]]) == []


def test_similarity_statements_validation() -> None:
    with pytest.raises(ValueError, match="matrix has 1 rows but there are 2 names"):
        similarity_statements(["a", "b"], [[1, 0]])
    with pytest.raises(ValueError, match="outside"):
        similarity_statements(["a", "b"], [[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="top must be at least 1"):
        similarity_statements(["a", "b"], [[1, 0], [0, 1]], top=0)


# --------------------------------------------------------------------------- strength strip


def test_strength_strip_sorted_with_zero_marker() -> None:
    fig = strength_strip_figure([2.0, -1.5, 0.0, 1.0], [3.0, -2.0, 0.1, 1.2], layer=20)
    trace = fig.data[0]
    assert list(trace.x) == [-1.5, 0.0, 1.0, 2.0]
    assert list(trace.y) == [-2.0, 0.1, 1.2, 3.0]
    assert "layer 20" in fig.layout.yaxis.title.text
    assert "no steering" in _annotation_texts(fig)
    _serialisable(fig)


def test_strength_strip_positive_only_has_no_zero_marker() -> None:
    fig = strength_strip_figure([1.0, 2.0], [1.0, 2.0], layer=0)
    assert "no steering" not in _annotation_texts(fig)


def test_strength_strip_validation() -> None:
    with pytest.raises(ValueError, match="projections has 1 values but strengths has 2"):
        strength_strip_figure([1.0, 2.0], [1.0], layer=3)
    with pytest.raises(ValueError, match="finite"):
        strength_strip_figure([1.0], [math.inf], layer=3)
    with pytest.raises(ValueError, match="strengths is empty"):
        strength_strip_figure([], [], layer=3)


# --------------------------------------------------------------------------- token HTML


def test_token_html_escapes_markup() -> None:
    out = token_projection_html(["<script>alert(1)</script>", ' "q" ', "&amp;"], [1.0, -1.0, 0.0])
    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&quot;q&quot;" in out
    assert "&amp;amp;" in out


def test_token_html_titles_show_values() -> None:
    out = token_projection_html(["Hello", " world"], [0.12345, -2.5])
    titles = re.findall(r'title="([^"]*)"', out)
    assert titles == ["+0.123", "-2.500"]


def test_token_html_colours_by_sign_and_scale() -> None:
    out = token_projection_html(["a", "b", "c"], [2.0, -1.0, 0.0])
    backgrounds = re.findall(r"background:(rgba\([^)]*\))", out)
    # The first three backgrounds are the tokens; the legend follows.
    pos, neg, zero = backgrounds[:3]
    assert pos.startswith("rgba(178,24,43,") and pos.endswith(",0.85)")
    assert neg.startswith("rgba(33,102,172,") and neg.endswith(",0.425)")
    assert zero.endswith(",0.0)")
    # A fixed scale caps the intensity instead of the largest value.
    fixed = token_projection_html(["a"], [0.5], scale=1.0)
    assert "rgba(178,24,43,0.425)" in fixed
    assert "±" not in fixed and "+1.000" in fixed  # legend shows the scale


def test_token_html_newlines_and_whitespace() -> None:
    out = token_projection_html(["line one", "\n", "  indented\tx"], [0.1, 0.2, 0.3])
    assert "<br>" in out
    assert "\n" not in out  # rendered as <br>, not left to the browser
    assert "white-space:pre-wrap" in out
    assert "  indented\tx" in out


def test_token_html_legend_and_empty() -> None:
    out = token_projection_html(["x"], [0.0])
    legend = out[out.index("pe-legend") :]
    assert "blue: away from the persona" in legend and "red: towards it" in legend
    assert "0: no lean" in legend
    empty = token_projection_html([], [])
    assert "No tokens" in empty
    assert "pe-tok" not in empty.replace("pe-tokens", "")


def test_token_html_caption_is_escaped_and_above_the_tokens() -> None:
    out = token_projection_html(["tok"], [1.0], caption="<b>layer</b> 3 & more")
    assert "<b>layer" not in out
    assert "&lt;b&gt;layer&lt;/b&gt; 3 &amp; more" in out
    assert out.index("pe-token-caption") < out.index('pe-tok"')
    assert out.count("<div") == out.count("</div>")
    assert "pe-token-caption" not in token_projection_html(["tok"], [1.0])
    empty = token_projection_html([], [], caption="Read at layer 2")
    assert "Read at layer 2" in empty and "No tokens" in empty
    with pytest.raises(ValueError, match="caption must be a string"):
        token_projection_html(["tok"], [1.0], caption=3)  # type: ignore[arg-type]


def test_token_view_caption() -> None:
    steered = token_view_caption(23, 41.23, 12.3, shared=False)
    assert steered.startswith("Read at layer 23; the added vector's own component (+41.2) removed.")
    assert "Colour: ±12.3 (this panel's own scale)." in steered
    assert "activation units" in steered and "0 = no lean either way" in steered
    baseline = token_view_caption(23, 0.0, 0.5, shared=True)
    assert "no added vector to remove" in baseline and "removed" not in baseline
    assert "±0.500 (one scale for every panel)" in baseline
    # Rounded as printed: a component that prints as zero is not "removed".
    assert "no added vector" in token_view_caption(1, 0.0001, 1.0, shared=False)
    assert "(−3.50) removed" in token_view_caption(1, -3.5, 1.0, shared=False)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((-1, 0.0, 1.0, False), "readout_layer must be a layer index"),
        ((True, 0.0, 1.0, False), "readout_layer must be a layer index"),
        ((1, math.nan, 1.0, False), "injected must be a finite number"),
        ((1, 0.0, 0.0, False), "scale must be > 0"),
        ((1, 0.0, 1.0, "yes"), "shared must be True or False"),
    ],
)
def test_token_view_caption_validation(args: tuple, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        token_view_caption(*args)


def test_token_panels_take_out_the_injected_component() -> None:
    base_html, steered_html = token_panels_html(
        [(["a", "b"], [1.0, -2.0], 0.0), (["c", "d"], [41.0, 43.0], 40.0)], readout_layer=7
    )
    # The steered panel colours raw − injected: the model's own part.
    assert re.findall(r'title="([^"]*)"', steered_html) == ["+1.000", "+3.000"]
    assert re.findall(r'title="([^"]*)"', base_html) == ["+1.000", "-2.000"]
    assert "(+40.0) removed" in steered_html and "no added vector" in base_html
    # Own scales: each panel's largest |value|.
    assert "±2.00 (this panel" in base_html and "±3.00 (this panel" in steered_html
    shared = token_panels_html(
        [(["a"], [1.0], 0.0), (["c"], [43.0], 40.0)], readout_layer=7, shared_scale=True
    )
    assert all("±3.00 (one scale for every panel)" in h for h in shared)
    with pytest.raises(ValueError, match=r"rows\[0\] must be a \(tokens, values, injected\)"):
        token_panels_html([(["a"], [1.0])], readout_layer=0)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("tokens", "values", "scale", "pattern"),
    [
        (["a", "b"], [1.0], None, "values has 1 values but tokens has 2"),
        (["a"], [math.nan], None, "finite"),
        ("ab", [1.0, 2.0], None, "not one string"),
        ([1], [1.0], None, r"tokens\[0\] must be a string"),
        (["a"], [1.0], 0.0, "scale must be > 0"),
        (["a"], [1.0], math.inf, "finite"),
    ],
)
def test_token_html_validation(tokens: object, values: list, scale: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        token_projection_html(tokens, values, scale)  # type: ignore[arg-type]


def test_token_html_is_well_formed_enough() -> None:
    out = token_projection_html(["<b>", "x\ny", "</div>"], [1.0, 0.0, -1.0])
    assert out.count("<div") == out.count("</div>")
    assert out.count("<span") == out.count("</span>")
    assert html.unescape(re.sub(r"<[^>]+>", "", out)).startswith("<b>x↵y</div>")


# --------------------------------------------------------------------------- empty


def test_empty_figure() -> None:
    fig = empty_figure("Run an extraction first")
    assert len(fig.data) == 0
    assert _annotation_texts(fig) == ["Run an extraction first"]
    assert fig.layout.xaxis.visible is False
    _serialisable(fig)


def test_numpy_like_scalars_accepted() -> None:
    class Scalar:
        def __init__(self, v: float) -> None:
            self.v = v

        def __float__(self) -> float:
            return self.v

    fig = layer_projection_figure([Scalar(1.0), Scalar(2.0)], [])  # type: ignore[list-item]
    assert list(fig.data[0].y) == [1.0, 2.0]


LAYER_FIGURE_CASES = [
    {"steered": {"steered, strength 5": [0.3 * i for i in range(12)]}, "steered_layers": [4]},
    {
        "steered": {f"row {k}": [k + 0.1 * i for i in range(12)] for k in range(3)},
        "steered_layers": [2, 3, 7],
        "readout_layer": 9,
        "title": "A title long enough to wrap onto a second line of the figure",
    },
    {"steered": [1.0] * 12, "delta": False},
    {
        "baseline": None,
        "steered": {"a": [0.5] * 12, "b": [1.5] * 12},
        "baselines": {"a": [0.25 * i for i in range(12)], "b": [-1.0] * 12},
    },
    {"steered": {}, "readout_layer": 0},
]


@pytest.mark.parametrize("case", LAYER_FIGURE_CASES)
def test_a_layer_figure_is_plotlys_own_drawing_of_its_values(
    case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout is drawn once per shape, with zeros, and the values filled in: the result
    must be what plotly's builders draw from the values themselves."""
    from persona_explorer.plots import layers

    seen: dict = {}
    series, drawn = layers._series, layers._drawn

    def spy_series(*args: object) -> list:
        ys = series(*args)  # type: ignore[arg-type]
        seen.setdefault("ys", ys)  # the values' (a first drawing of the shape then asks again)
        return ys

    def spy_drawn(shape: object) -> dict:
        seen["shape"] = shape
        return drawn(shape)  # type: ignore[arg-type]

    monkeypatch.setattr(layers, "_series", spy_series)
    monkeypatch.setattr(layers, "_drawn", spy_drawn)
    fast = layer_projection_figure(**{"baseline": [0.1 * i - 0.4 for i in range(12)], **case})
    direct = go.Figure(layers._draw(seen["shape"], seen["ys"]))
    assert json.loads(fast.to_json()) == json.loads(direct.to_json())


def test_a_layer_figure_keeps_its_own_values_and_leaves_the_next_ones_alone() -> None:
    first = layer_projection_figure([1.0] * 6, [2.0] * 6, steered_layers=[1])
    first.data[0].y = (9.0,) * 6  # a caller may change its figure
    first.update_layout(title_text="changed")
    second = layer_projection_figure([3.0] * 6, [5.0] * 6, steered_layers=[1])
    assert list(second.data[0].y) == [3.0] * 6
    assert list(second.data[1].y) == [5.0] * 6
    assert list(second.data[2].y) == [2.0] * 6  # the change from baseline
    assert second.layout.title.text != "changed"
