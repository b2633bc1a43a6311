"""Persona vector extraction: mean activation under pos prompts minus mean under neg prompts.

The math (:func:`mean_difference`, :func:`cohens_d`, :func:`separation_scores`) is pure and works
on activation tensors. :func:`extract_persona` runs the rollouts — batched, left-padded, seeded —
and reads all three variants (response-token mean, prompt-token mean, last prompt token) from
the same forward passes, at every layer at once. Each vector records the layer to steer at
(:func:`suggest_layer`) and a strength calibrated against the shipped built-ins
(:func:`recommend_strength`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_LIMITS,
    MAX_BATCH_SIZE,
    MAX_SAMPLES,
    check_int,
    check_prompt_tokens,
)
from persona_explorer.engine.model import LoadedModel
from persona_explorer.personas.definitions import (
    PersonaDefinition,
    assistant_prefixed,
    format_system_prompt,
)
from persona_explorer.steering.generation import GenerationResult, SamplingConfig, generate_stream
from persona_explorer.steering.projection import layer_projections
from persona_explorer.vectors.persona_vector import PersonaVector

Variant = Literal["response", "prompt", "last"]
VARIANTS: tuple[Variant, ...] = ("response", "prompt", "last")
ProgressFn = Callable[[float, str], None]


class ExtractionError(InputError):
    """The rollouts gave nothing to build a vector from; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# Pure math


def mean_difference(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``pos`` [n_pos, n_layers, d_model], ``neg`` [n_neg, ...] -> [n_layers, d_model]."""
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ExtractionError(
            "Need at least one pos and one neg sample: every answer on one side came back "
            "empty. Use more questions or more new tokens."
        )
    return pos.float().mean(0) - neg.float().mean(0)


def cohens_d(pos_proj: torch.Tensor, neg_proj: torch.Tensor) -> torch.Tensor:
    """Effect size per layer: ``pos_proj`` [n_pos, n_layers], ``neg_proj`` [n_neg, n_layers]."""
    n1, n2 = pos_proj.shape[0], neg_proj.shape[0]
    diff = pos_proj.mean(0) - neg_proj.mean(0)
    if n1 + n2 <= 2:
        return torch.zeros_like(diff)
    var1 = pos_proj.var(0, unbiased=True) if n1 > 1 else torch.zeros_like(diff)
    var2 = neg_proj.var(0, unbiased=True) if n2 > 1 else torch.zeros_like(diff)
    pooled = ((n1 - 1) * var1 + (n2 - 1) * var2) / (n1 + n2 - 2)
    return diff / pooled.sqrt().clamp(min=1e-6)


def separation_scores(
    pos: torch.Tensor, neg: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, bool]:
    """Per-layer Cohen's d of projections onto the mean-difference direction.

    Cross-validated over two folds where there are enough samples (the direction is estimated on
    one half and scored on the other): in a 576-dim space an in-sample direction separates almost
    any two groups, which would make every layer look good. Returns (scores, cross_validated).
    """
    n1, n2 = pos.shape[0], neg.shape[0]
    if min(n1, n2) < 4:
        direction = mean_difference(pos, neg)
        return cohens_d(layer_projections(pos, direction), layer_projections(neg, direction)), False
    gen = torch.Generator().manual_seed(seed)
    p_perm = torch.randperm(n1, generator=gen)
    n_perm = torch.randperm(n2, generator=gen)
    p_halves = (p_perm[: n1 // 2], p_perm[n1 // 2 :])
    n_halves = (n_perm[: n2 // 2], n_perm[n2 // 2 :])
    scores = []
    for fit, score in ((0, 1), (1, 0)):
        direction = mean_difference(pos[p_halves[fit]], neg[n_halves[fit]])
        scores.append(
            cohens_d(
                layer_projections(pos[p_halves[score]], direction),
                layer_projections(neg[n_halves[score]], direction),
            )
        )
    return torch.stack(scores).mean(0), True


def suggest_layer(separation: Sequence[float]) -> int:
    """The best-separating layer, ignoring the first and last sixth of the model.

    Early layers barely encode persona and the last layers mostly encode the next token; steering
    at either is known to work poorly, so the suggestion stays in the middle of the stack.
    On the built-ins' own separation curves (embedded 30-layer model) it picks layers 15-23
    where reading outputs chose 10-22: the curves are nearly flat past layer 16, so it tends
    late, but never into the last sixth, and at the recommended strength (which scales with
    the residual norm of the layer) layer 21 steers as readably as layers 14-18.
    """
    n = len(separation)
    lo, hi = (n // 6, n - n // 6) if n >= 6 else (0, n)
    window = list(separation[lo:hi])
    return lo + max(range(len(window)), key=lambda i: window[i])


# ---------------------------------------------------------------------------------------------
# Recommended strength

# strength * |v_L| / R(L) of the hand-picked built-ins (median), R(L) as :func:`residual_norms`
# measures it: see :func:`recommend_strength` for the numbers behind it. The sweeps that later
# chose the built-ins' settings (builtin_check, whose grid spans 0.5x to 2x of this) kept 0.4x to
# 0.9x of it: the smallest strength that clears the trait margin. So this is a starting point
# that a sweep refines, on the strong side.
REFERENCE_RATIO = 0.29
STRENGTH_STEP = 0.25
STRENGTH_RULE = (
    f"{REFERENCE_RATIO:g} x mean residual norm of the answers without the persona at the "
    f"layer / the vector's norm there, rounded to {STRENGTH_STEP:g}"
)


def residual_norms(acts: torch.Tensor) -> torch.Tensor:
    """``acts`` [n, n_layers, d_model] (one row per answer) -> the mean row norm per layer."""
    return acts.float().norm(dim=-1).mean(0)


def recommend_strength(
    vector_norm: float, residual_norm: float, ratio: float = REFERENCE_RATIO
) -> float | None:
    """The strength that makes ``strength * |v_L|`` ``ratio`` times the typical residual norm
    R(L) at the steering layer, rounded to :data:`STRENGTH_STEP` (at least one step).

    Steering works when the added vector is a set fraction of the residual stream it is added
    to, whatever the vector's own norm; the fraction comes from the built-ins, whose layer and
    strength were checked by reading outputs. Measured on the embedded SmolLM2-135M-Instruct
    (R = the mean norm over answers of the answer-token mean of the residual, 16 questions x
    48 tokens with a helpful-assistant system prompt; 16 or 32 tokens give the same within 5 %):
    R(10) = 106.1, R(14) = 113.1, R(18) = 156.8, R(22) = 253.2, and ``strength * |v_L| / R``

    ============  =====  ========  =======  =====
    built-in      layer  strength  |v_L|    ratio
    ============  =====  ========  =======  =====
    evil (last)   14     3         12.44    0.33
    formal        14     3         10.91    0.29
    optimistic    14     6          5.29    0.28
    pessimistic   18     3         11.04    0.21
    pirate        22     3         47.56    0.56
    poetic        14     3         11.27    0.30
    sarcastic     10     3          8.50    0.24
    sycophantic   14     6          7.24    0.38
    ============  =====  ========  =======  =====

    Median 0.29 (range 0.21-0.56). Applied back to the built-ins the rule gives 1.5-6.25, within
    a factor of 2 of every recorded strength. For the Extract tab's default custom persona (4
    questions x 32 tokens, suggested layer 21) it gives 1.0 where the old fallback of 2.0 (ratio
    0.56) repeated itself; the README notes that text degenerates past about twice the
    recorded strength. None for a zero vector or an unknown residual norm.
    """
    if not (0 < vector_norm < math.inf and 0 < residual_norm < math.inf):  # NaN fails too
        return None
    # A vector so small that it needs more is mostly noise; the app would refuse more anyway.
    raw = min(ratio * residual_norm / vector_norm, DEFAULT_LIMITS.max_abs_strength)
    return max(STRENGTH_STEP, round(raw / STRENGTH_STEP) * STRENGTH_STEP)


def strength_metadata(
    vectors: torch.Tensor, layer: int, norms: torch.Tensor
) -> tuple[float | None, dict[str, object]]:
    vector_norm = float(vectors[layer].norm())
    residual_norm = float(norms[layer]) if norms.numel() else float("nan")
    strength = recommend_strength(vector_norm, residual_norm)
    rule: dict[str, object] = {"rule": STRENGTH_RULE, "ratio": REFERENCE_RATIO, "layer": layer}
    if math.isfinite(residual_norm):  # metadata is JSON: no NaN
        rule |= {"residual_norm": round(residual_norm, 2), "vector_norm": round(vector_norm, 4)}
    return strength, rule


# ---------------------------------------------------------------------------------------------
# Rollouts


@dataclass(frozen=True)
class ExtractionConfig:
    variant: Variant = "response"
    n_questions: int | None = 20
    samples: int = 1
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 64  # the batch the extraction benchmark measures
    # Policy cap on each rollout prompt in tokens (``Limits.max_prompt_tokens``); None: only
    # the model's context length.
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {', '.join(VARIANTS)}.")
        check_int(self.samples, "samples", 1, MAX_SAMPLES)
        if self.n_questions is not None:
            check_int(self.n_questions, "n_questions", 1)
        check_int(self.batch_size, "batch_size", 1, MAX_BATCH_SIZE)
        # Fail before any model work, with the same rules generation applies.
        self.sampling(0)

    def sampling(self, seed_offset: int) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed + seed_offset,
            shared_noise=False,
            max_prompt_tokens=self.max_prompt_tokens,
        )


@dataclass(frozen=True)
class Rollout:
    side: Literal["pos", "neg"]
    system: str
    question: str
    response: str


@dataclass
class ExtractionResult:
    vector: PersonaVector
    by_variant: dict[str, PersonaVector]  # all three variants, from the same passes
    rollouts: list[Rollout]
    seconds: float
    cross_validated: bool
    extra: dict[str, float] = field(default_factory=dict)
    # R(L) per layer, the scale the recommended strength is set against (recommend_strength);
    # empty when no answer without the persona had any tokens.
    residual_norms: tuple[float, ...] = ()


def portable_source(source: str) -> str:
    """A persona file's path without the machine's directories (``traits/evil.json``): a
    vector's metadata travels to other machines and to visitors."""
    if not source or "/" not in source.replace("\\", "/"):
        return source
    parts = Path(source.replace("\\", "/")).parts
    kind_dirs = [i for i, p in enumerate(parts) if p in ("traits", "roles")]
    return (
        "/".join(p for p in parts[kind_dirs[-1] :] if p != "instructions")
        if kind_dirs
        else parts[-1]
    )


def system_prompt_pairs(persona: PersonaDefinition, model_name: str) -> list[tuple[str, str]]:
    """(pos, neg) system prompts as the research code builds them.

    Traits follow persona_vectors: "You are a/an {trait} assistant. {pos}" against
    "You are a helpful assistant. {neg}". Roles are full system prompts, contrasted with the
    default-Assistant prompts. Custom personas are used exactly as written.
    """
    pairs = []
    for pos, neg in persona.contrast_pairs():
        if persona.kind == "trait":
            pos = assistant_prefixed(pos, persona.name.replace("_", " "))
            neg = assistant_prefixed(neg, "helpful")
        pairs.append((format_system_prompt(pos, model_name), format_system_prompt(neg, model_name)))
    return pairs


def extract_persona(
    model: LoadedModel,
    persona: PersonaDefinition,
    cfg: ExtractionConfig = ExtractionConfig(),
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionResult:
    """Generate pos and neg rollouts and return the persona vector at every layer."""
    started = time.perf_counter()
    questions = persona.extraction_questions(cfg.n_questions)
    rows: list[tuple[Literal["pos", "neg"], str, str]] = []
    # Each distinct prompt is tokenized and checked once, before any rollout runs: a persona
    # field too long for the model fails at once, naming the prompt, not batches later.
    ids_of: dict[tuple[str, str], list[int]] = {}
    for k, (pos, neg) in enumerate(system_prompt_pairs(persona, model.display_name), start=1):
        for j, question in enumerate(questions, start=1):
            for side, system in (("pos", pos), ("neg", neg)):
                if (system, question) not in ids_of:
                    ids = model.chat_ids(question, system=system or None)
                    check_prompt_tokens(
                        len(ids),
                        cfg.max_new_tokens,
                        model.context_length,
                        cfg.max_prompt_tokens,
                        what=f"prompt of question {j} with the {side} system prompt of pair {k}",
                    )
                    ids_of[system, question] = ids
            for _ in range(cfg.samples):
                rows.append(("pos", pos, question))
                rows.append(("neg", neg, question))
    prompts = [ids_of[s, q] for _, s, q in rows]
    # Similar lengths in one batch waste less work on padding.
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    n = len(rows)
    # Per rollout and variant: the activation at every layer, and at the embedding output.
    acts = {v: torch.zeros(n, model.n_layers, model.d_model) for v in VARIANTS}
    embeds = {v: torch.zeros(n, model.d_model) for v in VARIANTS}
    responses = [""] * n
    n_batches = math.ceil(n / cfg.batch_size)
    for b in range(n_batches):
        if should_stop is not None and should_stop():
            raise InterruptedError("Extraction stopped.")
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        res: GenerationResult | None = None
        for update in generate_stream(
            model,
            [prompts[i] for i in idx],
            [()] * len(idx),
            cfg.sampling(b),
            keep_tokens=False,
            should_stop=should_stop,
            row_invariant=False,  # rows are independent rollouts; the faster kernel is fine
        ):
            res = update.result
            if progress:
                # The label moves with the bar: which rollouts, and how far their answers got.
                done = b * cfg.batch_size
                step = min(update.step, cfg.max_new_tokens)
                frac = (b + step / cfg.max_new_tokens) / n_batches
                progress(
                    min(frac, 1.0),
                    f"Rollouts {done + 1}–{done + len(idx)} of {n}: "
                    f"token {step} of {cfg.max_new_tokens}",
                )
        if res is None or (should_stop is not None and should_stop()):
            raise InterruptedError("Extraction stopped.")
        cap = res.capture
        rows_here = torch.tensor(idx)
        acts["response"][rows_here] = cap.response_mean.cpu()
        acts["prompt"][rows_here] = cap.prompt_mean.cpu()
        acts["last"][rows_here] = cap.prompt_last.cpu()
        embeds["response"][rows_here] = cap.embed_response_mean.cpu()
        embeds["prompt"][rows_here] = cap.embed_prompt_mean.cpu()
        embeds["last"][rows_here] = cap.embed_prompt_last.cpu()
        for j, i in enumerate(idx):
            responses[i] = model.decode(res.tokens[j])
    if progress:
        progress(1.0, "Computing the vector")
    is_pos = torch.tensor([side == "pos" for side, _, _ in rows])
    # Rows with an empty response have no response activations: leave them out of that variant.
    has_resp = torch.tensor([bool(r.strip()) for r in responses])
    seconds = time.perf_counter() - started
    # Steering adds to answer tokens, so their residual sets the scale for every variant; the
    # answers without the persona are the ordinary ones.
    ordinary = ~is_pos & has_resp
    norms = residual_norms(acts["response"][ordinary]) if ordinary.any() else torch.empty(0)
    by_variant: dict[str, PersonaVector] = {}
    for v in VARIANTS:
        keep = has_resp if v == "response" else torch.ones(n, dtype=torch.bool)
        pos_acts, neg_acts = acts[v][is_pos & keep], acts[v][~is_pos & keep]
        separation, cv_v = separation_scores(pos_acts, neg_acts, seed=cfg.seed)
        sep = tuple(float(x) for x in separation)
        embedding = mean_difference(
            embeds[v][is_pos & keep][:, None], embeds[v][~is_pos & keep][:, None]
        )[0]
        vectors = mean_difference(pos_acts, neg_acts)
        layer = suggest_layer(sep)
        strength, strength_rule = strength_metadata(vectors, layer, norms)
        by_variant[v] = PersonaVector(
            name=persona.name,
            vectors=vectors,
            model_id=model.model_id,
            variant=v,
            layer=layer,
            strength=strength,
            separation=sep,
            embedding=embedding,
            metadata={
                "source": portable_source(persona.source) or persona.kind,
                "persona_kind": persona.kind,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "counts": {
                    "pos": int(pos_acts.shape[0]),
                    "neg": int(neg_acts.shape[0]),
                    "pairs": len(persona.pairs),
                    "questions": len(questions),
                    "samples": cfg.samples,
                    "empty_responses": int((~has_resp).sum()),
                },
                "separation_cross_validated": cv_v,
                "strength_rule": strength_rule,
                "settings": {
                    "max_new_tokens": cfg.max_new_tokens,
                    "temperature": cfg.temperature,
                    "top_p": cfg.top_p,
                    "seed": cfg.seed,
                },
                "seconds": round(seconds, 2),
            },
        )
    rollouts = [Rollout(side, s, q, r) for (side, s, q), r in zip(rows, responses, strict=True)]
    chosen = by_variant[cfg.variant]
    cv = bool(chosen.metadata["separation_cross_validated"])
    return ExtractionResult(
        chosen, by_variant, rollouts, seconds, cv, residual_norms=tuple(norms.tolist())
    )
