"""Persona shift: how far fine-tuning moved a model along persona vectors, on unrelated questions.

For evaluation questions unrelated to the training data, the base and the tuned model each answer
greedily (one batch per model, through the normal engine: ``steering.generation.generate_stream``).
Per vector, at its layer, three readings, each the mean over questions of a projection onto the
vector's unit direction (``steering.projection.unit_rows``):

* ``base`` / ``tuned`` / ``shift``: each model's *own answers*, read by that model itself (the
  response-token mean of the residual captured while it generated, as in the persona vectors
  paper's monitoring of a finetuned model). This is what a user sees change, but it is
  confounded by style: a terse answer projects differently from a long one whatever its persona;
* ``same_tokens``: the base model's answers teacher-forced (``steering.forced``) through both
  models: the same tokens, so only the weights differ;
* ``prompt``: the last prompt token under both models (the paper's persona-shift measure: no
  answer involved at all).

FACTS.md (measured with a prototype) found the generated-answer shift the most visible and the
same-tokens readings the more trustworthy ordering; the report carries all three.

Questions whose answer is empty (an immediate end of turn) are left out of that model's answer
means. Default questions: :data:`DEFAULT_QUESTIONS_PATH` (16 everyday questions written for the
project, unrelated to the shipped training sets).

The bounds on the questions are :mod:`persona_explorer.core.limits`' ``MAX_SHIFT_*``.

Imports: torch, :mod:`persona_explorer.core` (errors, limits), the engine's model,
:mod:`persona_explorer.steering` (forced, generation) and :mod:`persona_explorer.vectors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    MAX_SHIFT_QUESTION_CHARS,
    MAX_SHIFT_QUESTIONS,
    MAX_SHIFT_QUESTIONS_BYTES,
    check_layer,
    check_max_new_tokens,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.generation import GenerationResult, SamplingConfig, generate_stream
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

__all__ = [
    "DEFAULT_QUESTIONS_PATH",
    "ShiftReport",
    "ShiftRow",
    "parse_questions",
    "persona_shift",
    "read_questions",
    "vector_layer",
]

DEFAULT_QUESTIONS_PATH = (
    Path(__file__).resolve().parents[2] / "assets" / "finetune" / "eval_questions.txt"
)
FORCED_BATCH = 16

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class ShiftRow:
    """One vector's readings at one layer (see the module doc for what each means)."""

    name: str
    layer: int
    base: float
    tuned: float
    shift: float
    same_tokens_base: float = 0.0
    same_tokens_tuned: float = 0.0
    same_tokens_shift: float = 0.0
    prompt_base: float = 0.0
    prompt_tuned: float = 0.0
    prompt_shift: float = 0.0
    # The vector's length at ``layer``: for an extracted vector, the distance between its
    # persona's positive and negative answers there. Shifts divided by it compare across vectors
    # and layers (0 = the base model, 1 = as far as the persona's own prompts move it).
    scale: float = 1.0

    @property
    def relative_shift(self) -> float:
        """:attr:`shift` in units of the vector's length at its layer (see :attr:`scale`)."""
        return self.shift / self.scale

    def as_json(self) -> dict[str, Any]:
        def r(x: float) -> float:
            return round(float(x), 4)

        return {
            "name": self.name,
            "layer": self.layer,
            "base": r(self.base),
            "tuned": r(self.tuned),
            "shift": r(self.shift),
            "scale": r(self.scale),
            "relative_shift": r(self.relative_shift),
            "same_tokens": {
                "base": r(self.same_tokens_base),
                "tuned": r(self.same_tokens_tuned),
                "shift": r(self.same_tokens_shift),
            },
            "prompt": {
                "base": r(self.prompt_base),
                "tuned": r(self.prompt_tuned),
                "shift": r(self.prompt_shift),
            },
        }


@dataclass
class ShiftReport:
    rows: list[ShiftRow]
    questions: list[str]
    base_answers: list[str]
    tuned_answers: list[str]
    seconds: float
    base_model_id: str = ""
    tuned_model_id: str = ""
    max_new_tokens: int = 48
    stopped: bool = False  # should_stop cut it short: rows are empty
    answers_read: dict[str, int] = field(default_factory=dict)  # non-empty answers per model

    def as_json(self) -> dict[str, Any]:
        return {
            "vectors": [row.as_json() for row in self.rows],
            "questions": list(self.questions),
            "answers": [
                {
                    "question": q,
                    "base": _nth(self.base_answers, i),
                    "tuned": _nth(self.tuned_answers, i),
                }
                for i, q in enumerate(self.questions)
            ],
            "base_model_id": self.base_model_id,
            "tuned_model_id": self.tuned_model_id,
            "max_new_tokens": self.max_new_tokens,
            "answers_read": dict(self.answers_read),
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }


def _nth(answers: list[str], i: int) -> str | None:
    # A stopped report may lack one model's answers.
    return answers[i] if i < len(answers) else None


# --------------------------------------------------------------------------- questions


def parse_questions(text: str) -> list[str]:
    """One question per line; blank lines and ``#`` comments are skipped."""
    questions = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not questions:
        raise InputError("No evaluation questions: write one question per line.")
    if len(questions) > MAX_SHIFT_QUESTIONS:
        raise InputError(
            f"{len(questions)} questions; at most {MAX_SHIFT_QUESTIONS} are evaluated."
        )
    for q in questions:
        if len(q) > MAX_SHIFT_QUESTION_CHARS:
            raise InputError(
                f"A question is {len(q):,} characters long; the limit is "
                f"{MAX_SHIFT_QUESTION_CHARS:,}."
            )
    return questions


def read_questions(path: str | Path = DEFAULT_QUESTIONS_PATH) -> list[str]:
    """The questions of a text file (see :func:`parse_questions`)."""
    path = Path(path).expanduser()
    size = path.stat().st_size
    if size > MAX_SHIFT_QUESTIONS_BYTES:
        raise InputError(f"{path.name} is {size:,} bytes; a questions file is at most 256 KiB.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text.") from None
    return parse_questions(text)


# --------------------------------------------------------------------------- measuring


def vector_layer(vec: PersonaVector, n_layers: int, layer: int | None = None) -> int:
    """``layer`` if given, else the vector's recommended layer, else its best-separating one,
    else the middle of the model."""
    for candidate in (layer, vec.layer, vec.best_layer):
        if candidate is not None:
            return check_layer(candidate, n_layers)
    return n_layers // 2


def _generate(
    model: LoadedModel,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    should_stop: Callable[[], bool] | None,
    progress: ProgressFn | None,
    span: tuple[float, float],
    what: str,
) -> GenerationResult | None:
    result = None
    plans: list[tuple[()]] = [()] * len(prompts)
    for update in generate_stream(
        model, prompts, plans, cfg, keep_tokens=False, should_stop=should_stop
    ):
        if progress is not None:
            frac = span[0] + (span[1] - span[0]) * update.step / cfg.max_new_tokens
            progress(frac, f"{what}: token {update.step}/{cfg.max_new_tokens}")
        result = update.result
    if result is None or (should_stop is not None and should_stop()):
        return None
    return result


def _answer_means(result: GenerationResult, units: torch.Tensor, layers: list[int]) -> list[float]:
    """Per vector: the mean over questions with a non-empty answer of the response-mean
    projection at that vector's layer."""
    cap = result.capture
    keep = cap.response_count > 0
    if not bool(keep.any()):
        return [0.0] * len(layers)
    acts = cap.response_mean[keep].float()  # [n, n_layers, d]
    return [float((acts[:, layer] @ units[k]).mean()) for k, layer in enumerate(layers)]


def _prompt_means(result: GenerationResult, units: torch.Tensor, layers: list[int]) -> list[float]:
    acts = result.capture.prompt_last.float()
    return [float((acts[:, layer] @ units[k]).mean()) for k, layer in enumerate(layers)]


def _forced_means(
    model: LoadedModel,
    rows: list[ForcedRow],
    units: torch.Tensor,
    layers: list[int],
    should_stop: Callable[[], bool] | None,
) -> list[float] | None:
    if not rows:
        return [0.0] * len(layers)
    sums = torch.zeros(len(layers))
    for start in range(0, len(rows), FORCED_BATCH):
        res = forced_pass(
            model,
            rows[start : start + FORCED_BATCH],
            should_stop=should_stop,
            last_layer=max(layers),
        )
        if res.stopped:
            return None
        for k, layer in enumerate(layers):
            sums[k] += float((res.span_mean[:, layer].float() @ units[k]).sum())
    return [float(s) / len(rows) for s in sums]


def persona_shift(
    base: LoadedModel,
    tuned: LoadedModel,
    vectors: Sequence[PersonaVector],
    questions: Sequence[str],
    *,
    layer: int | None = None,
    max_new_tokens: int = 48,
    max_prompt_tokens: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ShiftReport:
    """Answer ``questions`` with both models and report each vector's shift (module doc).

    ``layer``: read every vector there; None: each vector's own layer (:func:`vector_layer`).
    ``progress(fraction, message)``; ``should_stop`` is honoured between decoding steps (a
    stopped report has no rows).
    """
    started = time.perf_counter()
    if not vectors:
        raise InputError("Pick at least one persona vector to measure the shift along.")
    questions = parse_questions("\n".join(q.replace("\n", " ") for q in questions))
    if (tuned.n_layers, tuned.d_model) != (base.n_layers, base.d_model):
        raise InputError(
            f"{tuned.model_id} is not a tuned copy of {base.model_id}: their shapes differ."
        )
    for vec in vectors:
        check_fits(vec, base.n_layers, base.d_model, base.model_id)
    layers = [vector_layer(vec, base.n_layers, layer) for vec in vectors]
    units = torch.stack([vec.unit(lay) for vec, lay in zip(vectors, layers, strict=True)]).float()
    units = units.to(base.device)
    cfg = SamplingConfig(
        max_new_tokens=check_max_new_tokens(max_new_tokens),
        temperature=0.0,
        max_prompt_tokens=max_prompt_tokens,
    )
    prompts = [base.chat_ids(q) for q in questions]

    def report(rows: list[ShiftRow], b: list[str], t: list[str], stopped: bool) -> ShiftReport:
        return ShiftReport(
            rows=rows,
            questions=list(questions),
            base_answers=b,
            tuned_answers=t,
            seconds=time.perf_counter() - started,
            base_model_id=base.model_id,
            tuned_model_id=tuned.model_id,
            max_new_tokens=cfg.max_new_tokens,
            stopped=stopped,
        )

    gen_base = _generate(base, prompts, cfg, should_stop, progress, (0.0, 0.45), "base model")
    if gen_base is None:
        return report([], [], [], True)
    base_answers = [base.decode(t) for t in gen_base.tokens]
    gen_tuned = _generate(tuned, prompts, cfg, should_stop, progress, (0.45, 0.9), "tuned model")
    if gen_tuned is None:
        return report([], base_answers, [], True)
    tuned_answers = [tuned.decode(t) for t in gen_tuned.tokens]
    if progress is not None:
        progress(0.9, "Reading the base model's answers through both models")
    forced_rows = [
        ForcedRow(tuple(p + t), len(p), len(p) + len(t))
        for p, t in zip(prompts, gen_base.tokens, strict=True)
        if t
    ]
    same_base = _forced_means(base, forced_rows, units, layers, should_stop)
    same_tuned = _forced_means(tuned, forced_rows, units, layers, should_stop)
    if same_base is None or same_tuned is None:
        return report([], base_answers, tuned_answers, True)
    own_base = _answer_means(gen_base, units, layers)
    own_tuned = _answer_means(gen_tuned, units, layers)
    last_base = _prompt_means(gen_base, units, layers)
    last_tuned = _prompt_means(gen_tuned, units, layers)
    rows = [
        ShiftRow(
            name=vec.name,
            layer=layers[k],
            base=own_base[k],
            tuned=own_tuned[k],
            shift=own_tuned[k] - own_base[k],
            same_tokens_base=same_base[k],
            same_tokens_tuned=same_tuned[k],
            same_tokens_shift=same_tuned[k] - same_base[k],
            prompt_base=last_base[k],
            prompt_tuned=last_tuned[k],
            prompt_shift=last_tuned[k] - last_base[k],
            scale=float(vec.vectors[layers[k]].float().norm()),
        )
        for k, vec in enumerate(vectors)
    ]
    out = report(rows, base_answers, tuned_answers, False)
    out.answers_read = {
        "base": sum(1 for t in gen_base.tokens if t),
        "tuned": sum(1 for t in gen_tuned.tokens if t),
    }
    if progress is not None:
        progress(1.0, "Persona shift measured")
    return out
