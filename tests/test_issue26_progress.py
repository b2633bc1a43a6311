"""Issue 26 (part 2) on a tiny random model: Compare's rows load their persona's recommended
layer and strength, and say "strength" for an absolute strength; Extract's progress label moves
with the rollouts; Train's reported times are the wall time the visitor waited, and the bar moves
while the training data is screened.

No server and no browser: the tabs are built inside a ``gr.Blocks`` and their module-level
handlers are called directly (as in ``tests/test_ui.py``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
import torch

from persona_explorer.engine.model import LoadedModel
from persona_explorer.ui.extract import handlers as extract_handlers
from persona_explorer.ui.extract import tab as extract
from persona_explorer.ui.finetune import handlers as train_handlers
from persona_explorer.ui.finetune import tab as train_tab
from persona_explorer.ui.finetune.forms import ShiftForm, TrainForm
from persona_explorer.ui.shared.catalog import add_to_session
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.steer import compare as compare_panel
from persona_explorer.ui.steer import tab as steer
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import D_MODEL, N_LAYERS, tiny_app_context


@pytest.fixture
def ctx(llama: LoadedModel, tmp_path: Path, one_thread: None) -> AppContext:
    return tiny_app_context(
        llama, tmp_path, {"tiny-pirate": 1.9, "tiny-evil": 3.0}, default_persona="tiny-pirate"
    )


class Recorder:
    """A stand-in for ``gr.Progress``: keeps every (fraction, desc) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, desc: str = "", **_: Any) -> None:
        self.calls.append((float(fraction), str(desc)))


# --------------------------------------------------------------------------- Compare


def test_picking_a_compare_rows_persona_loads_its_layer_and_strength(ctx: AppContext) -> None:
    with gr.Blocks() as demo:
        tab = steer.build(ctx, gr.State({}))
    panel = tab.compare
    assert panel is not None
    vec = PersonaVector(
        name="odd",
        vectors=torch.ones(N_LAYERS, D_MODEL),
        model_id=ctx.model.model_id,
        layer=1,
        strength=5.5,
    )
    session, key = add_to_session({}, vec, limit=4)
    for i in range(len(panel.personas)):
        out = compare_panel.pick_row(ctx, panel, i, key, session)
        assert out[panel.layers[i]]["value"] == 1
        assert out[panel.strengths[i]]["value"] == pytest.approx(5.5)
        assert set(out) == {panel.layers[i], panel.strengths[i]}  # the other rows stay
    evil = compare_panel.pick_row(ctx, panel, 1, "builtin:tiny-evil", None)
    assert evil[panel.strengths[1]]["value"] == pytest.approx(3.0)
    # (none) and an unknown name leave the row's numbers as they are.
    for nothing in ("", None, "no such persona"):
        assert compare_panel.pick_row(ctx, panel, 0, nothing, session) == {}
    # Wired: a person choosing a row's persona sets that row's layer and strength.
    ids = {block._id: block for block in (*panel.layers, *panel.strengths)}
    for i, dropdown in enumerate(panel.personas):
        wired = [
            fn
            for fn in demo.fns.values()
            if any(target[0] == dropdown._id for target in fn.targets)
            and {panel.layers[i]._id, panel.strengths[i]._id}
            <= {getattr(o, "_id", o) for o in fn.outputs}
        ]
        assert wired, f"row {i + 1}'s persona is not wired to its layer and strength"
        assert all(getattr(o, "_id", o) in ids for fn in wired for o in fn.outputs)


def test_compare_labels_an_absolute_strength_as_a_strength_not_a_multiple(
    ctx: AppContext,
) -> None:
    form = compare_panel.CompareForm(
        prompt="Hi?", persona_1="builtin:tiny-pirate", layer_1=2, strength_1=1.9
    )
    (row,) = form.request(ctx, None).rows
    assert row.label is not None
    assert "strength 1.9" in row.label and "×" not in row.label
    # The plot's own title is its label: gradio's label would cover it.
    with gr.Blocks():
        tab = steer.build(ctx, gr.State({}))
    assert tab.compare is not None and tab.compare.plot.show_label is False


# --------------------------------------------------------------------------- Extract


def test_the_extraction_label_moves_with_the_rollouts(ctx: AppContext) -> None:
    with gr.Blocks():
        ex = extract.build(ctx, gr.State({}))
    form = extract_handlers.ExtractForm(
        source="custom", trait_name="", role_name="", name="tiny shanty",
        pos_prompts="You are a pirate.", neg_prompts="You are an assistant.",
        question_lines="Hi?\nHow are you?", n_questions=2, max_new_tokens=6,
    )  # fmt: skip
    bar = Recorder()
    list(extract_handlers.run_extract(ctx, ex, form, None, request=None, progress=bar))
    rollouts = [desc for _, desc in bar.calls if desc not in ("Starting", "Computing the vector")]
    assert len(rollouts) >= 3
    # The label says what is done, not only the rows of the batch: it changes as tokens come.
    assert len(set(rollouts)) >= 3, rollouts
    assert any(re.search(r"\btokens?\b", d) for d in rollouts), rollouts


# --------------------------------------------------------------------------- Train


def _train_and_measure(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch, delay: float
) -> tuple[str, str, Recorder]:
    """A tiny training run and its measurement with the prediction; ``delay`` seconds are
    added both to the training's work outside ``finetune`` and to screening's prediction."""
    with gr.Blocks():
        tab = train_tab.build(ctx, gr.State({}))
    read, predict = train_handlers.read_data, train_handlers.predict_shift

    def slow_read(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return read(*args, **kwargs)

    def slow_predict(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return predict(*args, **kwargs)

    monkeypatch.setattr(train_handlers, "read_data", slow_read)
    monkeypatch.setattr(train_handlers, "predict_shift", slow_predict)
    form = TrainForm(dataset="malicious_advice", max_samples=2, epochs=1, rank=2, max_tokens=64)
    trained = list(train_handlers.run_train(ctx, tab, form, None, request=None, progress=None))
    last = trained[-1]
    runs = last[tab.runs]
    bar = Recorder()
    shift = ShiftForm(
        adapter=runs[-1].adapter,
        vectors=["builtin:tiny-pirate"],
        questions="Hi?",
        max_new_tokens=8,
        predict=True,
        runs=runs,
    )
    measured = list(train_handlers.run_shift(ctx, tab, shift, None, request=None, progress=bar))
    return last[tab.status], measured[-1][tab.shift_status], bar


def _seconds(status: str) -> int:
    found = re.search(r"in (\d+) s\b", status)
    assert found, status
    return int(found.group(1))


def test_train_reports_the_wall_time_and_the_bar_moves_while_screening(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    delay = 2.2
    trained, measured, bar = _train_and_measure(ctx, monkeypatch, delay)
    assert _seconds(trained) >= 2, trained  # the time the visitor waited, not finetune's alone
    assert _seconds(measured) >= 2, measured  # the whole measurement, screening included
    # The bar moves inside screening: more than one point past where screening starts.
    start = next(i for i, (_, d) in enumerate(bar.calls) if d == "Screening the training data")
    fractions = [f for f, _ in bar.calls[start:]]
    assert len(set(fractions)) >= 3, bar.calls[start:]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
