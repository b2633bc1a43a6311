"""Who a loaded model is: its identity and a fingerprint of its weights, for keying stored work.

What a forward pass computes depends on the model id, its architecture and shape, the tokenizer
and the weights; anything stored from one (a replay's span means, a sweep's checkpoint) is keyed
by these so that it is never served to another model, or to a fine-tune under the same id.

* :func:`model_identity` — the model as the tokens and layers see it, independent of the dtype.
* :func:`weights_digest` — a cheap fingerprint of the weights (exact, or at bfloat16 resolution).

Imports: torch, the standard library, and :mod:`.model` (types only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

__all__ = ["model_identity", "weights_digest"]

# Values sampled per weight tensor for the fingerprint: spread over the whole tensor, so a
# fine-tune (full or a merged low-rank update, which touches every entry) changes it.
_SAMPLES_PER_TENSOR = 64


def model_identity(model: LoadedModel) -> dict[str, Any]:
    """What fixes the tokens and the layers a forward pass reads, independent of the dtype: the
    model id, architecture, shape, context length, the tokenizer (vocabulary size and template)
    and a coarse fingerprint of the weights (:func:`weights_digest` at bfloat16 resolution, so
    the same weights loaded in float32 or bfloat16 agree, and a fine-tune under the same id does
    not)."""
    tok = model.tokenizer
    template = getattr(tok, "chat_template", None)
    text = f"{len(tok)}\n{template if isinstance(template, str) else ''}"
    return {
        "model_id": model.model_id,
        "architecture": model.architecture,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "context_length": model.context_length,
        "tokenizer": hashlib.sha256(text.encode()).hexdigest()[:16],
        "weights_bf16": weights_digest(model, coarse=True),
    }


def weights_digest(model: LoadedModel, *, coarse: bool = False) -> str:
    """A cheap fingerprint of the weights (tens of milliseconds, not a hash of every byte):
    every tensor's name and shape, and a few values spread across each tensor, with the dtype.
    Two models under one id (a fine-tune, a tiny test model) get different digests; the same
    weights loaded again get the same one. ``coarse``: the values rounded to bfloat16 and the
    dtype left out, so a float32 and a bfloat16 load of the same weights agree."""
    h = hashlib.sha256(b"coarse" if coarse else str(model.dtype).encode())
    weights: Mapping[str, torch.Tensor] = model.weights
    if not weights and hasattr(model.hf_model, "state_dict"):
        weights = model.hf_model.state_dict()
    for name in sorted(weights):
        t = weights[name]
        h.update(f"{name}:{tuple(t.shape)}".encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR]
        if coarse:
            sample = sample.to(torch.bfloat16)
        h.update(sample.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]
