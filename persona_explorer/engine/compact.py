"""The weights a decoding step reads, in the fewest bytes that give exactly the same numbers.

A decoding step at batch 1-4 reads every weight once, so its time is the weights' bytes over the
memory bandwidth. The model's fp32 weights (what the bridge and every prompt-length GEMM use)
stay as they are; beside them the decoder keeps, for each matrix, a compact copy from which the
kernel (:mod:`.kernels`) rebuilds the *same* fp32 values in registers:

* **GGUF blocks** (the embedded model): the Q4_1 and Q8_0 blocks of the file the weights were
  dequantized from (:mod:`persona_explorer.engine.gguf_blocks` reads and stores them under HF
  names).
  Repacked for the kernel (every scale widened to fp32, exactly): 112 MB instead of 538 MB.
* **bf16 / fp16** (an HF checkpoint stored in half width and loaded in fp32): the weights are
  exactly representable in 16 bits, so the 16-bit copy holds the same numbers at half the bytes.
  The copies add half the fp32 weights' memory, so they are made only while they fit in half of
  the memory free when the decoder is built.
* **fp32** otherwise (a fine-tuned model's merged weights, random test models): the weights
  themselves, no copy.

Every compact copy is checked against the fp32 weights before use: the kernel's own decode of it
must equal them bit for bit (the products then differ from fp32 ones only in the order of
summation). A copy that does not match is dropped, with a log line, and the fp32 weights serve.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from persona_explorer.engine.kernels import Matrix, WeightFormat, dequantize, plain, repack

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["compact_matrices", "gguf_blocks"]


def gguf_blocks(model: LoadedModel) -> dict[str, Matrix]:
    """The model's GGUF blocks (:attr:`LoadedModel.quantized`) as kernel matrices."""
    mats: dict[int, Matrix] = {}  # a tied head shares the embedding's repacked copy
    for q in model.quantized.values():
        if id(q) not in mats:
            mats[id(q)] = repack(Matrix(q.data, WeightFormat[q.kind], q.in_features))
    return {name: mats[id(q)] for name, q in model.quantized.items()}


def _half_copy(weight: torch.Tensor) -> Matrix | None:
    """A 16-bit copy holding exactly ``weight``'s values, if there is one."""
    bits = weight.view(torch.int32)
    if not bool((bits & 0xFFFF).any()):
        return Matrix(
            weight.to(torch.bfloat16).view(torch.int16), WeightFormat.BF16, weight.shape[1]
        )
    half = weight.to(torch.float16)
    if torch.equal(half.float(), weight):
        return Matrix(half.view(torch.int16), WeightFormat.F16, weight.shape[1])
    return None


def available_memory() -> int | None:
    """Bytes of physical memory free now (None where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def compact_matrices(
    module: Any,
    weights: Mapping[str, torch.Tensor],
    names: list[str],
    blocks: Mapping[str, Matrix],
    free_bytes: int | None = None,
) -> dict[str, Matrix]:
    """For each name, the compact copy that decodes to exactly ``weights[name]``, else fp32.

    16-bit copies sit beside the fp32 weights (the bridge and prompt passes read those), so they
    are made only while they would take at most half of ``free_bytes`` (default: the memory free
    now): a big fp32 model on a small machine decodes from fp32 rather than swapping.
    """
    out: dict[str, Matrix] = {}
    dropped = []
    budget = (free_bytes if free_bytes is not None else available_memory() or 0) // 2
    for name in names:
        weight = weights[name]
        candidate = blocks.get(name)
        fits = weight.numel() * 2 <= budget
        if candidate is None and fits and weight.dim() == 2 and weight.is_contiguous():
            candidate = _half_copy(weight)
            if candidate is not None:
                budget -= candidate.nbytes
        if candidate is not None and (
            candidate.out_features != weight.shape[0]
            or candidate.in_features != weight.shape[1]
            or not torch.equal(dequantize(module, candidate), weight)
        ):
            dropped.append(name)
            candidate = None
        out[name] = candidate if candidate is not None else plain(weight)
    if dropped:
        log.warning(
            "%d compact weight copies did not match the model's weights and are not used "
            "(first: %s); decoding reads fp32 for those",
            len(dropped),
            dropped[0],
        )
    return out
