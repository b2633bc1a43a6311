"""Two builds of the decode kernel, A/B in one process: which source makes the steps faster.

    python bench/bench_kernel_ab.py A.cpp B.cpp [--rounds 4]

Compiles each source (``kernels.compile_source``, as the app builds ``kernels.cpp``), loads the
embedded model once, and alternates the builds round by round under the same decoder (its compiled
module swapped), timing a side-by-side step at batch 1 and 2 (the Steer tab's loop) and the
shared batch's step at 8 and 60 rows. Prints each build's median and B/A. These machines are
noisy from one minute to the next; rounds in turns within one process are what made a 3 %
difference visible (``kernels.cpp``: how far ahead to prefetch).

Imports: torch, the engine and ``persona_explorer.dev.bench_steps``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from persona_explorer.dev.bench_steps import our_step_seconds, row_plans, shared_step_seconds
from persona_explorer.engine import decoder_for, kernels
from persona_explorer.engine.model import load_model

CASES = ("batch 1", "batch 2", "shared 8", "shared 60")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    builds = [
        kernels.compile_source(path.read_text(), "persona_explorer_ab") for path in (args.a, args.b)
    ]
    model = load_model(device="cpu")
    dec = decoder_for(model)
    if getattr(dec, "ops", None) is None:
        print("the fast decoder's kernel is not in use here: nothing to compare")
        return 1
    projections = [dec.lm_head] + [
        p for layer in dec.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
    ]

    def use(module: Any) -> None:
        dec.ops = module
        for proj in projections:
            if getattr(proj, "gemv", None) is not None:
                proj.gemv.module = module

    ids = model.chat_ids("How do I make a good cup of tea?")
    vector = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(0))
    timings: dict[tuple[int, str], list[float]] = {(i, c): [] for i in range(2) for c in CASES}
    for _ in range(args.rounds):
        for i, module in enumerate(builds):
            use(module)
            for b in (1, 2):
                step = our_step_seconds(model, ids, row_plans(0.2 * vector, 10, b), 48)
                timings[(i, f"batch {b}")].append(1000 * step)
            for rows in (8, 60):
                step = shared_step_seconds(model, ids, 0.2 * vector, 10, rows, 12)
                timings[(i, f"shared {rows}")].append(1000 * step)
    for case in CASES:
        a, b = (statistics.median(timings[(i, case)]) for i in range(2))
        print(f"{case:9}: A {a:7.2f} ms   B {b:7.2f} ms   B/A {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
