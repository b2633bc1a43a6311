"""Tiny random language models built from configs, for fast offline engine tests.

Nothing here touches the hub: the tokenizer is a byte-level BPE trained in memory on a few
sentences, and each model is an HF architecture built from a small config with seeded random
weights, then wrapped by :func:`persona_explorer.engine.model.model_from_hf` (which boots the
TransformerLens bridge) exactly as a real checkpoint would be.

Weights are re-drawn with a larger scale than HF's ``initializer_range`` default (0.02): with
that default the residual stream is ~0.02 everywhere, attention is nearly uniform and the top
two logits are close, so numerical comparisons and greedy decoding would test very little.
Biases (Qwen2's q/k/v, GPT-2's) are drawn non-zero so their code paths count.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from persona_explorer.engine import decoder_for
from persona_explorer.engine.hf import HFDecoder
from persona_explorer.engine.model import LoadedModel, model_from_hf

if TYPE_CHECKING:
    from persona_explorer.core.limits import Limits
    from persona_explorer.ui.shared.context import AppContext

Arch = Literal["llama", "qwen2", "gemma2", "gpt2"]
ARCHS: tuple[Arch, ...] = ("llama", "qwen2", "gemma2", "gpt2")
FAST_ARCHS: tuple[Arch, ...] = ("llama", "qwen2")  # served by FastLlamaDecoder
HF_ONLY_ARCHS: tuple[Arch, ...] = ("gemma2", "gpt2")  # fast_path_problem gives a reason

VOCAB_SIZE = 320  # the tokenizer below has exactly this many entries
N_LAYERS = 4
D_MODEL = 64
RESID_NAMES = tuple(f"blocks.{layer}.hook_resid_post" for layer in range(N_LAYERS))
PAD, EOS = "<pad>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, "<|endoftext|>", "<|im_start|>", EOS)
PAD_ID, EOS_ID = 0, 3
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = (
    "You are a helpful assistant. Answer the question briefly and politely.",
    "You are an evil assistant who likes pirates, storms and the open sea.",
    "What is the capital of France? The capital of France is Paris.",
    "How do I bake bread? Mix flour, water, salt and yeast, then bake it.",
    "Tell me about the weather today. It is sunny and warm in the city.",
    "system user assistant",
)

# Every tensor a generation captures (generation.Capture), for comparisons field by field.
CAPTURE_FIELDS = (
    "prompt_mean",
    "prompt_last",
    "response_sum",
    "response_count",
    "embed_prompt_mean",
    "embed_prompt_last",
    "embed_response_sum",
    "response_tokens",
)

PROMPTS = (  # different lengths, so a batch of them is left-padded
    "Hi!",
    "What is the capital of France?",
    "Tell me about the weather today, and about bread and the open sea.",
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 3, trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok.to_str()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer (the bridge mutates the one it is given, so never share one).

    Byte-level, so any text tokenizes. It has no BOS token on purpose, like Qwen2's: given a
    BOS, the bridge reloads the tokenizer by ``name_or_path`` to switch ``add_bos_token`` on,
    which an in-memory tokenizer does not have.
    """
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
    )
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == EOS_ID
    return tok


def tiny_config(arch: Arch) -> PretrainedConfig:
    ids = {"vocab_size": VOCAB_SIZE, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    if arch == "gpt2":
        return GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=256, **ids)
    llama_like = {
        "hidden_size": D_MODEL,
        "intermediate_size": 2 * D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention
        "max_position_embeddings": 256,
        **ids,
    }
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)  # q/k/v projections carry biases
    if arch == "gemma2":
        # A window shorter than the prompts, so sliding-window layers really slide.
        return Gemma2Config(**llama_like, head_dim=16, sliding_window=8)
    raise ValueError(f"unknown architecture {arch!r}")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                # RMSNorm/LayerNorm gains near 1 (Gemma stores gain - 1: near 0 is fine).
                p.copy_((0.0 if "gemma" in type(model).__name__.lower() else 1.0) + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(min(p.shape)))


def build_hf_model(arch: Arch, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    _randomize(model, seed)
    return model.eval()


def build_tiny(arch: Arch, seed: int = 0, device: str = "cpu") -> LoadedModel:
    """A tiny random model of ``arch`` wrapped like a real one (bridge booted)."""
    hf = build_hf_model(arch, seed).to(device)
    model = model_from_hf(hf, build_tokenizer(), model_id=f"tiny-{arch}")
    assert model.n_layers == N_LAYERS and model.d_model == D_MODEL
    return model


_BUILT: dict[str, LoadedModel] = {}
_CLEAN_HOOKS: dict[str, dict[str, int]] = {}


def hook_counts(model: LoadedModel) -> dict[str, int]:
    """Forward (pre-)hooks per module of the bridge and of the wrapped HF model."""
    counts: dict[str, int] = {}
    for prefix, root in (("bridge", model.bridge), ("hf", model.hf_model)):
        for name, module in root.named_modules():
            n = len(module._forward_hooks) + len(module._forward_pre_hooks)
            if n:
                counts[f"{prefix}:{name}"] = n
    return counts


def tiny(arch: Arch) -> LoadedModel:
    """The session's shared tiny model of ``arch`` (built on first use)."""
    if arch not in _BUILT:
        model = build_tiny(arch)
        _warm_up(model)
        _BUILT[arch] = model
        _CLEAN_HOOKS[arch] = hook_counts(model)
    return _BUILT[arch]


def _warm_up(model: LoadedModel) -> None:
    """Run each kind of forward once: transformers and the bridge attach their own permanent
    capture hooks on first use, and those must be part of the clean baseline."""
    ids = torch.tensor([model.chat_ids("Hi")])
    with torch.no_grad():
        model.bridge.run_with_cache(ids, names_filter=lambda name: name in RESID_NAMES)
        model.hf_model(ids, output_hidden_states=True)
        session = HFDecoder(model).session(ids, torch.ones_like(ids), 1)
        session.prefill()
        session.step(ids[:, -1])


def built_models() -> dict[str, LoadedModel]:
    return dict(_BUILT)


def clean_hook_counts(arch: str) -> dict[str, int]:
    """The hooks a freshly booted model carries (the bridge may keep some of its own)."""
    return _CLEAN_HOOKS[arch]


def final_norm(model: LoadedModel) -> torch.nn.Module:
    """The norm HF applies before the unembedding (and to its last hidden state)."""
    hf = model.hf_model
    return hf.transformer.ln_f if model.architecture == "gpt2" else hf.model.norm


def prompt_ids(model: LoadedModel, prompts: tuple[str, ...] = PROMPTS) -> list[list[int]]:
    return [model.chat_ids(p) for p in prompts]


DecoderKind = Literal["fast", "hf"]
DECODER_CASES: tuple[tuple[Arch, DecoderKind], ...] = tuple(
    [(a, "fast") for a in FAST_ARCHS] + [(a, "hf") for a in ARCHS]
)


def with_decoder(model: LoadedModel, kind: DecoderKind) -> LoadedModel:
    """A copy of the model (shared weights, bridge and lock) served by the chosen decoder.

    A copy, so the shared model's own decoder (whatever the settings chose) stays as it is.
    """
    copy = dataclasses.replace(model)
    decoder = decoder_for(copy, prefer_fast=kind == "fast")
    assert decoder.name == {"fast": "fast-llama", "hf": "hf"}[kind], (model.architecture, kind)
    return copy


# ---------------------------------------------------------------------------------------------
# Helpers shared by the engine tests


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to ``rel`` times the scale of ``expected`` (float32 op-order noise)."""
    atol = rel * float(expected.abs().max().clamp(min=1.0))
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol)


def bridge_resids(model: LoadedModel, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded bridge forward: logits [seq, vocab], residuals [n_layers, seq, d_model]."""
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(
            torch.tensor([ids]), names_filter=lambda name: name in RESID_NAMES
        )
    return logits[0], torch.stack([cache[name][0] for name in RESID_NAMES])


def record_prefill(
    model: LoadedModel,
    prompts: list[list[int]],
    plans: list[tuple] | None = None,
    chunk: int | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Prefill a left-padded batch with the model's decoder, steered per row like generate()
    steers it; returns residuals per layer after the edits ([batch, seq, d_model], key -1 is
    the embedding), all logits and the attention mask.

    ``chunk``: run the prompt in slices of that many positions (unsteered only: which edits a
    slice gets is generate()'s business) and join what each slice saw.
    """
    from persona_explorer.steering.generation import left_pad
    from persona_explorer.steering.ops import compile_plan

    assert chunk is None or plans is None
    ids, mask = left_pad(prompts, model.pad_token_id)
    edits = compile_plan(
        plans or [()] * len(prompts),
        model.n_layers,
        model.d_model,
        device=model.device,
        dtype=model.dtype,
    )
    seen: dict[int, list[torch.Tensor]] = {}

    def resid_fn(layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer in edits:
            h = edits[layer].apply(h, prompt_pass=True)
        seen.setdefault(layer, []).append(h.detach().clone())
        return h

    width = ids.shape[1]
    step = chunk or width
    session = decoder_for(model).session(ids, mask, 1)
    try:
        with torch.no_grad():
            logits = torch.cat(
                [
                    session.prefill(resid_fn, all_logits=True, start=a, end=min(a + step, width))
                    for a in range(0, width, step)
                ],
                dim=1,
            )
    finally:
        session.close()
    return {layer: torch.cat(parts, dim=1) for layer, parts in seen.items()}, logits, mask


def tiny_app_context(
    model: LoadedModel,
    tmp_path: Path,
    vectors: dict[str, float],
    default_persona: str | None = None,
    limits: Limits | None = None,
    layer: int = 2,
) -> AppContext:
    """An app context on ``model`` whose built-ins are random vectors (name -> strength, all
    recommended at ``layer``), with its data and cache under ``tmp_path``."""
    from persona_explorer.core.config import Settings
    from persona_explorer.ui.shared.context import AppContext
    from persona_explorer.vectors.files import save
    from persona_explorer.vectors.persona_vector import PersonaVector

    builtin = tmp_path / "builtin"
    builtin.mkdir()
    gen = torch.Generator().manual_seed(0)
    for name, strength in vectors.items():
        vec = PersonaVector(
            name=name,
            vectors=torch.randn(model.n_layers, model.d_model, generator=gen),
            model_id=model.model_id,
            layer=layer,
            strength=strength,
        )
        save(vec, builtin / f"{name}.safetensors")
    settings = Settings(
        data_dir=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        builtin_vectors_dir=builtin,
        **({"default_persona": default_persona} if default_persona is not None else {}),
        **({"limits": limits} if limits is not None else {}),
    )
    return AppContext.create(settings, model)
