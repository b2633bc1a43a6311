"""Which layer, which strength? A layer x strength sweep scored by the unsteered model.

For one persona vector, a set of prompts, a list of layers and a list of strengths, every cell
(layer, strength) answers every prompt, all as rows of the same batches (the engine steers each
row with its own plan). Each answer is then read back, teacher-forced, by the **unsteered**
model (the persona vectors paper's monitor), which gives three numbers per cell:

* ``trait``: how much further along the vector the answers read than the baseline's answers
  (strength 0), at one read-out layer for the whole grid, in units of the vector's length there.
  A persona vector is the mean difference between answers with and without the persona, so
  ``trait = 1`` means the steered answers moved as far along it as the persona's own answers
  lay from the plain ones. One read-out layer keeps the cells comparable; the steering layer
  varies.
* ``coherence``: the baseline's perplexity over the cell's (both under the unsteered model,
  per token, geometric mean over the prompts): 1 reads as fluently as the baseline, 0.5 as
  twice as surprising. Noise drives it down.
* ``repetition``: the share of repeated token 3-grams in an answer ("aye, aye, aye, ..."), a
  failure perplexity misses (a loop is very predictable once it starts).

:func:`recommend` picks, for the layer where the trait rises most while staying coherent, the
smallest strength that raises ``trait`` by the margin with coherence and repetition within
tolerance of the baseline (:class:`.sweep_config.Criteria`). It is stored in the vector (``layer``,
``strength`` and ``metadata["sweep"]``), which is what the Steer tab defaults to.

Long sweeps resume: each finished batch of rows is appended to a checkpoint file in
``cache_dir/sweeps`` keyed by everything that decides the outputs (the model's identity and
weights, the vector, the prompts, the decoding settings), so a stopped or crashed sweep, run
again with the same inputs, starts where it stopped, and a finished one returns at once.

What is asked lives in :mod:`.sweep_config`, what is found in :mod:`.sweep_result`, the
checkpoint in :mod:`.sweep_checkpoint`; this module runs the sweep (:func:`run_sweep`, and
:func:`quick_sweep`, the small one after an extraction) and the optional judge.

Imports: torch, the standard library, ``core`` (errors, limits), ``steering`` (generation, the
teacher-forced pass, operations, projections), ``personas`` (a built-in's rubric), ``vectors``,
:mod:`.sweep_config`, :mod:`.sweep_result`, :mod:`.sweep_checkpoint`; :mod:`.judge` and
``engine.model`` for types only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_SWEEP_ROWS, check_layer
from persona_explorer.evaluate.sweep_checkpoint import SweepCheckpoint
from persona_explorer.evaluate.sweep_config import SweepConfig, clean_prompts, quick_sweep_setup
from persona_explorer.evaluate.sweep_result import (
    Cell,
    RowResult,
    SweepResult,
    recommend,
    repetition,
    with_recommendation,
    word_repetition,
)
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.ops import Add, RowPlan
from persona_explorer.steering.projection import unit_rows

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.evaluate.judge import Judge
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "Progress",
    "eval_prompt_for",
    "judge_cells",
    "quick_sweep",
    "run_sweep",
]

# --------------------------------------------------------------------------- the optional judge


def eval_prompt_for(vec: PersonaVector, data_dir: Path | None = None) -> str | None:
    """The judge's rubric for a vector: its own (``metadata["eval_prompt"]``), else that of the
    shipped trait or role of the same name (the built-ins, in ``data_dir``, the
    ``persona_data_dir`` setting), else None."""
    own = vec.metadata.get("eval_prompt")
    if isinstance(own, str) and own.strip():
        return own
    from persona_explorer.personas.data import load_builtin
    from persona_explorer.personas.definitions import PersonaError

    kinds = ("role", "trait") if vec.metadata.get("persona_kind") == "role" else ("trait", "role")
    for kind in kinds:
        try:
            persona = load_builtin(vec.name, kind, data_dir=data_dir)  # type: ignore[arg-type]
        except PersonaError:
            continue
        if persona.eval_prompt:
            return persona.eval_prompt
    return None


def judge_cells(
    judge: Judge,
    eval_prompt: str,
    prompts: Sequence[str],
    cells: Sequence[Cell],
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> str:
    """Score every answer of ``cells`` (each text once: the strength-0 cells share the
    baseline's) and set each cell's ``judge`` to the mean of the scores it got. Returns a line
    saying what happened: the judge may give no number (a small judge model rarely does)."""
    items: dict[tuple[str, str], int] = {}
    for c in cells:
        for prompt, text in zip(prompts, c.texts, strict=False):
            items.setdefault((prompt, text), len(items))
    keys = list(items)
    scores = judge.score_many(
        [(eval_prompt, q, a) for q, a in keys], progress=progress, should_stop=should_stop
    )
    values = [None if s is None else s.value for s in scores]
    for c in cells:
        got = [
            v
            for prompt, text in zip(prompts, c.texts, strict=False)
            if (v := values[items[(prompt, text)]]) is not None
        ]
        c.judge = sum(got) / len(got) if got else None
    scored = sum(v is not None for v in values)
    return f"judge scored {scored} of {len(values)} answers" + (
        "" if scored else " (it gave no usable number: the rubric needs a capable judge model)"
    )


# --------------------------------------------------------------------------- the sweep

Progress = Callable[[int, int, str], None]


def _read_layer(vec: PersonaVector, cfg: SweepConfig, n_layers: int) -> int:
    if cfg.read_layer is not None:
        return check_layer(cfg.read_layer, n_layers, "Read-out layer")
    for candidate in (vec.layer, vec.best_layer):
        if candidate is not None and 0 <= candidate < n_layers:
            return candidate
    return (2 * n_layers) // 3


def _cell_of(
    layer: int,
    strength: float,
    rows: Sequence[RowResult],
    model: LoadedModel,
    scale: float,
    base: tuple[float | None, float | None],
) -> Cell:
    """Aggregate a cell's rows (in prompt order). ``base``: the baseline's mean projection and
    perplexity, None while the baseline itself is being built."""
    texts = [model.decode(list(r.tokens)) for r in rows]
    projections = [r.projection for r in rows if r.projection is not None]
    logprobs = [r.mean_logprob for r in rows if r.mean_logprob is not None]
    projection = sum(projections) / len(projections) if projections else None
    perplexity = math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None
    base_proj, base_ppl = base
    trait = coherence = None
    if base_proj is None:  # the baseline against itself
        trait, coherence = (0.0 if projection is not None else None), 1.0
    else:
        if projection is not None:
            trait = (projection - base_proj) / scale
        if perplexity is not None and base_ppl is not None:
            coherence = base_ppl / perplexity
    return Cell(
        layer=layer,
        strength=strength,
        trait=trait,
        projection=projection,
        perplexity=perplexity,
        coherence=coherence,
        repetition=sum(repetition(r.tokens) for r in rows) / len(rows) if rows else 0.0,
        texts=texts,
        worst_repetition=max((word_repetition(t) for t in texts), default=0.0),
    )


def _score_rows(
    model: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    keys: Sequence[tuple[int | None, float, int]],
    tokens: Sequence[Sequence[int]],
    finished: Sequence[bool],
    unit: torch.Tensor,
    read_layer: int,
) -> list[RowResult]:
    """Read generated answers back with the unsteered model: projection and log-likelihood."""
    rows = [
        ForcedRow(tuple(prompt_ids[p]) + tuple(t), len(prompt_ids[p]), len(prompt_ids[p]) + len(t))
        for (_, _, p), t in zip(keys, tokens, strict=True)
    ]
    read = forced_pass(model, rows, logprobs=True, last_layer=read_layer)
    assert read.span_logprobs is not None
    proj = (read.span_mean[:, read_layer].cpu() @ unit).tolist()
    out = []
    for i, (layer, strength, p) in enumerate(keys):
        empty = not tokens[i]
        lp = read.span_logprobs[i]
        out.append(
            RowResult(
                layer=layer,
                strength=strength,
                prompt=p,
                tokens=tuple(int(t) for t in tokens[i]),
                projection=None if empty else float(proj[i]),
                mean_logprob=None if empty else float(lp.mean()),
                finished=finished[i],
            )
        )
    return out


def run_sweep(
    model: LoadedModel,
    vec: PersonaVector,
    prompts: Sequence[str],
    cfg: SweepConfig,
    *,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rows: int = MAX_SWEEP_ROWS,
    judge: Judge | None = None,
    persona_data_dir: Path | None = None,
) -> SweepResult:
    """Run (or resume) the sweep; see the module doc. ``checkpoint_dir=None``: no resuming.
    ``judge``: also score every answer with the vector's rubric (:func:`eval_prompt_for`, which
    looks a built-in's up in ``persona_data_dir``, the setting of that name).

    Stopped, the result holds the cells whose rows all finished (the rest have no scores) and
    ``stopped=True``; the checkpoint keeps every finished batch.
    """
    from persona_explorer.vectors.persona_vector import check_fits

    started = time.perf_counter()
    check_fits(vec, model.n_layers, model.d_model)
    prompts = clean_prompts(prompts)
    for layer in cfg.layers:
        check_layer(layer, model.n_layers, "Layer")
    read_layer = _read_layer(vec, cfg, model.n_layers)
    steered = [(la, s) for la in cfg.layers for s in cfg.strengths if s != 0]
    total = len(prompts) * (1 + len(steered))
    if total > max_rows:
        raise InputError(
            f"This sweep needs {total} answers ({len(prompts)} prompts x "
            f"{1 + len(steered)} cells); the limit is {max_rows}. Use fewer prompts, layers "
            "or strengths."
        )
    prompt_ids = [model.chat_ids(p, cfg.system) for p in prompts]
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        frequency_penalty=cfg.frequency_penalty,
        seed=cfg.seed,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )
    unit = unit_rows(vec.vectors)[read_layer]
    scale = float(vec.vectors[read_layer].norm()) or 1.0

    ckpt = SweepCheckpoint.open(checkpoint_dir, model, vec, prompts, cfg=cfg)
    done: dict[tuple[int | None, float, int], RowResult] = {}
    wanted = {(None, 0.0, p) for p in range(len(prompts))} | {
        (la, s, p) for la, s in steered for p in range(len(prompts))
    }
    for r in ckpt.load():
        key = (r.layer, r.strength, r.prompt)
        if key in wanted:
            done[key] = r
    ckpt.start(list(done.values()))
    resumed = len(done)

    todo = [(None, 0.0, p) for p in range(len(prompts))] + [
        (la, s, p) for la, s in steered for p in range(len(prompts))
    ]
    todo = [k for k in todo if k not in done]
    # Similar lengths together: less padding in the prompt pass.
    todo.sort(key=lambda k: len(prompt_ids[k[2]]))
    stopped = False
    report = progress or (lambda _d, _t, _m: None)
    report(len(done), total, f"{resumed} answers from an earlier run" if resumed else "Starting")
    for i in range(0, len(todo), cfg.batch_size):
        if should_stop is not None and should_stop():
            stopped = True
            break
        keys = todo[i : i + cfg.batch_size]
        plans: list[RowPlan] = [
            () if layer is None else (Add(layer, vec.vectors[layer], strength, cfg.positions),)  # type: ignore[arg-type]
            for layer, strength, _ in keys
        ]
        result = None
        for update in generate_stream(
            model,
            [prompt_ids[p] for _, _, p in keys],
            plans,
            sampling,
            keep_tokens=False,
            should_stop=should_stop,
            row_invariant=False,
        ):
            result = update.result
        if result is None or (should_stop is not None and should_stop()):
            stopped = True
            break
        scored = _score_rows(
            model, prompt_ids, keys, result.tokens, result.finished, unit, read_layer
        )
        ckpt.append(scored)
        for r in scored:
            done[(r.layer, r.strength, r.prompt)] = r
        report(len(done), total, f"{len(done)} of {total} answers")

    def rows_of(layer: int | None, strength: float) -> list[RowResult] | None:
        got = [done.get((layer, strength, p)) for p in range(len(prompts))]
        return None if any(r is None for r in got) else got  # type: ignore[return-value]

    base_rows = rows_of(None, 0.0)
    empty_texts: list[str] = []
    baseline = (
        _cell_of(-1, 0.0, base_rows, model, scale, (None, None))
        if base_rows is not None
        else Cell(-1, 0.0, None, None, None, None, 0.0, empty_texts)
    )
    grid: list[Cell] = []
    for layer in cfg.layers:
        for strength in cfg.strengths:
            if strength == 0:
                # Strength 0 adds nothing: the baseline's answers, exactly.
                grid.append(Cell(**{**baseline.as_json(), "layer": layer}))
                continue
            rows = rows_of(layer, strength)
            if rows is None or base_rows is None:
                grid.append(Cell(layer, strength, None, None, None, None, 0.0, []))
            else:
                grid.append(
                    _cell_of(
                        layer,
                        strength,
                        rows,
                        model,
                        scale,
                        (baseline.projection, baseline.perplexity),
                    )
                )
    judged = "off"
    if judge is not None and not stopped:
        rubric = eval_prompt_for(vec, persona_data_dir)
        if rubric is None:
            judged = f"no rubric (eval_prompt) for {vec.name!r}: not judged"
        else:
            finished = [c for c in [baseline, *grid] if c.texts]
            judged = judge_cells(judge, rubric, prompts, finished, should_stop=should_stop)
    if base_rows is None:
        chosen, reason = None, "Stopped before the baseline finished: nothing to compare with."
    else:
        chosen, reason = recommend(grid, baseline, cfg.criteria)
        if stopped:
            reason = "Stopped early; from the cells that finished: " + reason
    return SweepResult(
        vector=vec.name,
        read_layer=read_layer,
        prompts=prompts,
        config=cfg,
        baseline=baseline,
        grid=grid,
        recommended=chosen,
        reason=reason,
        stopped=stopped,
        seconds=time.perf_counter() - started,
        rows_generated=len(done) - resumed,
        rows_total=total,
        judge=judged,
    )


def quick_sweep(
    model: LoadedModel,
    vec: PersonaVector,
    *,
    checkpoint_dir: Path | None,
    max_prompt_tokens: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_rows: int = MAX_SWEEP_ROWS,
    judge: Judge | None = None,
    persona_data_dir: Path | None = None,
) -> tuple[PersonaVector, SweepResult]:
    """The small sweep after an extraction (:func:`.sweep_config.quick_sweep_setup`): the
    vector with the recommendation recorded (unchanged when there is none, or when the sweep
    was stopped), and the sweep's result. Used by ``extract --sweep`` and the Extract tab."""
    prompts, cfg = quick_sweep_setup(vec, model.n_layers, max_prompt_tokens)
    result = run_sweep(
        model,
        vec,
        prompts,
        cfg,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        should_stop=should_stop,
        max_rows=max_rows,
        judge=judge,
        persona_data_dir=persona_data_dir,
    )
    return (vec if result.stopped else with_recommendation(vec, result)), result
