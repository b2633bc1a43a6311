"""The quantized blocks of the embedded GGUF, kept beside its dequantized weights.

transformers dequantizes the GGUF into the fp32 weights every part of the app uses. A decoding
step reads every matrix once, so the engine decodes from the blocks themselves (92 MiB instead of
540 MB; :mod:`.engine.compact` checks they give exactly the same numbers). This module reads them
once, with the ``gguf`` package, under their HF names, with the q/k rows in HF's order
(transformers reverses llama.cpp's rotary row permutation; blocks run along a row, so the same
row permutation applies), and stores them as ``blocks.safetensors`` in the model's cache folder:
parsing the GGUF's metadata (its 49k-token vocabulary) takes seconds, loading the safetensors
file takes milliseconds.

Imports: numpy, torch; ``gguf`` and safetensors inside the functions; ``core.fileio``, and
:mod:`.kernels` for the block sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_explorer.core.fileio import atomic_write
from persona_explorer.engine.kernels import BLOCK, BLOCK_BYTES, WeightFormat

__all__ = [
    "BLOCK_FILE",
    "QuantizedWeight",
    "load_blocks",
    "read_gguf_blocks",
    "save_blocks",
    "with_tied_head",
]

BLOCK_FILE = "blocks.safetensors"
# The GGUF block kinds the kernel reads, with their bytes per block of BLOCK weights: one table,
# the kernel's (a test checks it against gguf's own GGML_QUANT_SIZES).
KINDS = {kind: BLOCK_BYTES[WeightFormat[kind]] for kind in ("Q4_1", "Q8_0")}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight matrix [out, in] as GGUF blocks: ``data`` uint8 [out, in / 32 * bytes per block]."""

    data: torch.Tensor
    kind: str  # "Q4_1" or "Q8_0"

    @property
    def in_features(self) -> int:
        return int(self.data.shape[1]) // KINDS[self.kind] * BLOCK


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _unpermute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """transformers' reverse of llama.cpp's q/k row permutation, on whole rows."""
    n, width = rows.shape
    return rows.reshape(heads, n // heads // 2, 2, width).swapaxes(1, 2).reshape(n, width)


def read_gguf_blocks(path: Path, config: Any) -> dict[str, QuantizedWeight]:
    """The Q4_1/Q8_0 matrices of a Llama-family GGUF by HF weight name (others are skipped)."""
    import gguf

    reader = gguf.GGUFReader(path)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    out: dict[str, QuantizedWeight] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        name = _hf_name(tensor.name)
        if kind not in KINDS or name is None:
            continue
        rows = np.asarray(tensor.data, dtype=np.uint8)
        if ".attn_q." in tensor.name:
            rows = _unpermute_rows(rows, heads)
        elif ".attn_k." in tensor.name:
            rows = _unpermute_rows(rows, kv_heads)
        out[name] = QuantizedWeight(torch.from_numpy(np.array(rows, copy=True)), kind)
    return out


def save_blocks(folder: Path, blocks: Mapping[str, QuantizedWeight]) -> None:
    from safetensors.torch import save_file

    tensors = {name: q.data.contiguous() for name, q in blocks.items()}
    kinds = {name: q.kind for name, q in blocks.items()}
    atomic_write(folder / BLOCK_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=kinds))


def load_blocks(folder: Path, tied_embeddings: bool) -> dict[str, QuantizedWeight]:
    """The blocks saved in ``folder`` (empty if none); a tied LM head shares the embedding's."""
    from safetensors import safe_open

    path = folder / BLOCK_FILE
    if not path.is_file():
        return {}
    out: dict[str, QuantizedWeight] = {}
    with safe_open(str(path), framework="pt") as f:
        kinds = f.metadata() or {}
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            kind = kinds.get(name)
            data = f.get_tensor(name)
            whole_blocks = data.dim() == 2 and data.shape[1] % KINDS.get(kind or "", 1) == 0
            if kind in KINDS and data.dtype == torch.uint8 and whole_blocks:
                out[name] = QuantizedWeight(data, kind)
    return with_tied_head(out, tied_embeddings)


def with_tied_head(
    blocks: dict[str, QuantizedWeight], tied_embeddings: bool
) -> dict[str, QuantizedWeight]:
    """A tied LM head reads the embedding's blocks (GGUF stores them once)."""
    embed = blocks.get("model.embed_tokens.weight")
    if tied_embeddings and embed is not None and "lm_head.weight" not in blocks:
        blocks["lm_head.weight"] = embed
    return blocks
