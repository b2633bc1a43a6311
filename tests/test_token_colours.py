"""Issue 26: the per-token view's colours must say what the text shows.

At a read-out layer the raw projection of *any* text sits far from 0 (SmolLM2-135M, built-in
pirate at layer 10, strength 5.06, read at layer 11: the baseline's tokens average about −21, the
steered answer's own part about −16 to −11, everything below 0). Coloured around 0, both panels
came out blue although the steered text leans towards the persona. The numbers below are that
measurement in miniature.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from persona_explorer.plots import token_panels_html
from persona_explorer.plots.common import NEG_RGB, POS_RGB
from persona_explorer.ui.steer.handlers import token_views

INJECTED = 46.277  # the added vector's direct component at layer 11
BASE_RAW = [-13.6, -10.8, -12.8, -40.0, -28.6, -15.8, -21.9, -4.1, -4.1, -21.3]
STEERED_OWN = [-12.1, -23.6, -9.4, -32.8, -18.4, -7.5, -16.7, -5.1, -8.4, -18.1]


def _colours(panel: str) -> list[str]:
    """'red', 'blue' or 'none' for each token span, from its background."""
    out = []
    for r, g, b, a in re.findall(
        r'class="pe-tok"[^>]*background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)', panel
    ):
        if float(a) == 0.0:
            out.append("none")
        elif (int(r), int(g), int(b)) == tuple(POS_RGB):
            out.append("red")
        else:
            assert (int(r), int(g), int(b)) == tuple(NEG_RGB)
            out.append("blue")
    return out


def _scale(panel: str) -> str:
    found = re.search(r"Colour: ±(\S+)", panel)
    assert found
    return found.group(1)


def _steer_output() -> SimpleNamespace:
    def row(raw: list[float], injected: float) -> SimpleNamespace:
        return SimpleNamespace(
            token_strings=[f"t{i}" for i in range(len(raw))],
            token_projection=raw,
            token_injected=injected,
            baseline_token_projection=BASE_RAW,
        )

    base = row(BASE_RAW, 0.0)
    steered = row([v + INJECTED for v in STEERED_OWN], INJECTED)
    return SimpleNamespace(baseline=base, steered=[steered], readout_layer=11)


def test_steered_answer_above_the_baseline_is_coloured_towards_the_persona() -> None:
    base_mean = sum(BASE_RAW) / len(BASE_RAW)
    assert sum(STEERED_OWN) / len(STEERED_OWN) > base_mean  # it does lean towards the persona
    assert max(BASE_RAW + STEERED_OWN) < 0  # ... while every value is below 0
    base_html, steered_html = token_views(_steer_output())  # type: ignore[arg-type]
    steered = _colours(steered_html)
    assert len(steered) == len(STEERED_OWN)
    assert steered.count("red") > len(steered) / 2, steered
    # The baseline is its own reference: neither all blue nor all red.
    base = _colours(base_html)
    assert 0 < base.count("red") < len(base), base


def test_both_panels_share_one_scale_and_say_what_the_centre_is() -> None:
    base_html, steered_html = token_views(_steer_output())  # type: ignore[arg-type]
    assert _scale(base_html) == _scale(steered_html)
    for panel in (base_html, steered_html):
        assert "one scale for every panel" in panel
        assert "around the baseline answer's mean here (−17.3)" in panel
        assert "centre: the baseline" in panel


def test_centred_values_are_relative_to_the_baseline_mean() -> None:
    base_html, steered_html = token_panels_html(
        [(["a", "b"], [-22.0, -18.0], 0.0), (["c", "d"], [30.0, 26.0], 46.0)],
        readout_layer=11,
        shared_scale=True,
        centre_on_baseline=True,
    )
    assert re.findall(r'title="([^"]*)"', base_html) == ["-2.000", "+2.000"]
    # raw − injected − baseline mean: −16 + 20 = +4, −20 + 20 = 0
    assert re.findall(r'title="([^"]*)"', steered_html) == ["+4.000", "+0.000"]
    assert _colours(steered_html) == ["red", "none"]
    assert "(+46.0) removed" in steered_html and "(−20.0)" in steered_html
    # An empty baseline leaves the centre at 0.
    _, only = token_panels_html(
        [([], [], 0.0), (["c"], [47.0], 46.0)], readout_layer=11, centre_on_baseline=True
    )
    assert re.findall(r'title="([^"]*)"', only) == ["+1.000"]
