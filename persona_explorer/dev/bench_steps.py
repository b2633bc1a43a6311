"""Our decoding step, timed as the app runs it, for the comparison with llama.cpp
(:mod:`.bench_llama`): one request's side-by-side batch through ``generate_stream`` (the Steer
tab's loop), or a class's visitors stepped together as the shared batch does.

Imports: torch, the engine and ``steering``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.generation import SamplingConfig, generate_stream
from persona_explorer.steering.ops import RowPlan, add_plan

__all__ = ["our_step_seconds", "row_plans", "shared_step_seconds"]


def row_plans(vector: torch.Tensor, layer: int, batch: int) -> list[RowPlan]:
    """What the Steer tab runs: batch 1 a steered row; more rows: the baseline, then steered
    rows at growing strengths (Compare shows up to three beside the baseline)."""
    if batch == 1:
        return [add_plan(vector, [layer], 2.0)]
    return [()] + [add_plan(vector, [layer], 2.0 * 2**i) for i in range(batch - 1)]


def our_step_seconds(
    model: LoadedModel, ids: Sequence[int], plans: Sequence[RowPlan], tokens: int
) -> float:
    """Mean time of one decoding step of the side-by-side batch, between the streamed updates
    after step 1 and after step ``tokens - 1``: the prompt pass and the final bookkeeping (the
    per-token capture stacked into one tensor) fall outside."""
    if tokens < 3:
        raise ValueError("timing decoding steps needs at least 3 new tokens")
    cfg = SamplingConfig(max_new_tokens=tokens, stop_at_eos=False)
    stamps: dict[int, float] = {}
    for update in generate_stream(model, [ids] * len(plans), plans, cfg, keep_tokens=True):
        if not update.done:
            stamps[update.step] = time.perf_counter()
    first, last = 1, tokens - 1
    return (stamps[last] - stamps[first]) / (last - first)


def shared_step_seconds(
    model: LoadedModel, ids: Sequence[int], vector: torch.Tensor, layer: int, rows: int, tokens: int
) -> float:
    """Mean time of one shared decoding step over ``rows`` rows: ``rows // 2`` visitors'
    side-by-side runs (baseline and steered), each choosing its tokens, steering and capturing,
    as the shared batch's engine thread runs them (``steering.shared_batch``)."""
    from persona_explorer.steering.generation import GenerationRun
    from persona_explorer.steering.shared_batch import step_together

    if rows < 2 or rows % 2:
        raise ValueError("the shared batch is timed with whole side-by-side runs (even rows)")
    cfg = SamplingConfig(max_new_tokens=tokens, stop_at_eos=False)
    runs = [
        GenerationRun(model, [ids, ids], row_plans(vector, layer, 2), cfg, True, None, True, None)
        for _ in range(rows // 2)
    ]
    try:
        with torch.inference_mode():
            for run in runs:
                while not run.prompt_done:
                    run.prefill_next()
            stamps = []
            for _ in range(tokens):
                step_together(runs)
                stamps.append(time.perf_counter())
    finally:
        for run in runs:
            run.close()
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
