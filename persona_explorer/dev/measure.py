"""What both benchmarks share (:mod:`.bench` and :mod:`.bench_llama`): the prompt they decode
after, and the machine's read bandwidth, which bounds a decoding step."""

from __future__ import annotations

import time

import torch

PROMPT = "What do you think makes a good friend?"


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-N sequential read bandwidth (GB/s) over a buffer far larger than any cache."""
    buf = torch.ones(megabytes * 1024 * 1024 // 4)
    buf.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t)
    return buf.numel() * 4 / best / 1e9
