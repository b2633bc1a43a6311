"""How fast a layer x strength sweep runs: cells per second on the embedded model.

Sweeps the shipped ``pirate`` vector over ``--layers`` x ``--strengths`` on the first
``--prompts`` shipped selection prompts (``assets/sweep/select_prompts.txt``), with no checkpoint,
and prints from this one run: cells per second, answers per second, and the share of the time
spent reading the answers back (the unsteered teacher-forced pass with log-probabilities),
measured by timing that pass again on the same answers.

The load average is printed with the results: the machines this runs on are shared.

    python bench/bench_sweep.py [--prompts 4] [--layers 14,18,22] [--strengths 0,1.5,3,6]
        [--max-new-tokens 32] [--batch-size 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from persona_explorer.engine.model import load_model
from persona_explorer.evaluate.sweep import run_sweep
from persona_explorer.evaluate.sweep_config import (
    SELECT_PROMPTS,
    SweepConfig,
    parse_numbers,
    read_prompts,
)
from persona_explorer.personas.builtin import builtin_dir
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.vectors.files import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--layers", default="14,18,22")
    parser.add_argument("--strengths", default="0,1.5,3,6")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    model = load_model(device="cpu")
    vec = load(builtin_dir() / "pirate.safetensors")
    prompts = read_prompts(SELECT_PROMPTS)[: args.prompts]
    cfg = SweepConfig(
        layers=tuple(int(x) for x in parse_numbers(args.layers, "--layers", integer=True)),
        strengths=parse_numbers(args.strengths, "--strengths"),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    run_sweep(
        model, vec, prompts[:1], SweepConfig(layers=(14,), strengths=(1.0,), max_new_tokens=4)
    )
    started = time.perf_counter()
    result = run_sweep(model, vec, prompts, cfg)
    seconds = time.perf_counter() - started

    # The read-back alone, on the same answers and batches.
    ids = [model.chat_ids(p) for p in prompts]
    tokenizer = model.tokenizer
    rows = [
        ForcedRow(tuple(ids[i]) + tuple(t), len(ids[i]), len(ids[i]) + len(t))
        for c in [result.baseline, *[c for c in result.grid if c.strength != 0]]
        for i, text in enumerate(c.texts)
        for t in [tokenizer(text, add_special_tokens=False).input_ids]
    ]
    rows.sort(key=lambda r: len(r.ids))
    started = time.perf_counter()
    for i in range(0, len(rows), args.batch_size):
        forced_pass(model, rows[i : i + args.batch_size], logprobs=True)
    read_seconds = time.perf_counter() - started

    cells = len(result.grid)
    out = {
        "prompts": len(prompts),
        "layers": list(cfg.layers),
        "strengths": list(cfg.strengths),
        "cells": cells,
        "answers": result.rows_total,
        "max_new_tokens": cfg.max_new_tokens,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "seconds": round(seconds, 2),
        "cells_per_s": round(cells / seconds, 3),
        "answers_per_s": round(result.rows_total / seconds, 3),
        "read_back_share": round(read_seconds / seconds, 3),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"Sweep on {model.display_name}, {out['threads']} threads, "
        f"load average {out['load_average_1min']}"
    )
    print(
        f"  {cells} cells ({len(cfg.layers)} layers x {len(cfg.strengths)} strengths) x "
        f"{len(prompts)} prompts, {cfg.max_new_tokens} new tokens: {seconds:.1f} s"
    )
    print(
        f"  {out['cells_per_s']:.3f} cells/s, {out['answers_per_s']:.2f} answers/s; reading the "
        f"answers back is {out['read_back_share']:.0%} of the time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
