"""Benchmarks: ratios measured in one run (these machines are noisy; absolute times drift).

1. Side-by-side steered generation (baseline + steered, 64 new tokens each, one batched pass)
   against the persona_vectors way: HF ``generate`` with a forward hook, baseline then steered.
   Target: >= 2.5x the tokens per second.
2. Decoding step time against the memory-bandwidth bound: weight bytes read per step divided by
   the read bandwidth measured here. Target: >= 50 % of the bound.
3. Extraction of a 5-pair x 20-question trait at 64 new tokens (200 rollouts). Target: <= 90 s on
   2 cores; and the speed-up over unbatched extraction (batch size 1, timed on a subset and
   scaled per rollout, said so in the output).
4. The side-by-side decode against llama.cpp's ``llama-batched-bench`` on the same GGUF (embedded
   model only; skipped, saying why, when the binary is not built): ``--rounds`` alternating
   rounds at batches 1, 2, 8 and 32, the median step-time ratio at batch 2 (:mod:`.bench_llama`).
   Target: >= 1.0x (llama.cpp's step time / ours), aim 1.5x.

``python -m persona_explorer bench [--json] [--quick] [--rounds N]``; ``--quick`` shrinks every
workload (not the number of rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from persona_explorer.core.config import load_settings
from persona_explorer.dev import bench_llama
from persona_explorer.dev.measure import PROMPT, read_bandwidth_gbs
from persona_explorer.engine import decoder_for
from persona_explorer.engine.model import LoadedModel, hf_source, load_model
from persona_explorer.personas.data import load_builtin
from persona_explorer.personas.definitions import PersonaDefinition
from persona_explorer.personas.extract import ExtractionConfig, extract_persona
from persona_explorer.steering.generation import SamplingConfig, generate, left_pad
from persona_explorer.steering.ops import add_plan


def weight_bytes_per_step(model: LoadedModel) -> int:
    """Bytes of weights a decoding step must read: every matrix once (the input embedding table
    is only gathered, but a tied LM head reads all of it), in the form the decoder reads them
    (the GGUF blocks or 16-bit copies of :mod:`.engine.compact` where it has them)."""
    compact = getattr(decoder_for(model), "step_weight_bytes", 0)
    if compact:
        return int(compact)
    total = 0
    for name, t in model.weights.items():
        if t.dim() == 2 and "embed_tokens" not in name:
            total += t.numel() * t.element_size()
    if "lm_head.weight" not in model.weights:
        emb = model.weights["model.embed_tokens.weight"]
        total += emb.numel() * emb.element_size()
    return total


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_side_by_side(model: LoadedModel, vector: torch.Tensor, layer: int, tokens: int) -> dict:
    """Ours: one batched pass (baseline + steered). Theirs: HF generate + forward hook, twice."""
    from transformers import AutoModelForCausalLM

    ids = model.chat_ids(PROMPT)
    cfg = SamplingConfig(max_new_tokens=tokens, stop_at_eos=False)
    plans = [(), add_plan(vector, [layer], 2.0)]
    generate(model, [ids, ids], plans, SamplingConfig(max_new_tokens=4))  # warm-up
    ours = _timed(lambda: generate(model, [ids, ids], plans, cfg))

    # The persona_vectors way, on a plain (unbridged) HF model as their code uses it.
    source, local_only = hf_source(model.model_id, cache_dir=load_settings().cache_dir)
    hf = AutoModelForCausalLM.from_pretrained(
        source, dtype=model.dtype, local_files_only=local_only
    ).eval()
    x = torch.tensor([ids])
    delta = (2.0 * vector[layer]).to(model.dtype)

    def hook(_m: Any, _i: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] + delta, *out[1:])
        return out + delta

    def theirs_once(steered: bool) -> None:
        handle = hf.model.layers[layer].register_forward_hook(hook) if steered else None
        try:
            with torch.inference_mode():
                hf.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    do_sample=False,
                    pad_token_id=model.pad_token_id,
                )
        finally:
            if handle is not None:
                handle.remove()

    theirs_once(False)  # warm-up
    theirs = _timed(lambda: (theirs_once(False), theirs_once(True)))
    n = 2 * tokens
    return {
        "new_tokens": n,
        "ours_seconds": round(ours, 3),
        "theirs_seconds": round(theirs, 3),
        "ours_tokens_per_second": round(n / ours, 2),
        "theirs_tokens_per_second": round(n / theirs, 2),
        "speedup": round(theirs / ours, 2),
        "target": 2.5,
        "decoder": decoder_for(model).name,
    }


def bench_decode_step(model: LoadedModel, steps: int) -> dict:
    """Mean decoding-step time at batch 1 and 2 against weight bytes / read bandwidth."""
    out: dict[str, Any] = {}
    bandwidth = read_bandwidth_gbs()
    nbytes = weight_bytes_per_step(model)
    bound_ms = nbytes / (bandwidth * 1e9) * 1e3
    dec = decoder_for(model)
    for batch in (1, 2):
        ids, mask = left_pad([model.chat_ids(PROMPT)] * batch, model.pad_token_id)
        session = dec.session(ids, mask, steps + 4)
        with torch.inference_mode():
            logits = session.prefill()
            tok = logits.argmax(-1)
            for _ in range(3):
                tok = session.step(tok).argmax(-1)
            t = time.perf_counter()
            for _ in range(steps):
                tok = session.step(tok).argmax(-1)
            ms = (time.perf_counter() - t) / steps * 1e3
        session.close()
        out[f"batch{batch}_step_ms"] = round(ms, 2)
        out[f"batch{batch}_fraction_of_bound"] = round(bound_ms / ms, 3)
    out.update(
        weight_megabytes=round(nbytes / 1e6, 1),
        read_bandwidth_gbs=round(bandwidth, 2),
        bound_ms=round(bound_ms, 2),
        target_fraction=0.5,
        decoder=dec.name,
        kernel=getattr(dec, "kernel", None),
    )
    return out


def bench_extraction(model: LoadedModel, persona: PersonaDefinition, quick: bool) -> dict:
    n_q = 4 if quick else 20
    tokens = 16 if quick else 64
    cfg = ExtractionConfig(n_questions=n_q, max_new_tokens=tokens, seed=0, batch_size=64)
    res = extract_persona(model, persona, cfg)
    rows = len(res.rollouts)
    # Unbatched: the same work at batch size 1, on a subset (the full run would take minutes).
    subset = PersonaDefinition(
        name=persona.name,
        kind=persona.kind,
        pairs=persona.pairs[:1],
        questions=persona.questions[:2],
        source=persona.source,
    )
    one = ExtractionConfig(n_questions=2, max_new_tokens=tokens, seed=0, batch_size=1)
    single = extract_persona(model, subset, one)
    per_rollout_single = single.seconds / len(single.rollouts)
    return {
        "pairs": len(persona.pairs),
        "questions": n_q,
        "rollouts": rows,
        "max_new_tokens": tokens,
        "seconds": round(res.seconds, 2),
        "target_seconds": 90 if not quick else None,
        "unbatched_seconds_per_rollout": round(per_rollout_single, 3),
        "unbatched_rollouts_timed": len(single.rollouts),
        "batched_seconds_per_rollout": round(res.seconds / rows, 3),
        "speedup_over_unbatched": round(per_rollout_single / (res.seconds / rows), 2),
    }


def run(quick: bool = False, model: LoadedModel | None = None, rounds: int = 3) -> dict:
    model = model or load_model(settings=load_settings())
    torch.manual_seed(0)
    persona = load_builtin("evil")
    tokens = 16 if quick else 64
    report: dict[str, Any] = {
        "model": model.model_id,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "quick": quick,
    }
    layer = model.n_layers // 2
    vector = torch.randn(model.n_layers, model.d_model) * 2.0
    report["side_by_side"] = bench_side_by_side(model, vector, layer, tokens)
    report["decode_step"] = bench_decode_step(model, 8 if quick else 32)
    report["llama_cpp"] = bench_llama.compare(
        model,
        model.chat_ids(PROMPT),
        vector,
        layer,
        rounds=rounds,
        tokens=tokens,
        read_bandwidth_gbs=report["decode_step"]["read_bandwidth_gbs"],
    )
    report["extraction"] = bench_extraction(model, persona, quick)
    # Shared machines: a busy one slows every number, so the report says how busy it was.
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return report


def format_report(r: dict) -> str:
    s, d, e = r["side_by_side"], r["decode_step"], r["extraction"]
    lines = [
        f"model {r['model']} on {r['device']} ({r['dtype']}, {r['threads']} threads)",
        f"side by side ({s['new_tokens']} tokens): ours {s['ours_tokens_per_second']} tok/s, "
        f"persona_vectors way {s['theirs_tokens_per_second']} tok/s -> {s['speedup']}x "
        f"(target >= {s['target']}x)",
        f"decode step: bound {d['bound_ms']} ms ({d['weight_megabytes']} MB at "
        f"{d['read_bandwidth_gbs']} GB/s); batch 1 {d['batch1_step_ms']} ms = "
        f"{d['batch1_fraction_of_bound']:.0%} of bound, batch 2 {d['batch2_step_ms']} ms = "
        f"{d['batch2_fraction_of_bound']:.0%} (target >= 50%)",
        *bench_llama.format_comparison(r["llama_cpp"]),
        f"extraction: {e['rollouts']} rollouts x {e['max_new_tokens']} tokens in {e['seconds']} s"
        + (f" (target <= {e['target_seconds']} s)" if e["target_seconds"] else "")
        + f"; {e['speedup_over_unbatched']}x faster per rollout than unbatched "
        f"({e['unbatched_seconds_per_rollout']} s/rollout over {e['unbatched_rollouts_timed']})",
        f"load average {r['load_average']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona_explorer bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds against llama.cpp (default 3)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    model = load_model(args.model, device=args.device, settings=load_settings())
    report = run(quick=args.quick, model=model, rounds=args.rounds)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
