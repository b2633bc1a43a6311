"""Compute the Tour's slow steps and write them to ``assets/tour/`` (small JSON files).

    python -m persona_explorer.dev.tour_build [--steps screen train] [--out assets/tour]

Steps 5 (screening two teaching files with the model's own answers) and 6 (three LoRA runs and
their persona shifts) take minutes on a CPU, longer than a class can wait, so the Tour shows
these files and offers "Run it live". They are made by exactly the code the live button runs
(:mod:`persona_explorer.ui.tour.precomputed`), on the app's own model and built-in vectors (their
recorded layers, read from the vector files), greedy and seeded: the same machine and settings
give the same numbers. Each file records the model, the settings, the date, the app's version
and how long the live run took. Re-run this whenever the model, the built-in vectors, the
decoding defaults or the teaching data change.

Imports: ``core.config``, ``ui.shared.context`` (the app's context: model, catalog, settings)
and ``ui.tour.precomputed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from persona_explorer.core.config import load_settings
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.tour import precomputed

STEPS = ("screen", "train")


def build_step(ctx: AppContext, step: str, out: Path) -> Path:
    """Compute one step (``screen`` or ``train``) and write its file; returns the path."""
    limits = ctx.settings.limits

    def report(fraction: float, message: str) -> None:
        print(f"  {100 * fraction:5.1f} %  {message}", file=sys.stderr, flush=True)

    def builtin(name: str) -> Any:  # a PersonaVector, or None
        from persona_explorer.core.errors import InputError

        try:
            return ctx.catalog.view(None).resolve_fitting(f"builtin:{name}")[1]
        except InputError:
            return None

    if step == "screen":
        vec = builtin(precomputed.SCREEN_VECTOR)
        layer = ctx.default_layer(vec) if vec is not None else 0
        result, seconds = precomputed.timed(
            lambda: precomputed.screen_pair(
                ctx.model,
                vec,
                layer,
                max_prompt_tokens=limits.max_prompt_tokens,
                cache_dir=None,  # no cache: the recorded time is that of a first live run
                progress=report,
            )
        )
    elif step == "train":
        vec = builtin(precomputed.SHIFT_VECTOR)
        result, seconds = precomputed.timed(
            lambda: precomputed.train_and_shift(
                ctx.model, vec, max_prompt_tokens=limits.max_prompt_tokens, progress=report
            )
        )
    else:
        raise SystemExit(f"unknown step {step!r}: use {', '.join(STEPS)}")
    if result is None:
        raise SystemExit(f"{step}: stopped before it finished")
    return precomputed.save_result(precomputed.record(step, ctx.model, result, seconds), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--out", type=Path, default=precomputed.TOUR_DIR)
    args = parser.parse_args(argv)
    ctx = AppContext.create(load_settings(argv=[]))
    for step in args.steps:
        print(f"{step}…", file=sys.stderr, flush=True)
        path = build_step(ctx, step, args.out)
        data = precomputed.load_result(step, args.out)
        took = data["seconds"] if data else "?"
        print(f"{step}: wrote {path} ({took} s live)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
