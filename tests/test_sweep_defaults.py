"""Issue 26, "Defaults that lead nowhere": the default sweep grid reaches below half the recorded
strength at the quick sweep's old cost, and a sweep without a recommendation says, layer by layer,
which condition failed and what to try next, in the Sweep tab and after an extraction.

No model: the grid and the reason are pure functions of a vector and of cells.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from persona_explorer.evaluate.sweep_config import (
    Criteria,
    SweepConfig,
    default_grid,
    quick_sweep_setup,
)
from persona_explorer.evaluate.sweep_result import Cell, SweepResult, recommend
from persona_explorer.vectors.persona_vector import PersonaVector


def vector(strength: float | None = 4.0, layer: int = 14) -> PersonaVector:
    return PersonaVector(name="knight", vectors=torch.ones(30, 4), layer=layer, strength=strength)


def cell(
    layer: int,
    strength: float,
    trait: float,
    coherence: float = 0.9,
    rep: float = 0.05,
    worst: float = 0.1,
) -> Cell:
    return Cell(layer, strength, trait, None, None, coherence, rep, [], worst_repetition=worst)


# --------------------------------------------------------------------------- the default grid


def test_the_default_grid_reaches_a_quarter_of_the_recorded_strength() -> None:
    layers, strengths = default_grid(vector(4.0), 30)
    assert layers == (8, 11, 14, 17)
    steered = [s for s in strengths if s > 0]
    assert min(steered) < 0.5 * 4.0  # below the old lowest, 0.5x
    assert strengths == (0.0, 1.0, 2.0, 4.0, 8.0)  # 0, 0.25x, 0.5x, 1x, 2x
    # With no recorded strength the fallback is the unit.
    assert default_grid(vector(None), 30)[1] == (0.0, 1.0, 2.0, 4.0, 8.0)


def test_the_quick_sweep_costs_what_it_did() -> None:
    """4 prompts x (4 layers x 4 steered strengths + the baseline) = 68 answers, as before the
    grid moved down: strength 0 is the baseline's answers, generated once."""
    prompts, cfg = quick_sweep_setup(vector(3.0), 30)
    steered = sum(1 for s in cfg.strengths if s != 0)
    assert len(prompts) * (len(cfg.layers) * steered + 1) <= 68
    assert min(s for s in cfg.strengths if s > 0) == pytest.approx(0.75)


# --------------------------------------------------------------------------- no recommendation


CRIT = Criteria()  # margin 0.25, coherence >= 0.25, repetition <= baseline + 0.1, worst <= 0.3
BASE = cell(-1, 0.0, 0.0, 1.0, rep=0.05)


def knight_grid() -> list[Cell]:
    """The issue's knight: the trait rises only where the text loops or breaks."""
    return [
        # layer 8: nothing moves, nothing breaks
        cell(8, 1.0, 0.01),
        cell(8, 2.0, 0.03),
        cell(8, 4.0, 0.05),
        cell(8, 8.0, 0.1),
        # layer 11: breaks before the trait shows
        cell(11, 1.0, 0.02),
        cell(11, 2.0, 0.1, coherence=0.1),
        cell(11, 4.0, 0.2, coherence=0.05),
        cell(11, 8.0, 0.2, coherence=0.02),
        # layer 14: rises by the margin only where the worst answer loops; 4 is clean but short
        cell(14, 1.0, 0.02),
        cell(14, 2.0, 0.05),
        cell(14, 4.0, 0.12),
        cell(14, 8.0, 0.6, worst=0.45),
        # layer 17: rises at the weakest strength already, where the answers repeat
        cell(17, 1.0, 0.3, rep=0.4),
        cell(17, 2.0, 0.5, rep=0.5, worst=0.5),
        cell(17, 4.0, 0.7, coherence=0.1, rep=0.6),
        cell(17, 8.0, 0.9, coherence=0.05, rep=0.7),
    ]


def lines_of(reason: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in reason.splitlines()}


def test_no_recommendation_names_the_failing_condition_in_each_layer() -> None:
    chosen, reason = recommend(knight_grid(), BASE, CRIT)
    assert chosen is None
    lines = lines_of(reason)
    assert {"Layer 8", "Layer 11", "Layer 14", "Layer 17", "Next"} <= set(lines)
    # Never rose, nothing broke: go stronger.
    assert "never rose by 0.25" in lines["Layer 8"] and "+0.10" in lines["Layer 8"]
    assert "nothing broke" in lines["Layer 8"] and "stronger" in lines["Layer 8"]
    # Broke first: which condition, from which strength, and another layer.
    assert "from strength 2 the text lost coherence (0.10 < 0.25)" in lines["Layer 11"]
    assert "another layer" in lines["Layer 11"]
    # Rose only where it looped; the clean strength below fell short: try between them.
    layer14 = lines["Layer 14"]
    assert "only at strength 8" in layer14
    assert "the worst answer looped (0.45 > 0.3)" in layer14
    assert "at 4 the trait rose +0.12 < 0.25" in layer14
    assert "between 4 and 8" in layer14
    # Rose at the weakest strength swept, where the answers repeated: go weaker.
    assert "answers repeated themselves (0.40 > 0.15" in lines["Layer 17"]
    assert "weakest strength swept" in lines["Layer 17"] and "0.5" in lines["Layer 17"]
    # The most promising next sweep: between the clean and the rising strength at layer 14.
    assert lines["Next"] == "Next: sweep layer 14 at strengths 5, 6, 7."


def test_without_a_between_the_next_sweep_goes_weaker_then_stronger() -> None:
    weaker = [c for c in knight_grid() if c.layer in (8, 11, 17)]
    assert recommend(weaker, BASE, CRIT)[1].splitlines()[-1] == (
        "Next: sweep layer 17 at strengths 0.25, 0.5."
    )
    stronger = [c for c in knight_grid() if c.layer in (8, 11)]
    assert recommend(stronger, BASE, CRIT)[1].splitlines()[-1] == (
        "Next: sweep layer 8 at strengths 12, 16."
    )
    broken = [c for c in knight_grid() if c.layer == 11]
    assert "other layers" in recommend(broken, BASE, CRIT)[1].splitlines()[-1]


def test_a_recommendation_is_unchanged() -> None:
    grid = [*knight_grid(), cell(14, 6.0, 0.3)]
    chosen, reason = recommend(grid, BASE, CRIT)
    assert chosen is not None and (chosen.layer, chosen.strength) == (14, 6.0)
    assert reason.startswith("Layer 14 reaches") and "\n" not in reason


# --------------------------------------------------------------------------- on the page


def knight_result(tmp_path: Path) -> SweepResult:
    grid = knight_grid()
    chosen, reason = recommend(grid, BASE, CRIT)
    cfg = SweepConfig(layers=(8, 11, 14, 17), strengths=(0.0, 1.0, 2.0, 4.0, 8.0))
    return SweepResult(
        vector="knight",
        read_layer=14,
        prompts=("Hello?",),
        config=cfg,
        baseline=BASE,
        grid=grid,
        recommended=chosen,
        reason=reason,
        stopped=False,
        seconds=60.0,
        rows_generated=17,
        rows_total=17,
    )


def test_the_sweep_tab_shows_each_layer_on_its_own_line(tmp_path: Path) -> None:
    from persona_explorer.ui.shared.markup import md
    from persona_explorer.ui.sweep.views import SweepRun, status_text

    result = knight_result(tmp_path)
    text = status_text(SweepRun(key="k", vector=vector(), result=result))
    assert "**No recommendation.**" in text
    for layer in (8, 11, 14, 17):
        assert f"  \nLayer {layer}: " in text
    assert md("the worst answer looped (0.45 > 0.3)") in text  # escaped, not cut off
    assert "  \nNext: sweep layer 14 at strengths 5, 6, 7\\." in text


def test_the_quick_sweep_after_an_extraction_says_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persona_explorer.ui.shared import sweeping

    result = knight_result(tmp_path)
    vec = vector()
    monkeypatch.setattr(sweeping, "quick_sweep", lambda *a, **k: (vec, result))
    monkeypatch.setattr(sweeping, "optional_judge", contextlib.nullcontext)  # no judge
    ctx = SimpleNamespace(
        model=None,
        settings=SimpleNamespace(
            cache_dir=tmp_path,
            limits=SimpleNamespace(max_prompt_tokens=None),
            persona_data_dir=None,
        ),
    )
    kept, note = sweeping.sweep_after_extraction(ctx, vec, lambda: False, None)  # type: ignore[arg-type]
    assert kept is vec
    assert "no recommendation" in note
    assert "  \nLayer 14: " in note and "between 4 and 8" in note
    assert note.rstrip().endswith("Next: sweep layer 14 at strengths 5, 6, 7\\.")
