"""The fast decoder for the Llama family (Llama, SmolLM, Qwen2, Mistral without a sliding window).

It reads the HF weights (``LoadedModel.weights``) and runs a lean forward. Prompt passes: fused
QKV and gate/up projections with the fp32 weights pre-packed for oneDNN (plain MKL GEMM re-packs
the weight on every call, which halves throughput at batch 2), the compiled RMSNorm, RoPE and
SiLU of :mod:`.kernels`, a static KV cache and SDPA. Decoding steps (batch <= 4, CPU fp32): one
compiled call per layer (``decode_layer_many``: norms, the matrix-vector products on the compact
weights of :mod:`.compact`, RoPE, the cache write, attention, residual adds); the residual
callback still runs after every layer. :func:`fast_path_problem` says when a model is not one it
can run exactly; :mod:`.hf` serves those.

Where a decoding step's time goes (embedded model, side by side = batch 2 with steering and
capture on, 2 threads, idle machine; timed per op, i.e. without the whole-layer call, which
saves another ~0.3-0.5 ms of the Python; ``bench`` compares the step with llama.cpp):

=====================================================  ==========  =====
matrix-vector products on the repacked Q4_1/Q8_0 blocks 6.1 ms     ~76 %
attention incl. RoPE and cache write (30 calls)        0.4 ms     ~5 %
RMSNorm (61 calls) and SiLU-gate (30)                  0.25 ms    ~3 %
residual callback: steering edit + capture (31)        0.1 ms     ~1 %
sampling and the step's bookkeeping                    0.1 ms     ~1 %
Python between ops and in the generation loop          ~1 ms      ~13 %
=====================================================  ==========  =====

The products run at 15-18 GB/s of blocks, well under the ~40 GB/s read bandwidth: they are bound
by decoding the blocks in registers (about one vector instruction per weight), not by memory.
The weights must be exactly the bridge's, so the decode cannot be folded away (a block's
``d * sum(q x) + m * sum(x)`` would use unrounded weights) and x is never quantized (llama.cpp
quantizes activations to Q8 for integer dot products). Before this file decoded from the blocks,
the same step took 46-50 ms: ~30 ms reading 540 MB of fp32 and ~15 ms of per-op overhead
(25 torch ops per layer) that the compiled calls removed.

The weights are packed when the decoder is built: it sees the model as it was then, so a model
must never be changed in place afterwards (a fine-tuned model is a new ``LoadedModel``, see
:mod:`persona_explorer.engine`).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from persona_explorer.engine import compact, kernels
from persona_explorer.engine.base import (
    EMBED_LAYER,
    ResidFn,
    no_edit,
    positions_from_mask,
    prefill_slice,
)

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

__all__ = ["FastLlamaDecoder", "fast_path_problem"]

_FAST_ARCHITECTURES = ("llama", "qwen2", "mistral")
_LAYER_KEYS = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_OPTIONAL_BIASES = (
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.bias",
    "mlp.gate_proj.bias",
    "mlp.up_proj.bias",
    "mlp.down_proj.bias",
)


def _can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )


class _Proj:
    """One or more linear maps applied to the same input, in one call.

    CPU fp32: up to ``kernels.MAX_ROWS`` rows (decoding) go through the bandwidth-bound
    matrix-vector kernel on the compact copies of :mod:`.compact` (GGUF blocks, 16-bit copies, or
    the model's own fp32 weights); more rows (prompts, big batches) through oneDNN with the fp32
    weights fused and pre-packed once (MKL re-packs them on every call).
    Elsewhere (GPU, half precision): plain ``F.linear`` per weight, nothing copied.
    """

    def __init__(
        self,
        weights: list[torch.Tensor],
        biases: list[torch.Tensor | None],
        gemv: Any = None,
        mats: list[kernels.Matrix] | None = None,
    ) -> None:
        self.splits = [w.shape[0] for w in weights]
        self.weights = weights
        self.biases = biases
        self.packed: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        use = gemv is not None and kernels.usable(weights)
        self.gemv = (
            kernels.Group(gemv, mats if mats is not None else [kernels.plain(w) for w in weights])
            if use
            else None
        )
        if _can_pack(weights[0]):
            full = torch.cat(weights) if len(weights) > 1 else weights[0]
            self.packed = torch.ops.mkldnn._reorder_linear_weight(full.contiguous(), None)
            if any(b is not None for b in biases):
                self.bias = torch.cat(
                    [
                        b if b is not None else full.new_zeros(w.shape[0])
                        for w, b in zip(weights, biases, strict=True)
                    ]
                )

    def split(self, out: torch.Tensor) -> list[torch.Tensor]:
        return list(out.split(self.splits, dim=-1)) if len(self.splits) > 1 else [out]

    def fused(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """All outputs side by side [..., sum of sizes], plus ``add`` (a residual) if given."""
        if self.gemv is not None and x.numel() <= kernels.MAX_ROWS * x.shape[-1]:
            if self.bias is not None:
                out = self.gemv(x) + self.bias
                return out if add is None else out + add
            return self.gemv(x, add)
        if self.packed is not None:
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        elif len(self.weights) == 1:
            out = F.linear(x, self.weights[0], self.biases[0])
        else:
            out = torch.cat(
                [F.linear(x, w, b) for w, b in zip(self.weights, self.biases, strict=True)], -1
            )
        return out if add is None else out + add

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.split(self.fused(x))


_MATRICES = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}


class _Layer:
    def __init__(
        self, w: dict[str, torch.Tensor | None], gemv: Any, mats: dict[str, kernels.Matrix]
    ) -> None:
        self.ln1 = w["input_layernorm.weight"]
        self.ln2 = w["post_attention_layernorm.weight"]

        def proj(parts: tuple[str, ...]) -> _Proj:
            return _Proj(
                [w[f"{p}.weight"] for p in parts],  # type: ignore[misc]
                [w[f"{p}.bias"] for p in parts],
                gemv,
                [mats[f"{p}.weight"] for p in parts] if mats else None,
            )

        self.qkv = proj(_MATRICES["qkv"])
        self.o = proj(_MATRICES["o"])
        self.gate_up = proj(_MATRICES["gate_up"])
        self.down = proj(_MATRICES["down"])
        # The kernel's whole-layer decoding step takes these (a bias only on q/k/v, as in Qwen2).
        groups = [p.gemv for p in (self.qkv, self.o, self.gate_up, self.down)]
        others_biased = any(p.bias is not None for p in (self.o, self.gate_up, self.down))
        self.step_args: tuple[Any, ...] | None = None
        if all(g is not None for g in groups) and not others_biased:
            qkv, o, gate_up, down = groups
            self.step_args = (
                *(qkv.data, qkv.types, self.qkv.bias),  # type: ignore[union-attr]
                *(o.data, o.types, gate_up.data, gate_up.types),  # type: ignore[union-attr]
                *(down.data, down.types),  # type: ignore[union-attr]
            )


def _static_rope(hf: Any) -> tuple[torch.Tensor, float] | None:
    """inv_freq and scaling of the model's rotary embedding, if they do not depend on length."""
    # The bridge wraps the HF rotary module (a ``RotaryEmbeddingBridge`` in the HF tree) and keeps
    # the original as a submodule sharing its buffers, so the walk still finds the HF one.
    for module in hf.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq"):
            rope_type = str(getattr(module, "rope_type", "default"))
            if "dynamic" in rope_type or "longrope" in rope_type:
                return None
            scale = float(getattr(module, "attention_scaling", 1.0))
            return module.inv_freq.detach().clone(), scale
    return None


def fast_path_problem(model: LoadedModel) -> str | None:
    """Why the fast decoder cannot run this model exactly, or None if it can."""
    cfg = model.hf_model.config
    if model.architecture not in _FAST_ARCHITECTURES:
        return f"architecture {model.architecture!r} is not in the Llama family"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    if _static_rope(model.hf_model) is None:
        return "no static rotary embedding found"
    prefix = "model.layers.0."
    known = {prefix + k for k in _LAYER_KEYS + _OPTIONAL_BIASES}
    extra = [k for k in model.weights if k.startswith(prefix) and k not in known]
    if extra:
        return f"unexpected weights {extra[:3]}"
    missing = [k for k in _LAYER_KEYS if prefix + k not in model.weights]
    if missing:
        return f"missing weights {missing[:3]}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    return None


class FastLlamaDecoder:
    name = "fast-llama"
    shares_prefix = True  # sessions have prefill_shared

    def __init__(self, model: LoadedModel, use_kernel: bool = True) -> None:
        rope = _static_rope(model.hf_model)
        if rope is None:
            raise ValueError(
                f"{model.model_id}: no static rotary embedding (see fast_path_problem)"
            )
        self.inv_freq, self.rope_scale = rope
        cfg = model.hf_model.config
        w = model.weights
        self.n_layers = model.n_layers
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.scaling = self.head_dim**-0.5
        self.device = model.device
        self.dtype = model.dtype
        cpu_fp32 = model.device.type == "cpu" and model.dtype == torch.float32
        gemv = kernels.load(use_kernel) if cpu_fp32 else None
        # The compiled element-wise ops (RMSNorm, RoPE) go with the kernel: same module.
        self.ops = gemv
        head_name = "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"
        mats: dict[str, kernels.Matrix] = {}
        if gemv is not None:
            names = [
                f"model.layers.{i}.{p}.weight"
                for i in range(self.n_layers)
                for parts in _MATRICES.values()
                for p in parts
            ] + [head_name]
            blocks = compact.gguf_blocks(model)
            mats = compact.compact_matrices(gemv, w, names, blocks)
        formats = sorted({m.fmt.name for m in mats.values()})
        self.kernel = (
            f"{kernels.isa_of(gemv)}-gemv ({'+'.join(formats)})" if gemv is not None else "onednn"
        )
        self.step_weight_bytes = sum(m.nbytes for m in {id(m): m for m in mats.values()}.values())
        self.layers = [
            _Layer(
                {k: w.get(f"model.layers.{i}.{k}") for k in _LAYER_KEYS + _OPTIONAL_BIASES},
                gemv,
                {
                    k.removeprefix(f"model.layers.{i}."): m
                    for k, m in mats.items()
                    if k.startswith(f"model.layers.{i}.")
                },
            )
            for i in range(self.n_layers)
        ]
        self.embed = w["model.embed_tokens.weight"]
        self.norm = w["model.norm.weight"]
        self.lm_head = _Proj(
            [w[head_name]], [w.get("lm_head.bias")], gemv, [mats[head_name]] if mats else None
        )

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.rms_norm(x, weight, self.eps)
        # Same op order as HF's LlamaRMSNorm (fp32 variance, scale after casting back).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [batch, 1, seq, head_dim] for integer positions [batch, seq]."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin

    def session(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        row_invariant: bool = True,
    ) -> _FastSession:
        return _FastSession(self, input_ids, attention_mask, max_new_tokens, row_invariant)

    def whole_steps(self, session: object) -> bool:
        """Whether ``session``'s decoding steps run one compiled call per layer
        (:meth:`step_many`, alone or with other sessions)."""
        return (
            isinstance(session, _FastSession)
            and session.dec is self
            and self.ops is not None
            and self.lm_head.gemv is not None
            and all(layer.step_args is not None for layer in self.layers)
            and session.batch <= kernels.MAX_ROWS
        )

    def can_share(self, session: object) -> bool:
        """Whether ``session`` may decode in :meth:`step_many` with other sessions and get the
        same bits as alone: a row-invariant session whose steps run whole."""
        return self.whole_steps(session) and bool(session.row_invariant)  # type: ignore[attr-defined]

    def step_many(
        self,
        sessions: list[_FastSession],
        tokens: list[torch.Tensor],
        resid_fns: list[ResidFn],
    ) -> list[torch.Tensor]:
        """One decoding step of several sessions in one pass: ``tokens[i]`` [batch_i] feeds
        ``sessions[i]``, whose callback ``resid_fns[i]`` sees only its own rows. Returns each
        session's logits [batch_i, vocab], bit-identical to ``sessions[i].step(tokens[i],
        resid_fns[i])`` alone (:meth:`whole_steps` must hold for each): the weights are read once
        for every row, which is what makes a class of visitors cost little more than one."""
        if not sessions or not len(tokens) == len(resid_fns) == len({id(s) for s in sessions}):
            raise ValueError("one token row and one callback per session, each session once")
        for sess in sessions:
            if not self.whole_steps(sess):
                raise ValueError("this session's steps do not run whole")
            sess.begin_step()
        rows = [sess.batch for sess in sessions]
        bounds = [0]
        for r in rows:
            bounds.append(bounds[-1] + r)
        # Per session, exactly as its own step builds them (torch's elementwise cos and sin may
        # round a tail differently from the vector body, so no table spans two sessions).
        tables = [self.rope_tables(sess.next_pos[:, None]) for sess in sessions]
        cos_rows = torch.cat([c[:, 0].reshape(-1, self.head_dim) for c, _ in tables])
        sin_rows = torch.cat([s[:, 0].reshape(-1, self.head_dim) for _, s in tables])
        h = F.embedding(torch.cat([t.view(-1) for t in tokens]).view(-1, 1), self.embed)

        def each(layer: int, h: torch.Tensor) -> torch.Tensor:
            parts = [
                fn(layer, h[a:b])
                for fn, (a, b) in zip(resid_fns, itertools.pairwise(bounds), strict=True)
            ]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        h = each(EMBED_LAYER, h)
        caches = (
            [sess.valid for sess in sessions],
            [sess.length for sess in sessions],
            rows,
            self.n_heads,
            self.n_kv,
            self.scaling,
        )
        for i, layer in enumerate(self.layers):
            h2 = self.ops.decode_layer_many(
                h.reshape(bounds[-1], -1).contiguous(),
                layer.ln1,
                layer.ln2,
                self.eps,
                *layer.step_args,  # type: ignore[misc]
                cos_rows,
                sin_rows,
                [sess.k[i] for sess in sessions],
                [sess.v[i] for sess in sessions],
                *caches,
            )
            h = each(i, h2.view(bounds[-1], 1, -1))
        for sess in sessions:
            sess.end_step()
        assert self.lm_head.gemv is not None  # whole_steps
        logits = self.lm_head.gemv(self.rms_norm(h[:, -1], self.norm))
        return [logits[a:b] for a, b in itertools.pairwise(bounds)]


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention for one query per row, bit-identical for identical rows.

    PyTorch's CPU SDPA kernel gives slightly different results for two identical rows of a batch
    at one query token (seen on torch 2.13), which would let a strength-0 row drift from the
    baseline beside it. Batched matmuls treat every row alike. q [b, heads, 1, d],
    k/v [b, kv_heads, T, d], mask [b, 1, 1, T] -> [b, heads, 1, d].
    """
    b, heads, _, d = q.shape
    kv_heads = k.shape[1]
    qg = q.reshape(b, kv_heads, heads // kv_heads, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # [b, kv_heads, group, T]
    scores = scores.masked_fill(~mask.view(b, 1, 1, -1), float("-inf"))
    out = torch.matmul(scores.softmax(-1), v)  # [b, kv_heads, group, d]
    return out.reshape(b, heads, 1, d)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _FastSession:
    def __init__(
        self,
        dec: FastLlamaDecoder,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        row_invariant: bool = True,
    ) -> None:
        self.dec = dec
        self.row_invariant = row_invariant
        self.input_ids = input_ids.to(dec.device)
        b, s = input_ids.shape
        total = s + max_new_tokens + 1
        # Static cache: one allocation, written in place; no torch.cat per step.
        shape = (b, dec.n_kv, total, dec.head_dim)
        self.k = [torch.empty(shape, device=dec.device, dtype=dec.dtype) for _ in dec.layers]
        self.v = [torch.empty(shape, device=dec.device, dtype=dec.dtype) for _ in dec.layers]
        self.valid = torch.zeros(b, total, dtype=torch.bool, device=dec.device)
        self.valid[:, :s] = attention_mask.to(dec.device).bool()
        self.positions = positions_from_mask(attention_mask.to(dec.device))
        self.length = 0
        self.total = total

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, resid_fn: ResidFn
    ) -> torch.Tensor:
        """Run ``ids`` [b, s] at the next ``s`` cache slots. ``b`` is the session's batch, or 1
        for a shared prefix: its keys and values are then broadcast into every row's slots."""
        dec = self.dec
        b, s = ids.shape
        rows = slice(0, b)
        start = self.length
        end = start + s
        if end > self.total:
            raise RuntimeError("KV cache full: more steps than max_new_tokens")
        cos, sin = dec.rope_tables(positions)
        # [b * s, head_dim] rows for the compiled RoPE, which works on qkv's [b, s, width] rows.
        cos_rows = cos[:, 0].reshape(b * s, dec.head_dim).contiguous()
        sin_rows = sin[:, 0].reshape(b * s, dec.head_dim).contiguous()
        # A decoding step that does not run whole (step_many): attention, RoPE and the cache
        # writes still run as one compiled call per layer, row-invariant by construction.
        fused_step = dec.ops is not None and s == 1 and start >= self.input_ids.shape[1]
        h = F.embedding(ids, dec.embed)
        h = resid_fn(EMBED_LAYER, h)

        def step_args(i: int) -> tuple[Any, ...]:  # the compiled step's cache arguments
            kv = (self.k[i], self.v[i], self.valid, start)
            return (cos_rows, sin_rows, *kv, dec.n_heads, dec.n_kv, dec.scaling)

        for i, layer in enumerate(dec.layers):
            x = dec.rms_norm(h, layer.ln1)
            qkv = layer.qkv.fused(x)
            if fused_step:
                attn = dec.ops.decode_attention(qkv.view(b, -1), *step_args(i))
                h = self._mlp(layer, layer.o.fused(attn.view(b, 1, -1), add=h))
                h = resid_fn(i, h)
                continue
            if dec.ops is not None:
                dec.ops.rope_(qkv, cos_rows, sin_rows, dec.n_heads + dec.n_kv, dec.head_dim)
            q, k, v = layer.qkv.split(qkv)
            q = q.view(b, s, dec.n_heads, dec.head_dim).transpose(1, 2)
            k = k.view(b, s, dec.n_kv, dec.head_dim).transpose(1, 2)
            v = v.view(b, s, dec.n_kv, dec.head_dim).transpose(1, 2)
            if dec.ops is None:
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            if s == 1 and self.row_invariant:
                attn = _decode_attention(
                    q, self.k[i][rows, :, :end], self.v[i][rows, :, :end], mask, dec.scaling
                )
            else:
                attn = F.scaled_dot_product_attention(
                    q,
                    self.k[i][rows, :, :end],
                    self.v[i][rows, :, :end],
                    attn_mask=mask,
                    scale=dec.scaling,
                    enable_gqa=dec.n_kv != dec.n_heads,
                )
            attn = attn.transpose(1, 2).reshape(b, s, dec.n_heads * dec.head_dim)
            h = self._mlp(layer, layer.o.fused(attn, add=h))
            h = resid_fn(i, h)
        self.length = end
        return h

    def _mlp(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        dec = self.dec
        x = dec.rms_norm(h, layer.ln2)
        if dec.ops is not None:
            return layer.down.fused(dec.ops.silu_mul(layer.gate_up.fused(x)), add=h)
        gate, up = layer.gate_up(x)
        return layer.down.fused(F.silu(gate) * up, add=h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.dec.lm_head(self.dec.rms_norm(h, self.dec.norm))[0]

    def prefill(
        self,
        resid_fn: ResidFn = no_edit,
        all_logits: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        width = self.input_ids.shape[1]
        end = prefill_slice(self.length, width, start, end)
        dev = self.valid.device
        # Queries [start, end) against the keys cached so far and their own: [b, 1, chunk, end],
        # so a long prompt never builds a prompt x prompt mask.
        query = torch.arange(start, end, device=dev)[:, None]
        key = torch.arange(end, device=dev)[None, :]
        # A padding query attends to itself only, so its (ignored) row stays finite.
        mask = ((key <= query) & self.valid[:, None, :end]) | (key == query)
        h = self._forward(
            self.input_ids[:, start:end], self.positions[:, start:end], mask[:, None], resid_fn
        )
        if end == width:
            self.next_pos = self.positions[:, -1] + 1
        return self._logits(h) if all_logits else self._logits(h[:, -1])

    def prefill_shared(self, end: int, resid_fn: ResidFn = no_edit) -> None:
        """Run prompt positions ``[0, end)`` once, for row 0, and give every row its keys and
        values: for a batch whose rows all start with the same ``end`` real tokens (screening's
        chat template and system prompt), which then cost one row instead of ``batch``.
        ``resid_fn`` sees ``h`` [1, end, d_model]. Must be the first call of the session."""
        ids = self.input_ids[:, :end]
        if self.length != 0 or not 0 < end < self.input_ids.shape[1]:
            raise ValueError(f"a shared prefix of {end} positions must come first and be shorter")
        if not bool(self.valid[:, :end].all()) or not bool((ids == ids[:1]).all()):
            raise ValueError("the rows do not share their first positions")
        query = torch.arange(end, device=self.valid.device)
        mask = (query[None, :] <= query[:, None])[None, None]  # causal, [1, 1, end, end]
        self._forward(ids[:1], self.positions[:1, :end], mask, resid_fn)

    @property
    def batch(self) -> int:
        return int(self.input_ids.shape[0])

    def begin_step(self) -> int:
        """Open the next cache slot for a decoding step; returns the slot after it."""
        if self.length < self.input_ids.shape[1]:
            raise RuntimeError("step() before the whole prompt was prefilled")
        end = self.length + 1
        if end > self.total:
            raise RuntimeError("KV cache full: more steps than max_new_tokens")
        self.valid[:, self.length] = True
        return end

    def end_step(self) -> None:
        """After a step that :meth:`FastLlamaDecoder.step_many` ran for this session."""
        self.length += 1
        self.next_pos = self.next_pos + 1

    def step(self, tokens: torch.Tensor, resid_fn: ResidFn = no_edit) -> torch.Tensor:
        if self.dec.whole_steps(self):  # one compiled call per layer, as in the shared batch
            return self.dec.step_many([self], [tokens], [resid_fn])[0]
        end = self.begin_step()
        mask = self.valid[:, None, None, :end]
        h = self._forward(tokens.view(-1, 1), self.next_pos[:, None], mask, resid_fn)
        self.next_pos = self.next_pos + 1
        return self._logits(h[:, -1])

    def close(self) -> None:
        self.k.clear()
        self.v.clear()
