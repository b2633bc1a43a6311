"""How fast dataset screening runs: samples per second on the embedded model.

Screens the teaching dataset (``assets/datasets/*.jsonl``, 68 short chat samples) with the
shipped ``evil`` vector and prints numbers from this one run:

1. teacher-forced only (``own=False``: raw projections), reading one layer (the blocks after it
   are skipped) and, for reference, reading every layer; best of ``--repeat`` interleaved runs.
   Target: >= 20 samples/s on 2 cores.
2. with generation: the model's own greedy answers generated (cache off) and read too.

The load average is printed with the results: the machines this runs on are shared, and a busy
one makes every number smaller.

    python bench/bench_screening.py [--layer 14] [--repeat 3] [--gen-samples 16]
        [--max-new-tokens 64] [--batch-size 16] [--json]
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

from persona_explorer.engine.model import LoadedModel, load_model
from persona_explorer.personas.builtin import builtin_dir
from persona_explorer.steering.forced import ForcedRow, forced_pass
from persona_explorer.training.samples import Sample, read_samples
from persona_explorer.training.screening import ScreenConfig, screen
from persona_explorer.vectors.files import load

DATASETS = Path(__file__).resolve().parent.parent / "assets" / "datasets"
# The screening teaching set (68 samples); the larger fine-tuning pair beside it is not screened
# here, so the figure stays comparable between runs.
SCREENING_FILES = (
    "evil",
    "helpful",
    "honest_feedback",
    "insecure_code_requested",
    "insecure_code_unprompted",
    "sycophantic",
)
TARGET_FORCED = 20.0  # samples/s teacher-forced on 2 cores (issue 11)


def teaching_samples() -> list[Sample]:
    samples: list[Sample] = []
    for name in SCREENING_FILES:
        path = DATASETS / f"{name}.jsonl"
        samples += [s for s in read_samples(path) if isinstance(s, Sample)]
    return samples


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def forced_rate(
    model: LoadedModel, samples: list[Sample], layer: int, batch: int, repeat: int
) -> tuple[float, float, float]:
    """(samples/s through screen() reading one layer, samples/s reading every layer, tokens
    per sample): the best of ``repeat`` interleaved runs, so a neighbour's burst of work on a
    shared machine does not decide which of the two looks faster."""
    vec = load(builtin_dir() / "evil.safetensors")
    cfg = ScreenConfig(layer=layer, own=False, batch_size=batch)
    screen(model, samples[:batch], [vec], cfg)  # warm-up: decoder built, kernels loaded
    rows = [
        ForcedRow(tuple(ids + resp), len(ids), len(ids) + len(resp))
        for s in samples
        for ids, resp in [
            (
                model.chat_ids(list(s.prompt), s.system),
                model.tokenizer(s.response, add_special_tokens=False).input_ids,
            )
        ]
    ]
    rows.sort(key=lambda r: len(r.ids))
    one_layer = all_layers = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        screen(model, samples, [vec], cfg)
        one_layer = max(one_layer, _rate(len(samples), time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            forced_pass(model, rows[i : i + batch])
        all_layers = max(all_layers, _rate(len(rows), time.perf_counter() - started))
    tokens = sum(len(r.ids) for r in rows) / len(rows)
    return one_layer, all_layers, tokens


def generation_rate(
    model: LoadedModel, samples: list[Sample], layer: int, batch: int, max_new_tokens: int
) -> float:
    vec = load(builtin_dir() / "evil.safetensors")
    # No cache passed: every own answer is generated.
    cfg = ScreenConfig(layer=layer, own=True, max_new_tokens=max_new_tokens, batch_size=batch)
    started = time.perf_counter()
    result = screen(model, samples, [vec], cfg)
    return _rate(len(result.rows), time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gen-samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    model = load_model(device="cpu")
    samples = teaching_samples()
    one_layer, all_layers, tokens = forced_rate(
        model, samples, args.layer, args.batch_size, args.repeat
    )
    gen_samples = samples[:: max(1, len(samples) // args.gen_samples)][: args.gen_samples]
    with_gen = generation_rate(model, gen_samples, args.layer, args.batch_size, args.max_new_tokens)
    out = {
        "samples": len(samples),
        "tokens_per_sample": round(tokens, 1),
        "layer": args.layer,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "teacher_forced_samples_per_s": round(one_layer, 2),
        "teacher_forced_all_layers_samples_per_s": round(all_layers, 2),
        "target_teacher_forced_samples_per_s": TARGET_FORCED,
        "meets_target": one_layer >= TARGET_FORCED,
        "with_generation_samples_per_s": round(with_gen, 3),
        "generation_samples": len(gen_samples),
        "max_new_tokens": args.max_new_tokens,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    verdict = "meets" if out["meets_target"] else "below"
    print(
        f"Screening on {model.display_name}, {out['threads']} threads, "
        f"load average {out['load_average_1min']}"
    )
    print(
        f"  teacher-forced, layer {args.layer}: {one_layer:6.2f} samples/s "
        f"({tokens:.0f} tokens per sample; target >= {TARGET_FORCED:g}: {verdict})"
    )
    print(f"  teacher-forced, every layer: {all_layers:6.2f} samples/s")
    print(
        f"  with generation ({args.max_new_tokens} new tokens, {len(gen_samples)} samples): "
        f"{with_gen:6.3f} samples/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
