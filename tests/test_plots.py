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
    strength_strip_figure,
    token_projection_html,
)


def _annotation_texts(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def _serialisable(fig: go.Figure) -> None:
    # What gradio does with a figure: it must survive JSON.
    json.loads(fig.to_json())


# --------------------------------------------------------------------------- layer projection


def test_layer_projection_with_mapping() -> None:
    baseline = [0.0, 0.5, 1.0, 1.5, 2.0]
    steered = {"+2.0": [0.0, 0.6, 2.0, 3.0, 3.5], "-1.5": [0.0, 0.4, -0.5, -1.0, -1.2]}
    fig = layer_projection_figure(baseline, steered, steered_layers=[2, 3], title="My title")
    assert [t.name for t in fig.data] == ["baseline", "+2.0", "-1.5"]
    for trace in fig.data:
        assert list(trace.x) == [0, 1, 2, 3, 4]
        assert ":.3f" in trace.hovertemplate
    assert fig.data[0].line.color == BASELINE_COLOR
    assert fig.data[1].line.color == STEERED_COLORS[0]
    assert tuple(fig.layout.xaxis.range) == (-0.5, 4.5)
    # Layers 2 and 3 are adjacent: one band covering both.
    assert len(fig.layout.shapes) == 1
    band = fig.layout.shapes[0]
    assert (band.x0, band.x1) == (1.5, 3.5)
    assert _annotation_texts(fig) == ["steered here"]
    assert fig.layout.title.text == "My title"
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied
    assert fig.layout.xaxis.title.text == "Layer"
    _serialisable(fig)


def test_layer_projection_single_sequence_and_separate_bands() -> None:
    fig = layer_projection_figure([1, 2, 3, 4], [2, 3, 4, 5], steered_layers=(0, 3))
    assert [t.name for t in fig.data] == ["baseline", "steered"]
    assert sorted((s.x0, s.x1) for s in fig.layout.shapes) == [(-0.5, 0.5), (2.5, 3.5)]
    assert _annotation_texts(fig).count("steered here") == 2


def test_layer_projection_baseline_only() -> None:
    fig = layer_projection_figure([1.0, 2.0], {}, ())
    assert [t.name for t in fig.data] == ["baseline"]
    assert len(fig.layout.shapes) == 0
    assert len(layer_projection_figure([1.0, 2.0], []).data) == 1


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
        ({"baseline": [1, 2], "steered": {"": [1, 2]}}, "labels must be non-empty"),
    ],
)
def test_layer_projection_validation(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        layer_projection_figure(**kwargs)


def test_many_layers_thin_ticks() -> None:
    fig = layer_projection_figure(list(range(64)), [], [])
    assert fig.layout.xaxis.dtick > 1


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
    n = 20
    names = [f"p{i}" for i in range(n)]
    matrix = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    assert not cosine_heatmap_figure(names, matrix, 0).data[0].texttemplate


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
    assert "pe-legend" in out and "negative" in out and "positive" in out
    empty = token_projection_html([], [])
    assert "No tokens" in empty
    assert "pe-tok" not in empty.replace("pe-tokens", "")


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
