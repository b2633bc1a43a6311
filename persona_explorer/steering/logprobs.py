"""Log-probabilities of generated answers, under the model that wrote them and under another.

A side-by-side run gives answers written by differently steered copies of one model (row 0 the
baseline, the others steered). Reading them is one comparison; their *likelihood* is another:
how probable each token of an answer was under the model that wrote it (``own``), and under the
other column's model (``other``: the baseline's answer under the first steered row's plan, a
steered answer under the baseline's). A steered answer that the baseline finds very unlikely has
moved far from the Assistant; a baseline answer the steered model still finds likely shows that
steering widened rather than replaced what the model says.

The numbers come after generation, by teacher forcing (:func:`.forced.forced_pass` with
``logprobs=True``): the prompt and the answer's tokens are run through the model, steered by the
plan asked for, and ``log_softmax`` of the logits at each position is read at the answer's next
token (natural log, float32). Causal attention makes this the distribution the steered model had
at that step when it generated the same tokens, within float rounding: greedy tokens have the
largest log-probability of their position under their own plan (a test checks it).

What the numbers are *not*: the sampling distribution. Decoding applies a frequency (and
presence) penalty, a temperature and top-p on top of the model's logits; the app's default
frequency penalty is 1.0 (``core.limits.DEFAULT_FREQUENCY_PENALTY``). These log-probabilities
are the model's raw next-token distribution, before any of that, so a penalised greedy token
need not be the most probable one. :data:`LOGPROB_MEANING` says so in words, for files and
hovers. The end-of-turn token that ended a finished answer is not scored: only the tokens shown.

Every (answer, plan) pair asked for runs in **one** forced batch (:func:`answer_logprobs`);
empty answers take no row and get empty lists; the pass is skipped when nothing is left.

Imports: :mod:`.forced`, :mod:`.ops`, ``engine.model``, ``core``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.ops import RowPlan

__all__ = [
    "LOGPROB_MEANING",
    "AnswerLogprobs",
    "answer_logprobs",
    "other_row",
    "own_and_other",
    "run_logprobs",
]

LOGPROB_MEANING = (
    "Natural-log probability of each answer token given the prompt and the answer before it, "
    "under the model's raw next-token distribution, steered as the named row's model (teacher "
    "forcing after generation). Not the sampling distribution: the frequency and presence "
    "penalties, temperature and top-p used for decoding are not applied. logprob_own: under the "
    "model that wrote the answer; logprob_other: under the other column's model (the baseline "
    "for a steered answer, the first steered row for the baseline). The end-of-turn token is "
    "not scored."
)


def other_row(index: int, n_rows: int) -> int:
    """The row whose model is "the other column" for row ``index`` of ``n_rows``: the first
    steered row for the baseline (row 0), the baseline for every steered row; a run with only
    the baseline compares it with itself."""
    if not 0 <= index < n_rows:
        raise ValueError(f"row {index} is outside {n_rows} rows")
    if index:
        return 0
    return 1 if n_rows > 1 else 0


def own_and_other(n_rows: int) -> list[tuple[int, int]]:
    """The (answer, plan) pairs of a run: each answer under its own plan and the other's."""
    pairs: list[tuple[int, int]] = []
    for i in range(n_rows):
        for p in (i, other_row(i, n_rows)):
            if (i, p) not in pairs:
                pairs.append((i, p))
    return pairs


def answer_logprobs(
    model: LoadedModel,
    prompt_ids: Sequence[int],
    answers: Sequence[Sequence[int]],
    plans: Sequence[RowPlan],
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> dict[tuple[int, int], list[float]] | None:
    """Per-token log-probabilities of ``answers[a]`` (response ids after ``prompt_ids``, the
    chat-templated prompt) under the model steered by ``plans[p]``, for each ``(a, p)`` of
    ``pairs`` (default: every answer under every plan), from one teacher-forced batch.

    Returns ``{(a, p): [log p of each token]}``, one float per answer token (an empty answer:
    ``[]``); None when ``should_stop`` ended the pass before it finished."""
    if not prompt_ids:
        raise ValueError("the prompt needs at least one token")
    if pairs is None:
        pairs = [(a, p) for a in range(len(answers)) for p in range(len(plans))]
    for a, p in pairs:
        if not (0 <= a < len(answers) and 0 <= p < len(plans)):
            raise ValueError(
                f"pair {(a, p)} is outside {len(answers)} answers x {len(plans)} plans"
            )
    head = tuple(int(i) for i in prompt_ids)
    out: dict[tuple[int, int], list[float]] = {}
    run: list[tuple[int, int]] = []
    for pair in dict.fromkeys((int(a), int(p)) for a, p in pairs):
        if answers[pair[0]]:
            run.append(pair)
        else:
            out[pair] = []
    if not run:
        return out
    rows = []
    for a, _ in run:
        tail = tuple(int(i) for i in answers[a])
        rows.append(ForcedRow(ids=head + tail, start=len(head), end=len(head) + len(tail)))
    result = forced_pass(
        model,
        rows,
        [plans[p] for _, p in run],
        should_stop=should_stop,
        logprobs=True,
    )
    if result.span_logprobs is None:  # stopped
        return None
    for pair, lp in zip(run, result.span_logprobs, strict=True):
        out[pair] = [float(v) for v in lp.tolist()]
    return out


def _total(values: Sequence[float]) -> float:
    return math.fsum(values)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True)
class AnswerLogprobs:
    """One answer's tokens under its own model and under the other column's (``other_row``)."""

    row: int
    other_row: int
    own: tuple[float, ...]
    other: tuple[float, ...]
    meaning: ClassVar[str] = LOGPROB_MEANING  # what the numbers are, for files

    def __post_init__(self) -> None:
        if len(self.own) != len(self.other):
            raise ValueError(f"own has {len(self.own)} values, other {len(self.other)}")

    @property
    def sum_own(self) -> float:
        return _total(self.own)

    @property
    def sum_other(self) -> float:
        return _total(self.other)

    @property
    def mean_own(self) -> float | None:
        """Mean log-probability per token (None for an empty answer)."""
        return _mean(self.own)

    @property
    def mean_other(self) -> float | None:
        return _mean(self.other)


def run_logprobs(
    model: LoadedModel,
    prompt_ids: Sequence[int],
    answers: Sequence[Sequence[int]],
    plans: Sequence[RowPlan],
    *,
    should_stop: Callable[[], bool] | None = None,
) -> list[AnswerLogprobs] | None:
    """Each answer of a run (row 0 the baseline, ``plans[i]`` the plan that wrote
    ``answers[i]``) under its own plan and the other column's (:func:`other_row`), in one
    forced batch. None when ``should_stop`` ended the pass."""
    if len(answers) != len(plans):
        raise ValueError(f"{len(answers)} answers but {len(plans)} plans: one plan per answer")
    n = len(answers)
    scores = answer_logprobs(
        model, prompt_ids, answers, plans, own_and_other(n), should_stop=should_stop
    )
    if scores is None:
        return None
    return [
        AnswerLogprobs(
            row=i,
            other_row=other_row(i, n),
            own=tuple(scores[(i, i)]),
            other=tuple(scores[(i, other_row(i, n))]),
        )
        for i in range(n)
    ]
