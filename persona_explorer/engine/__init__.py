"""The inference engine: forward passes with a KV cache and a callback on the residual stream.

What it owns: the decoders and their sessions (prefill, whole or in slices of the prompt, one
step per generated token, close), which decoder serves which model, and the compiled CPU kernel.
It knows nothing about personas, steering or capture; those live in the residual callback its
callers pass in.

* :mod:`.base` — the :class:`Decoder` / :class:`DecodeSession` interface, :data:`ResidFn`,
  :data:`EMBED_LAYER`, :func:`positions_from_mask`.
* :mod:`.fast_llama` — :class:`~.fast_llama.FastLlamaDecoder`, a lean forward for the Llama
  family over the model's plain weights; :func:`fast_path_problem` says when it cannot run a
  model exactly.
* :mod:`.hf` — :class:`~.hf.HFDecoder`, the bridge-wrapped HF forward with hooks: any
  architecture.
* :mod:`.kernels` — the compiled CPU kernels the fast decoder uses (source: ``kernels.cpp``;
  AVX2, with AVX-512F products where the CPU has them, the same bits): matrix-vector products
  on GGUF blocks, 16-bit or fp32 rows, for any number of rows, decode attention, RMSNorm, RoPE,
  SiLU, and a whole layer of a decoding step (one session's, or the shared batch's) in one call.
* :mod:`.threads` — one OpenMP team per serving process (the shared batch's engine thread).
* :mod:`.compact` — the compact copies of the weights a decoding step reads (the model's GGUF
  blocks, or 16-bit copies), each checked to decode to exactly the model's fp32 weights.
* :mod:`.cache` — :func:`decoder_for`, the one decoder of each model, and :func:`build_decoder`.
* :mod:`.model` — the one owner of the model: loading (the embedded GGUF dequantized once into
  the cache), the chat template, :class:`~.model.LoadedModel` and the
  :class:`~.model.DecoderSwitches` it carries (from the caller's settings).
* :mod:`.gguf_blocks` — the embedded GGUF's Q4_1/Q8_0 blocks by HF name, stored beside its
  weights.
* :mod:`.identity` — a model's identity and a fingerprint of its weights, for keying stored work
  (replays, sweep checkpoints).

Imports: torch (and transformers, TransformerLens, gguf inside functions) and ``core``. Never
steering, generation, the UI or the CLI: they import the engine. ``model`` does not import the
decoders (a test checks it), and nothing here reads the environment: the decoder switches come
with the model, or from the caller.

The residual callback ``resid_fn(layer, h)`` gets ``h`` [batch, seq, d_model] and returns the
tensor to continue with. ``layer == EMBED_LAYER`` (-1) is the embedding output (the input of
block 0, read-only); ``layer == l`` is the residual after block ``l``
(``blocks.{l}.hook_resid_post``, HF ``hidden_states[l + 1]``).

Where a fine-tuned model plugs in. Fine-tuning trains a plain HF copy of the weights (peft
cannot wrap the bridge's ``LinearBridge`` modules), then ``merge_and_unload()`` folds the LoRA
adapter into that copy, then ``model.model_from_hf(merged_hf, tokenizer, model_id=...)`` builds a
*new* ``LoadedModel`` (its own bridge and weight snapshot), and ``decoder_for(new_model)`` packs a
new decoder for it. The cache is keyed weakly by the model object, so the base and the tuned
model coexist, each with its decoder, and dropping the tuned model frees its decoder. Never apply
an adapter in place to a model whose decoder is built: the fast decoder packed the weights when
it was built and would see only part of the change.
"""

from __future__ import annotations

from persona_explorer.engine.base import (
    EMBED_LAYER,
    Decoder,
    DecodeSession,
    ResidFn,
    positions_from_mask,
)
from persona_explorer.engine.cache import build_decoder, decoder_for
from persona_explorer.engine.fast_llama import fast_path_problem

__all__ = [
    "EMBED_LAYER",
    "DecodeSession",
    "Decoder",
    "ResidFn",
    "build_decoder",
    "decoder_for",
    "fast_path_problem",
    "positions_from_mask",
]
