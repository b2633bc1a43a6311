"""The screening histograms draw every sample (issue 26): bins are counted the way plotly.js
counts them, so a sample that falls past the last bin is caught here, not in a browser."""

from __future__ import annotations

import math
from decimal import Decimal

import plotly.graph_objects as go
import pytest

from persona_explorer.plots.screening import inoculation_figure, score_histograms_figure

# plotly.js (histogram/calc.js, Lib.findBin, Lib.increment), for uniform bins: edges step from
# ``start`` by ``size`` through Lib.increment (which rounds away float noise) while below ``end``
# less a millionth of a bin; a value goes to bin ``floor((v - start) / size + 1e-9)`` and is
# dropped when that bin does not exist. Checked against plotly.js in Chromium on these cases.
_ROUNDING = 1e-9


def _js_str(v: float) -> str:
    """JavaScript's String(number), for the lengths Lib.increment compares."""
    if v == int(v) and abs(v) < 1e21:
        return str(int(v))
    r = repr(v)
    if "e" in r:
        mantissa, exp = r.split("e")
        if int(exp) >= -6:
            return format(Decimal(r), "f")
        return f"{mantissa}e{'+' if int(exp) > 0 else '-'}{abs(int(exp))}"
    return r


def _increment(x: float, dx: float) -> float:
    if not dx:
        return x
    i = 1 / abs(dx)
    n = (i * x + i * dx) / i if i > 1 else x + dx
    long = len(_js_str(n)) > 16 and len(_js_str(n)) >= len(_js_str(x)) + len(_js_str(dx))
    if long and abs(n) < 1e12:  # toPrecision(12), when it has no exponent
        n = float(f"{n:.12g}")
    return n


def _drawn(trace: go.Histogram) -> int:
    bins = trace.xbins
    start, end, size = float(bins.start), float(bins.end), float(bins.size)
    limit = end + (start - _increment(start, size)) / 1e6
    n_bins, edge = 0, start
    while edge < limit:
        n_bins += 1
        nxt = _increment(edge, size)
        if nxt <= edge:
            break
        edge = nxt
    counted = 0
    for v in trace.x:
        index = math.floor((v - start) / size + _ROUNDING)
        counted += 0 <= index < n_bins
    return counted


# The insecure-code teaching file's twelve scores (top +6.79) and evenly spread ones.
TEACHING = [0.998, 1.4, 1.9, 2.2, 2.6, 3.0, 3.3, 3.8, 4.1, 4.5, 4.76, 6.79]
CASES = [
    TEACHING,
    [-1.25, 0.3, 2.0, 6.9],
    [float(i) / 10 for i in range(37)],
    [2.0, 2.0, 2.0],
    [5.0],
    [-3.3, -0.1],
]


@pytest.mark.parametrize("values", CASES)
def test_every_sample_falls_in_a_drawn_bin(values: list[float]) -> None:
    fig = score_histograms_figure({"evil": values}, "projection_difference", 3, 8)
    (trace,) = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert _drawn(trace) == len(values)


def test_the_range_reaches_the_top_score() -> None:
    fig = score_histograms_figure({"evil": TEACHING}, "projection_difference", 3, 8)
    bins = fig.data[0].xbins
    assert bins.start <= min(TEACHING) and bins.end > max(TEACHING)
    assert (bins.end - bins.start) / bins.size == pytest.approx(20, abs=0.02)  # still ~20 bins


def test_every_sample_is_drawn_in_scaled_and_multi_vector_panels() -> None:
    scores = {"evil": TEACHING, "sycophantic": [0.1, 0.2, 0.9]}
    fig = score_histograms_figure(
        scores, "projection_difference", 3, 8, scales={"evil": 3.0, "sycophantic": 0.7}
    )
    assert [_drawn(t) for t in fig.data] == [12, 3]


@pytest.mark.parametrize("values", CASES)
def test_the_inoculation_figure_draws_every_sample_of_both_series(values: list[float]) -> None:
    after = [v - 1.5 for v in values]
    fig = inoculation_figure({"evil": values}, {"evil": after}, "sample_projection", 3, n_layers=8)
    hists = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert [_drawn(t) for t in hists] == [len(values), len(after)]


def test_the_tours_shipped_screening_draws_all_twelve_samples_of_each_file() -> None:
    """The Tour's step 5 draws the shipped result with the same function; before the fix the
    second file's top score (+7.12) was left out (11 of 12)."""
    import json

    from persona_explorer.core.config import ASSETS_DIR
    from persona_explorer.ui.tour.views import screen_view

    shipped = json.loads((ASSETS_DIR / "tour" / "screen.json").read_text(encoding="utf-8"))
    _, fig, *_ = screen_view(shipped.get("result", shipped), 30)
    hists = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert len(hists) == 2
    assert [_drawn(t) for t in hists] == [len(t.x) for t in hists] == [12, 12]
