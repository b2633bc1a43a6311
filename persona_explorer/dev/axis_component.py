"""How much of each built-in persona vector is "not the Assistant"? Measured, with and without.

``python -m persona_explorer.dev.axis_component [--only NAMES] [--prompts N] [--tokens N]
[--out FILE]``

On the embedded model and its shipped Assistant Axis, it reports

1. each built-in's component along the axis at its recorded layer and at the Library heat map's
   layer (:func:`~persona_explorer.vectors.axis_component.component_at`);
2. the built-ins' pairwise cosine matrix at that layer, as they are and with each vector's axis
   component removed, and the mean off-diagonal |cos| at several layers;
3. what removing it does to steering: for a few built-ins at their recorded layer and strength,
   the held-out prompts (``assets/sweep/heldout_prompts.txt``, never used to choose settings)
   are answered with the original vector, with the orthogonalised one at the same strength (the
   original push minus its axis part), and with the orthogonalised one at a strength scaled by
   ``|v| / |v⊥|`` (a push as long as the original). Answers are decoded as the app decodes
   (greedy, frequency penalty 1.0) and read back by the unsteered model, as the sweeps read them
   (:mod:`persona_explorer.evaluate.sweep`): ``trait`` = how far the answers moved along the
   original vector at the read-out layer, in units of its length there; ``trait⊥`` the same along
   the orthogonalised vector; ``axis`` = the answers' position on the Assistant Axis (0 = the
   roles' mean, 1 = the default Assistant); ``coherence`` = baseline perplexity / perplexity;
   ``loop`` = the most repeated answer's share of repeated word 3-grams.

All steered rows are decoded in shared batches of 16. With four built-ins (``--only evil
pessimistic pirate sycophantic``) and 12 prompts it took 19 minutes on 2 cores shared with other
jobs; the default three take about three quarters of that, ``--prompts 6`` half. It writes
Markdown (a README-ready section) to ``--out`` (default: stdout).

Imports: ``core`` (settings, limits), ``engine`` (the model), ``axis`` (the shipped axis),
``personas`` (the built-ins), ``evaluate`` (prompts, repetition), ``steering`` (generation,
the teacher-forced read), ``vectors`` (files, the axis component).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from persona_explorer.core.config import load_settings
from persona_explorer.core.limits import DEFAULT_FREQUENCY_PENALTY, DEFAULT_TEMPERATURE
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.sweep_config import SELECT_PROMPTS, read_prompts
from persona_explorer.evaluate.sweep_result import word_repetition
from persona_explorer.personas.builtin import builtin_dir, builtin_vector_paths
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.ops import Add, RowPlan
from persona_explorer.vectors.axis_component import (
    component_at,
    mean_abs_cosine,
    orthogonalise,
    remove_axis_component,
)
from persona_explorer.vectors.files import load
from persona_explorer.vectors.persona_vector import PersonaVector

HELDOUT_PROMPTS = SELECT_PROMPTS.with_name("heldout_prompts.txt")
STEERED = ("pirate", "evil", "sycophantic")
READ_LAYER = 14  # where builtin_check reads every built-in's answers
COSINE_LAYERS = (10, 14, 18, 20, 22)
MAX_NEW_TOKENS = 48
BATCH = 16
VARIANTS = ("original", "⊥ same strength", "⊥ norm-matched")


@dataclass(frozen=True)
class Scores:
    trait: float
    trait_perp: float
    axis: float
    coherence: float
    loop: float
    texts: tuple[str, ...]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp(min=1e-12)


def generate_all(
    model: LoadedModel, prompts: Sequence[str], plans: Sequence[RowPlan]
) -> list[list[int]]:
    """Every (plan, prompt) pair answered, in batches, as the app decodes."""
    ids = [model.chat_ids(p) for p in prompts]
    rows = [(plan, i) for plan in plans for i in range(len(prompts))]
    cfg = SamplingConfig(
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=DEFAULT_TEMPERATURE,
        frequency_penalty=DEFAULT_FREQUENCY_PENALTY,
    )
    out: list[list[int]] = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        result = None
        for update in generate_stream(
            model, [ids[i] for _, i in chunk], [p for p, _ in chunk], cfg, keep_tokens=False,
            row_invariant=False,
        ):  # fmt: skip
            result = update.result
        assert result is not None
        out.extend(list(t) for t in result.tokens)
        print(f"\r  {len(out)}/{len(rows)} answers", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def read_back(
    model: LoadedModel, prompts: Sequence[str], answers: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, list[float]]:
    """The unsteered model's response-mean residual at :data:`READ_LAYER` per answer, and its
    mean log-probability per answer."""
    ids = [model.chat_ids(p) for p in prompts]
    means, logprobs = [], []
    for start in range(0, len(answers), BATCH):
        rows = []
        for k in range(start, min(start + BATCH, len(answers))):
            p = ids[k % len(prompts)]
            rows.append(ForcedRow(tuple(p) + tuple(answers[k]), len(p), len(p) + len(answers[k])))
        read = forced_pass(model, rows, logprobs=True, last_layer=READ_LAYER)
        assert read.span_logprobs is not None
        means.append(read.span_mean[:, READ_LAYER].cpu())
        logprobs.extend(float(lp.mean()) if lp.numel() else 0.0 for lp in read.span_logprobs)
    return torch.cat(means), logprobs


def scores(
    acts: torch.Tensor,
    logprobs: Sequence[float],
    texts: Sequence[str],
    base: tuple[float, float, float, float],
    vec: torch.Tensor,
    perp: torch.Tensor,
    axis_unit: torch.Tensor,
    axis_span: tuple[float, float],
) -> Scores:
    base_v, base_p, _, base_ppl = base
    roles_mean, default = axis_span
    proj_v = float((acts @ _unit(vec)).mean())
    proj_p = float((acts @ _unit(perp)).mean())
    on_axis = float((acts @ axis_unit).mean())
    ppl = math.exp(-sum(logprobs) / len(logprobs))
    return Scores(
        trait=(proj_v - base_v) / float(vec.norm()),
        trait_perp=(proj_p - base_p) / float(perp.norm()),
        axis=(on_axis - roles_mean) / (default - roles_mean),
        coherence=base_ppl / ppl,
        loop=max(word_repetition(t) for t in texts),
        texts=tuple(texts),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def cosine_section(vectors: Sequence[PersonaVector], axis: torch.Tensor, layer: int) -> list[str]:
    names = [v.name for v in vectors]
    rows = torch.stack([v.vectors[layer] for v in vectors])
    flat = orthogonalise(rows, axis[layer].expand_as(rows))

    def cos(m: torch.Tensor) -> torch.Tensor:
        u = m / m.norm(dim=-1, keepdim=True)
        return u @ u.T

    before, after = cos(rows), cos(flat)
    out = [
        f"Pairwise cosines at layer {layer} (the Library heat map's layer), as shipped / with "
        "each vector's axis component removed:",
        "",
    ]

    def cell(i: int, j: int) -> str:
        return "—" if i == j else f"{before[i, j]:+.2f} / {after[i, j]:+.2f}"

    body = [[names[i]] + [cell(i, j) for j in range(len(names))] for i in range(len(names))]
    out += _table(["", *names], body)
    means = []
    for at in COSINE_LAYERS:
        r = torch.stack([v.vectors[at] for v in vectors])
        f = orthogonalise(r, axis[at].expand_as(r))
        means.append([at, f"{mean_abs_cosine(r):.3f}", f"{mean_abs_cosine(f):.3f}"])
    out += ["", "Mean off-diagonal |cos| between the built-ins:", ""]
    out += _table(["layer", "as shipped", "axis component removed"], means)
    return out


def main(argv: list[str] | None = None) -> int:
    from persona_explorer.axis.assistant_axis import project
    from persona_explorer.axis.build import axis_for
    from persona_explorer.engine.model import load_model

    parser = argparse.ArgumentParser(prog="python -m persona_explorer.dev.axis_component")
    parser.add_argument("--only", nargs="*", default=list(STEERED), help="built-ins to steer")
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts (max 12)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = load_settings()
    model = load_model(settings=settings)
    data = axis_for(model, settings.cache_dir)
    axis = data.axis
    vectors = [load(p) for p in builtin_vector_paths(builtin_dir(settings))]
    heat_layer = (2 * model.n_layers) // 3

    lines = [
        "### How much of a persona vector is “not the Assistant”?",
        "",
        f"Measured on {model.display_name} with its shipped Assistant Axis "
        f"(`python -m persona_explorer.dev.axis_component`). cos < 0: the vector points away "
        "from the default Assistant; share = cos², the part of its squared length along the axis.",
        "",
    ]
    comp_rows = []
    for v in vectors:
        own = component_at(v, axis, v.layer if v.layer is not None else heat_layer)
        at_heat = component_at(v, axis, heat_layer)
        comp_rows.append(
            [v.name, own.layer, f"{v.strength:g}", f"{own.cos:+.2f}", f"{own.share:.0%}",
             f"{at_heat.cos:+.2f}", f"{at_heat.share:.0%}"]
        )  # fmt: skip
    lines += _table(
        ["built-in", "layer", "strength", "cos (own layer)", "share", f"cos (layer {heat_layer})",
         "share"], comp_rows,
    )  # fmt: skip
    lines += ["", *cosine_section(vectors, axis, heat_layer), ""]

    chosen = [v for v in vectors if v.name in args.only]
    prompts = read_prompts(HELDOUT_PROMPTS)[: max(1, min(args.prompts, 12))]
    plans: list[RowPlan] = [()]
    setups = []
    for v in chosen:
        layer, strength = int(v.layer), float(v.strength)  # type: ignore[arg-type]
        perp = remove_axis_component(v, axis, layer=layer, axis_model_id=data.model_id)
        ratio = float(perp.vectors[layer].norm() / v.vectors[layer].norm())
        setups.append((v, perp, layer, strength, ratio))
        plans += [
            (Add(layer, v.vectors[layer], strength, "all"),),
            (Add(layer, perp.vectors[layer], strength, "all"),),
            (Add(layer, perp.vectors[layer], strength / ratio, "all"),),
        ]
    print(f"steering {len(chosen)} built-ins x 3 on {len(prompts)} prompts", file=sys.stderr)
    answers = generate_all(model, prompts, plans)
    acts, logprobs = read_back(model, prompts, answers)
    n = len(prompts)
    texts = [model.decode(a) for a in answers]
    axis_unit = _unit(axis[READ_LAYER])
    span = (
        float(project(data.role_vectors.mean(0), axis)[READ_LAYER]),
        float(project(data.default_vector, axis)[READ_LAYER]),
    )
    base_acts = acts[:n]
    base_ppl = math.exp(-sum(logprobs[:n]) / n)
    result_rows = []
    samples = []
    for k, (v, perp, layer, strength, ratio) in enumerate(setups):
        vr, pr = v.vectors[READ_LAYER], perp.vectors[READ_LAYER]
        base = (
            float((base_acts @ _unit(vr)).mean()),
            float((base_acts @ _unit(pr)).mean()),
            float((base_acts @ axis_unit).mean()),
            base_ppl,
        )
        base_axis = (base[2] - span[0]) / (span[1] - span[0])
        base_loop = max(word_repetition(t) for t in texts[:n])
        result_rows.append(
            [v.name, "baseline", "—", "+0.00", "+0.00", f"{base_axis:.2f}", "1.00",
             f"{base_loop:.2f}"]
        )  # fmt: skip
        for j, label in enumerate(VARIANTS):
            lo = n * (1 + 3 * k + j)
            s = scores(
                acts[lo : lo + n], logprobs[lo : lo + n], texts[lo : lo + n], base, vr, pr,
                axis_unit, span,
            )  # fmt: skip
            at = strength if j < 2 else strength / ratio
            result_rows.append(
                [v.name, label, f"L{layer} × {at:.2f}", f"{s.trait:+.2f}", f"{s.trait_perp:+.2f}",
                 f"{s.axis:.2f}", f"{s.coherence:.2f}", f"{s.loop:.2f}"]
            )  # fmt: skip
            samples.append((v.name, label, s.texts[0]))
    lines += [
        f"Steering on {n} held-out prompts, {MAX_NEW_TOKENS} tokens, greedy with frequency "
        f"penalty 1.0, read back by the unsteered model at layer {READ_LAYER}. trait: movement "
        "along the original vector (in its lengths), trait⊥: along the orthogonalised one, axis: "
        "0 = the roles' mean, 1 = the default Assistant. ⊥ same strength adds the original push "
        "minus its axis part; ⊥ norm-matched is scaled up to the original push's length.",
        "",
    ]
    lines += _table(
        ["built-in", "vector", "layer × strength", "trait", "trait⊥", "axis", "coherence",
         "loop"], result_rows,
    )  # fmt: skip
    lines += ["", f"First held-out prompt: “{prompts[0]}”", ""]
    lines += [f"- **{name}, {label}:** {' '.join(t.split())[:220]}" for name, label, t in samples]
    lines += ["", f"({time.perf_counter() - started:.0f} s on this machine.)", ""]
    text = "\n".join(lines)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
