"""The built-in check's choice order: the strongest setting that qualified (worst answer
included) is validated first, not the smallest that clears the margin."""

from __future__ import annotations

import torch

from persona_explorer.dev.builtin_check import MAX_TRIES, Candidate, choices
from persona_explorer.evaluate.sweep_config import SweepConfig
from persona_explorer.evaluate.sweep_result import Cell, SweepResult
from persona_explorer.vectors.persona_vector import PersonaVector


def _cell(layer: int, strength: float, trait: float, worst: float = 0.05) -> Cell:
    return Cell(layer, strength, trait, 1.0, 2.0, 0.8, 0.02, ["..."], worst_repetition=worst)


def _candidate(method: str, cells: list[Cell]) -> Candidate:
    base = _cell(-1, 0.0, 0.0)
    cfg = SweepConfig(layers=(10,), strengths=(0.0, *(c.strength for c in cells)))
    sweep = SweepResult(
        vector="v", read_layer=14, prompts=("p",), config=cfg, baseline=base, grid=cells,
        recommended=cells[0], reason="", stopped=False, seconds=0.0, rows_generated=0,
        rows_total=0,
    )  # fmt: skip
    return Candidate(method, PersonaVector(name="v", vectors=torch.ones(30, 4)), sweep)


def test_strongest_qualifying_cell_first_and_loops_never() -> None:
    rollouts = _candidate(
        "rollouts",
        [_cell(10, 1.0, 0.3), _cell(10, 2.0, 0.7), _cell(10, 3.0, 1.4, worst=0.5)],
    )
    examples = _candidate("examples", [_cell(10, 1.0, 0.1), _cell(10, 1.5, 0.9)])
    order = choices([rollouts, examples])
    assert len(order) == MAX_TRIES
    assert [(c.method, cell.strength) for c, cell in order] == [
        ("examples", 1.5),  # trait 0.9
        ("rollouts", 2.0),  # trait 0.7; the 3.0 cell loops in one answer
        ("rollouts", 1.0),  # trait 0.3; examples at 1.0 misses the margin
    ]


def test_steer_says_where_a_builtin_does_not_hold_up() -> None:
    from persona_explorer.ui.steer.tab import _tested

    ok = {"test": {"holds": True, "prompts": 12, "trait": 0.6, "worst_repetition": 0.05}}
    bad = {"test": {"holds": False, "prompts": 12, "trait": 0.12, "worst_repetition": 0.15}}
    assert "12 unseen test prompts: trait +0.60" in _tested(ok) and "⚠️" not in _tested(ok)
    assert "⚠️" in _tested(bad) and "does not hold up" in _tested(bad)
    assert _tested({}) == "" and _tested({"test": {"holds": "yes"}}) == ""
