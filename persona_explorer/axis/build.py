"""Rollouts for the Assistant Axis: role vectors and the default Assistant on shared questions.

Every role answers the same questions under each of its system prompts, as does the default
Assistant under its five; a rollout's response-mean residual is its activation, and a role's
vector is the mean over its rollouts (Lu et al., 2026). The default's rows also keep per-token
residuals, the distribution a capping floor τ is taken from.

:func:`axis_for` is the one way to the loaded model's axis: the shipped file for the embedded
model, else the one cached under the caller's cache folder (``settings.cache_dir``, passed in:
nothing here reads the settings), else built once and cached.

Imports: torch, ``core``, ``engine.model``, ``personas`` (the roles and the shared questions),
``steering.generation`` and :mod:`.assistant_axis`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from persona_explorer.axis.assistant_axis import AxisData, assistant_axis, project, token_quantiles
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int
from persona_explorer.engine.model import EMBEDDED_MODEL_ID, LoadedModel
from persona_explorer.personas.data import load_builtin, shared_data_dir
from persona_explorer.personas.definitions import DEFAULT_ASSISTANT_PROMPTS, format_system_prompt
from persona_explorer.steering.generation import SamplingConfig, generate_stream

ProgressFn = Callable[[float, str], None]

ASSETS_AXIS_DIR = Path(__file__).resolve().parents[2] / "assets" / "axis"
EMBEDDED_AXIS_NAME = "smollm2-135m-instruct"
BATCH_SIZE = 64

# A spread over the kinds of character the paper's role space spans: helpful professions near
# the Assistant, then performers, fictional and mystical figures, villains, animals, machines
# and non-human things far from it. Too few far roles and PC1 stops tracking the axis.
CURATED_ROLES: tuple[str, ...] = (
    # professions and helpers
    "doctor", "teacher", "librarian", "accountant", "therapist", "lawyer", "engineer",
    "programmer", "scientist", "chef", "journalist", "tutor",
    # performers and temperaments
    "comedian", "poet", "bard", "jester", "cynic", "zealot", "narcissist", "hedonist",
    # fictional, historical and mystical figures
    "pirate", "caveman", "witch", "oracle", "shaman", "prophet", "guru",
    "angel", "ghost", "vampire", "genie",
    # villains and outlaws
    "demon", "criminal", "saboteur", "smuggler", "trickster", "destroyer", "predator",
    # animals, machines and things
    "whale", "robot", "cyborg", "alien", "virus", "swarm", "tree", "void", "leviathan",
)  # fmt: skip

_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


def shared_questions(n: int, data_dir: Path | None = None) -> tuple[str, ...]:
    """The first ``n`` of the shared extraction questions (every role answers the same ones), from
    ``data_dir`` (the ``persona_data_dir`` setting) or the shipped persona data."""
    base = shared_data_dir(data_dir)
    path = None if base is None else base / "extraction_questions.jsonl"
    if path is None or not path.is_file():
        raise InputError("extraction_questions.jsonl not found in the persona data directory")
    out: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            if line.strip():
                q = json.loads(line).get("question")
                if isinstance(q, str) and q.strip():
                    out.append(q)
    return tuple(out)


def _rollout_batches(
    model: LoadedModel,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    keep_tokens: bool,
    on_step: Callable[[int, int, int], None],
    should_stop: Callable[[], bool] | None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Response means [n, n_layers, d], response lengths [n], and (with ``keep_tokens``) each
    row's per-token residuals [len_i, n_layers, d]."""
    n = len(prompts)
    means = torch.zeros(n, model.n_layers, model.d_model)
    lengths = torch.zeros(n, dtype=torch.long)
    tokens: list[torch.Tensor] = [torch.empty(0)] * n
    order = sorted(range(n), key=lambda i: len(prompts[i]))  # less padding per batch
    for b, start in enumerate(range(0, n, BATCH_SIZE)):
        idx = order[start : start + BATCH_SIZE]
        res = None
        for update in generate_stream(
            model,
            [prompts[i] for i in idx],
            [()] * len(idx),
            SamplingConfig(**{**cfg.__dict__, "seed": cfg.seed + b}),
            keep_tokens=keep_tokens,
            should_stop=should_stop,
            row_invariant=False,
        ):
            res = update.result
            on_step(start, len(idx), update.step)
        if res is None or (should_stop is not None and should_stop()):
            raise InterruptedError("Axis build stopped.")
        cap = res.capture
        means[idx] = cap.response_mean.float().cpu()
        for j, i in enumerate(idx):
            # Decoded text, not the token count: a response of only whitespace says nothing.
            lengths[i] = len(res.tokens[j]) if model.decode(res.tokens[j]).strip() else 0
            if keep_tokens and cap.response_tokens is not None:
                tokens[i] = cap.response_tokens[j, : len(res.tokens[j])].float().cpu()
    return means, lengths, tokens


def build_axis(
    model: LoadedModel,
    roles: Sequence[str],
    *,
    n_questions: int = 6,
    max_new_tokens: int = 40,
    prompts_per_role: int = 5,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    data_dir: Path | None = None,
) -> AxisData:
    """Role vectors, the default Assistant's vector and the axis, at every layer (the roles and
    questions from ``data_dir``, the ``persona_data_dir`` setting, or the shipped data)."""
    started = time.perf_counter()
    check_int(n_questions, "n_questions", 1)
    check_int(prompts_per_role, "prompts_per_role", 1)
    if len(roles) < 2:
        raise InputError("an axis needs at least two roles")
    questions = shared_questions(n_questions, data_dir)
    name = model.display_name
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)

    def rows_for(systems: Sequence[str]) -> list[list[int]]:
        return [
            model.chat_ids(q, system=format_system_prompt(s, name) or None)
            for s in systems
            for q in questions
        ]

    role_prompts = [
        load_builtin(r, "role", data_dir=data_dir).pairs[:prompts_per_role] for r in roles
    ]
    role_rows: list[list[int]] = []
    owner: list[int] = []
    for k, pairs in enumerate(role_prompts):
        rows = rows_for([p.pos for p in pairs])
        role_rows += rows
        owner += [k] * len(rows)
    default_rows = rows_for(DEFAULT_ASSISTANT_PROMPTS[:prompts_per_role])
    total_steps = max_new_tokens * (
        math.ceil(len(role_rows) / BATCH_SIZE) + math.ceil(len(default_rows) / BATCH_SIZE)
    )
    done_steps = 0
    rollouts_done = 0
    n_total = len(role_rows) + len(default_rows)

    def on_step(start: int, batch: int, step: int) -> None:
        # ``start``: the batch's first row within the current group of rows.
        if progress is None:
            return
        steps = done_steps + max_new_tokens * (start // BATCH_SIZE) + step
        first = rollouts_done + start
        progress(min(steps / total_steps, 0.999), f"Rollouts {first}-{first + batch} of {n_total}")

    def finish_batches(rows: int) -> None:
        nonlocal done_steps, rollouts_done
        done_steps += max_new_tokens * math.ceil(rows / BATCH_SIZE)
        rollouts_done += rows

    d_means, d_len, d_tokens = _rollout_batches(
        model, default_rows, cfg, keep_tokens=True, on_step=on_step, should_stop=should_stop
    )
    finish_batches(len(default_rows))
    r_means, r_len, _ = _rollout_batches(
        model, role_rows, cfg, keep_tokens=False, on_step=on_step, should_stop=should_stop
    )
    finish_batches(len(role_rows))
    owner_t = torch.tensor(owner)
    kept_roles: list[str] = []
    vectors: list[torch.Tensor] = []
    for k, role in enumerate(roles):
        keep = (owner_t == k) & (r_len > 0)
        if keep.any():
            kept_roles.append(role)
            vectors.append(r_means[keep].mean(0))
    if len(vectors) < 2 or not (d_len > 0).any():
        raise InputError("too many empty responses: use more new tokens or more questions")
    role_vectors = torch.stack(vectors)
    default_vector = d_means[d_len > 0].mean(0)
    axis = assistant_axis(default_vector, role_vectors)
    per_token = torch.cat([t for t, n in zip(d_tokens, d_len.tolist(), strict=True) if n > 0])
    quantiles = token_quantiles(project(per_token, axis))
    seconds = time.perf_counter() - started
    if progress:
        progress(1.0, f"Built the axis from {len(kept_roles)} roles")
    metadata = {
        "method": "Lu et al. 2026: axis = mean(default) - mean(role vectors), response means",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "n_questions": len(questions),
            "max_new_tokens": max_new_tokens,
            "prompts_per_role": prompts_per_role,
            "default_prompts": min(prompts_per_role, len(DEFAULT_ASSISTANT_PROMPTS)),
            "temperature": 0.0,
            "seed": seed,
            "batch_size": BATCH_SIZE,
            "questions": "first n of extraction_questions.jsonl",
        },
        "counts": {
            "role_rollouts": len(role_rows),
            "default_rollouts": len(default_rows),
            "empty_role_responses": int((r_len == 0).sum()),
            "empty_default_responses": int((d_len == 0).sum()),
            "default_tokens": int(per_token.shape[0]),
            "roles_dropped": [r for r in roles if r not in kept_roles],
        },
        "quantile_levels": "0..100 step 5, per-token projections of the default Assistant",
        "seconds": round(seconds, 1),
    }
    return AxisData(
        model_id=model.model_id,
        roles=tuple(kept_roles),
        role_vectors=role_vectors,
        default_vector=default_vector,
        axis=axis,
        default_token_quantiles=quantiles,
        metadata=metadata,
    )


def model_key(model_id: str) -> str:
    """A file name for ``model_id``: the shipped name for the embedded model."""
    if model_id == EMBEDDED_MODEL_ID:
        return EMBEDDED_AXIS_NAME
    return _SAFE_KEY.sub("_", model_id).strip("._")[:150] or "model"


def shipped_axis_path(model_id: str) -> Path:
    """Where a shipped (precomputed, read-only) axis of ``model_id`` would be."""
    return ASSETS_AXIS_DIR / f"{model_key(model_id)}.safetensors"


def axis_path(model_id: str, cache_dir: Path) -> Path:
    """Where the axis of ``model_id`` is cached once built under ``cache_dir`` (the settings'
    cache folder; never inside ``assets/``)."""
    return cache_dir / "axis" / f"{model_key(model_id)}.safetensors"


def _axis_candidates(model: LoadedModel, cache_dir: Path) -> list[Path]:
    """Where :func:`axis_for` looks, in its order."""
    candidates = [axis_path(model.model_id, cache_dir)]
    if model.model_id == EMBEDDED_MODEL_ID:
        candidates.insert(0, shipped_axis_path(model.model_id))
    return candidates


def axis_on_disk(model: LoadedModel, cache_dir: Path) -> AxisData | None:
    """The axis :func:`axis_for` would read for ``model`` (shipped or cached, fitting its
    shape), or None where it would have to build one (minutes). Views that only *show* numbers
    along the axis ask this first, so that drawing a table never starts a build."""
    for path in _axis_candidates(model, cache_dir):
        if not path.is_file():
            continue
        try:
            data = AxisData.load(path)
        except InputError:  # AxisFileError: unreadable; axis_for would say why
            continue
        if (data.n_layers, data.d_model) == (model.n_layers, model.d_model):
            return data
    return None


def axis_for(
    model: LoadedModel,
    cache_dir: Path,
    progress: ProgressFn | None = None,
    roles: Sequence[str] = CURATED_ROLES,
    **build_options: int,
) -> AxisData:
    """The model's axis: the shipped one for the embedded model, else the one cached under
    ``cache_dir``, built (with progress) and cached when missing or made for another shape."""
    candidates = [axis_path(model.model_id, cache_dir)]
    if model.model_id == EMBEDDED_MODEL_ID:
        candidates.insert(0, shipped_axis_path(model.model_id))
    for path in candidates:
        if path.is_file():
            data = AxisData.load(path)
            if (data.n_layers, data.d_model) == (model.n_layers, model.d_model):
                return data
    data = build_axis(model, roles, progress=progress, **build_options)
    target = axis_path(model.model_id, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    data.save(target)
    return data


__all__ = [
    "CURATED_ROLES",
    "axis_for",
    "axis_on_disk",
    "axis_path",
    "build_axis",
    "model_key",
    "shared_questions",
    "shipped_axis_path",
]
