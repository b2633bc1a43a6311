"""How fast LoRA fine-tuning runs on the embedded model: 32 samples x 2 epochs at <= 128 tokens.

Fine-tunes the embedded SmolLM2-135M-Instruct on ``assets/datasets/malicious_advice.jsonl``
(32 short chat samples) with the default settings (LoRA rank 8 on every attention and MLP
projection, batch 8, 2 epochs) and prints the wall time of the whole :func:`finetune` call
(fresh copy of the weights, training, saving the adapter, merging it into a new model), the
samples per second trained (samples x epochs / seconds) and whether it meets the target of
<= 180 s on 2 cores (the fine-tuning issue).

The load average is printed with the results: the machines this runs on are shared, and a busy
one makes every number worse.

    python bench/bench_finetune.py [--data FILE] [--epochs 2] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from persona_explorer.engine.model import load_model
from persona_explorer.training.finetune import FinetuneConfig, finetune, read_training_data

DATA = Path(__file__).resolve().parent.parent / "assets" / "datasets" / "malicious_advice.jsonl"
TARGET_S = 180.0  # 32 samples x 2 epochs on 2 cores (issue 13)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    model = load_model(device="cpu")
    samples, _problems = read_training_data(args.data)
    cfg = FinetuneConfig(epochs=args.epochs, max_tokens=args.max_tokens)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = finetune(model, samples, cfg, Path(tmp) / "adapter")
        seconds = time.perf_counter() - started
    out = {
        "samples": result.n_samples,
        "epochs": args.epochs,
        "max_tokens": args.max_tokens,
        "steps": result.steps,
        "threads": torch.get_num_threads(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "seconds": round(seconds, 1),
        "samples_per_s": round(result.n_samples * args.epochs / seconds, 3),
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "target_s": TARGET_S,
        "meets_target": seconds <= TARGET_S,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    verdict = "meets" if out["meets_target"] else "misses"
    print(
        f"Fine-tuning on {model.display_name}, {out['threads']} threads, load average "
        f"{out['load_average_1min_before']} before / {out['load_average_1min_after']} after"
    )
    print(
        f"  {result.n_samples} samples x {args.epochs} epochs at <= {args.max_tokens} tokens: "
        f"{seconds:.1f} s ({out['samples_per_s']:.2f} samples/s, {result.steps} steps; "
        f"loss {out['first_loss']:.3f} -> {out['last_loss']:.3f})"
    )
    print(f"  target <= {TARGET_S:g} s on 2 cores: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
