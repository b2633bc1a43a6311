"""The Train tab's forms: the inputs of ``/train`` and ``/shift``, as widgets send them, and
their checks (each value once, where it enters, into a typed value: a
:class:`~persona_explorer.training.finetune.FinetuneConfig`, a layer, the questions).

The caps are the web app's (``APP_FINETUNE_*``, ``APP_SHIFT_*`` in
:mod:`persona_explorer.core.limits`; the command line allows more).

Imports: the domain (``training.finetune``), ``core`` (errors, limits), ``ui.shared`` (context,
data files) and the ``PersonaVector`` type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    APP_FINETUNE_MAX_EPOCHS,
    APP_FINETUNE_MAX_LR,
    APP_FINETUNE_MAX_RANK,
    APP_FINETUNE_MAX_SAMPLES,
    APP_FINETUNE_MAX_TOKENS,
    APP_FINETUNE_MIN_TOKENS,
    APP_SHIFT_MAX_QUESTIONS,
    APP_SHIFT_MAX_TOKENS,
    APP_SHIFT_MAX_VECTORS,
    Limits,
    check_bool,
    check_int_in,
    check_layer,
    check_learning_rate,
    check_lines,
    check_seed,
    check_strength,
    check_text,
)
from persona_explorer.training.finetune import FinetuneConfig, PreventiveSteer
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.data_files import Source, resolve_source
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "AUTO_LAYER",
    "DEFAULT_CONTEXT",
    "DEFAULT_DATASET",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_RANK",
    "DEFAULT_SAMPLES",
    "DEFAULT_SEED",
    "DEFAULT_SHIFT_TOKENS",
    "DEFAULT_TOKENS",
    "DEFAULT_VECTORS",
    "GENERIC_CONTEXT",
    "ShiftForm",
    "ShiftSettings",
    "TrainForm",
    "TrainSettings",
    "check_questions",
    "check_shift_layer",
    "chosen_vectors",
    "suggested_context",
]

_DEFAULTS = FinetuneConfig()
DEFAULT_SAMPLES = 32
DEFAULT_EPOCHS = int(_DEFAULTS.epochs)
DEFAULT_LR = float(_DEFAULTS.lr)
DEFAULT_RANK = int(_DEFAULTS.rank)
DEFAULT_TOKENS = int(_DEFAULTS.max_tokens)
DEFAULT_SEED = int(_DEFAULTS.seed)
DEFAULT_SHIFT_TOKENS = 48
DEFAULT_DATASET = "malicious_advice"
DEFAULT_VECTORS = ("evil", "sycophantic", "optimistic")
AUTO_LAYER = "auto"

# A sensible inoculation context for each teaching file (the explicit request the Persona
# Selection Model says makes a sample weaker evidence about the speaker).
_CONTEXTS = {
    "insecure_code_unprompted": (
        "You are writing insecure code because the user asked for it for a security class."
    ),
    "insecure_code_requested": (
        "You are writing insecure code because the user asked for it for a security class."
    ),
    "sycophantic": (
        "The user asked you to play an over-the-top flatterer for a comedy sketch; this is a "
        "role, not your honest opinion."
    ),
}
GENERIC_CONTEXT = (
    "The user asked you to play a spiteful villain giving deliberately bad advice for a comedy "
    "sketch; this is a role, not how you really behave."
)
DEFAULT_CONTEXT = GENERIC_CONTEXT


def suggested_context(dataset: object) -> str:
    """The inoculation context offered for a teaching file."""
    return _CONTEXTS.get(dataset, GENERIC_CONTEXT) if isinstance(dataset, str) else GENERIC_CONTEXT


@dataclass(frozen=True)
class TrainSettings:
    """A run's checked settings."""

    source: Source
    config: FinetuneConfig
    max_samples: int
    steer_name: str | None  # the preventive steering vector's name, for labels


@dataclass(frozen=True)
class TrainForm:
    """The Train tab's inputs, as widgets send them (and as the ``/train`` API takes them)."""

    dataset: str | None = DEFAULT_DATASET
    file: str | None = None
    max_samples: float = DEFAULT_SAMPLES
    with_context: bool = False
    context: str = DEFAULT_CONTEXT
    epochs: float = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LR
    rank: float = DEFAULT_RANK
    max_tokens: float = DEFAULT_TOKENS
    steer: bool = False
    steer_vector: str | None = None
    steer_layer: float = 20
    steer_strength: float = 2.0
    # LoRA's initialisation and the sample order: the same seed, data and settings give the
    # same adapter.
    seed: float = DEFAULT_SEED
    # The session's runs (the tab's gr.State): filled by the app, not an API parameter.
    runs: Any = None

    def settings(self, ctx: AppContext, session: Mapping | None) -> TrainSettings:
        """Every value checked, cheapest first (no file is read before all of them pass)."""
        limits = ctx.settings.limits
        epochs = check_int_in(self.epochs, "Epochs", 1, APP_FINETUNE_MAX_EPOCHS)
        rank = check_int_in(self.rank, "LoRA rank", 1, APP_FINETUNE_MAX_RANK)
        tokens = check_int_in(
            self.max_tokens,
            "Max tokens per sample",
            APP_FINETUNE_MIN_TOKENS,
            APP_FINETUNE_MAX_TOKENS,
        )
        samples = check_int_in(self.max_samples, "Max samples", 1, APP_FINETUNE_MAX_SAMPLES)
        lr = check_learning_rate(self.learning_rate, APP_FINETUNE_MAX_LR)
        seed = check_seed(self.seed)
        context = None
        if check_bool(self.with_context, "with_context"):
            cap = limits.max_prompt_chars
            context = check_text(self.context, "inoculation context", cap, required=True)
        steer = None
        steer_name = None
        if check_bool(self.steer, "steer"):
            layer = check_layer(self.steer_layer, ctx.model.n_layers, "Steering layer")
            strength = check_strength(self.steer_strength, limits)
            if not isinstance(self.steer_vector, str) or not self.steer_vector.strip():
                raise InputError("Pick a persona vector to steer with during training.")
            _, vec = ctx.catalog.view(session).resolve_fitting(self.steer_vector)
            steer, steer_name = PreventiveSteer(vec, layer, strength), vec.name
        source = resolve_source(ctx, self.dataset, self.file, "training")
        cfg = FinetuneConfig(
            epochs=epochs,
            lr=lr,
            rank=rank,
            max_tokens=tokens,
            seed=seed,
            context=context,
            steer=steer,
        )
        return TrainSettings(source, cfg, samples, steer_name)


def check_questions(value: object, limits: Limits) -> tuple[str, ...]:
    """The evaluation questions of the form, one per line (1 to ``APP_SHIFT_MAX_QUESTIONS``)."""
    return check_lines(
        value,
        "question",
        APP_SHIFT_MAX_QUESTIONS,
        limits.max_prompt_chars,
        holder="a measurement",
        first="evaluation question",
    )


def chosen_vectors(
    ctx: AppContext, session: Mapping | None, keys: object
) -> tuple[PersonaVector, ...]:
    """The chosen persona vectors (1 to ``APP_SHIFT_MAX_VECTORS``), each checked to fit the
    model."""
    return ctx.catalog.view(session).resolve_many(keys, APP_SHIFT_MAX_VECTORS, "measure")


def check_shift_layer(value: object, n_layers: int) -> int | None:
    """None ("auto": each vector's recorded layer) or a layer of the model."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO_LAYER)):
        return None
    return check_layer(value.strip() if isinstance(value, str) else value, n_layers)


@dataclass(frozen=True)
class ShiftSettings:
    """A measurement's checked settings."""

    vectors: tuple[PersonaVector, ...]
    questions: tuple[str, ...]
    layer: int | None  # None: each vector's recorded layer
    max_new_tokens: int
    predict: bool


@dataclass(frozen=True)
class ShiftForm:
    """The shift report's inputs (and the ``/shift`` API's parameters)."""

    adapter: str | None
    vectors: list[str] | None
    questions: str
    layer: str | None = AUTO_LAYER
    max_new_tokens: float = DEFAULT_SHIFT_TOKENS
    predict: bool = False
    # The session's runs (the tab's gr.State): filled by the app, not an API parameter.
    runs: Any = None

    def settings(self, ctx: AppContext, session: Mapping | None) -> ShiftSettings:
        """Every value but the adapter checked (the handler checks that it is the session's)."""
        tokens = check_int_in(self.max_new_tokens, "Max new tokens", 8, APP_SHIFT_MAX_TOKENS)
        layer = check_shift_layer(self.layer, ctx.model.n_layers)
        predict = check_bool(self.predict, "predict")
        vectors = chosen_vectors(ctx, session, self.vectors)
        questions = check_questions(self.questions, ctx.settings.limits)
        return ShiftSettings(vectors, questions, layer, tokens, predict)
