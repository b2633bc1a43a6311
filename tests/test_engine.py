"""The decoding engine on tiny random models: fast decoder, HF decoder and the bridge agree.

References are unpadded, uncached forwards of the TransformerLens bridge (``run_with_cache`` on
``blocks.{l}.hook_resid_post``) and of the HF model (``output_hidden_states``); the decoders run
left-padded batches with a KV cache, so padding, rotary positions and the cache are all checked.
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

import persona_explorer
from persona_explorer.engine import (
    EMBED_LAYER,
    Decoder,
    build_decoder,
    decoder_for,
    fast_path_problem,
    positions_from_mask,
)
from persona_explorer.engine import cache as engine_cache
from persona_explorer.engine.fast_llama import FastLlamaDecoder
from persona_explorer.engine.hf import HFDecoder
from persona_explorer.engine.model import DecoderSwitches, LoadedModel
from persona_explorer.steering import ops as steering
from persona_explorer.steering.generation import SamplingConfig, generate, generate_stream, left_pad
from persona_explorer.steering.ops import add_plan
from tests.tiny_models import (
    ARCHS,
    EOS_ID,
    FAST_ARCHS,
    HF_ONLY_ARCHS,
    N_LAYERS,
    PAD_ID,
    VOCAB_SIZE,
    Arch,
    bridge_resids,
    build_tokenizer,
    close,
    final_norm,
    prompt_ids,
    record_prefill,
    tiny,
    tiny_config,
    with_decoder,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0, stop_at_eos=False)


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_tokenizer_fits_the_models_and_chat_ids_follow_the_template(llama: LoadedModel) -> None:
    tok = build_tokenizer()
    assert len(tok) == VOCAB_SIZE
    for arch in ARCHS:
        assert tiny_config(arch).vocab_size >= len(tok)
    model = llama
    ids = model.chat_ids("Hello there", system="Be brief.")
    text = model.tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert max(ids) < VOCAB_SIZE
    # An empty system prompt means no system message at all.
    assert model.chat_ids("Hello there", system="") == model.chat_ids("Hello there")
    assert model.eos_token_ids == frozenset({EOS_ID}) and model.pad_token_id == PAD_ID


def test_decoder_choice(any_model: LoadedModel) -> None:
    model = any_model
    arch = model.architecture
    problem = fast_path_problem(model)
    if arch in FAST_ARCHS:
        assert problem is None
        assert isinstance(build_decoder(model), FastLlamaDecoder)
    else:
        assert arch in HF_ONLY_ARCHS
        assert problem is not None and arch in problem
        assert isinstance(build_decoder(model), HFDecoder)
    assert isinstance(build_decoder(model, prefer_fast=False), HFDecoder)


def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [0, 0, 8]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [0, 0, 1]]))
    assert torch.equal(positions_from_mask(mask), torch.tensor([[0, 1, 2], [0, 0, 0]]))
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([], pad_id=0)


# ---------------------------------------------------------------------------------------------
# The decoder cache: one decoder per model object


def test_concurrent_first_requests_build_one_decoder(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = dataclasses.replace(llama)  # a fresh key: nothing cached yet
    builds: list[int] = []
    real_build = engine_cache.build_decoder

    def slow_build(*args: object, **kwargs: object) -> Decoder:
        builds.append(threading.get_ident())
        time.sleep(0.2)  # every other thread arrives while this build runs
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_cache, "build_decoder", slow_build)
    n = 6
    start = threading.Barrier(n)
    got: list[Decoder] = []

    def first_request() -> None:
        start.wait()
        got.append(decoder_for(model))

    threads = [threading.Thread(target=first_request) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(builds) == 1
    assert len(got) == n and all(d is got[0] for d in got)


@pytest.mark.parametrize("prefer_fast", [True, False], ids=["fast", "hf"])
def test_dropping_a_model_frees_its_decoder(llama: LoadedModel, prefer_fast: bool) -> None:
    model = dataclasses.replace(llama)
    decoder = decoder_for(model, prefer_fast=prefer_fast)
    assert decoder is not decoder_for(llama)  # each model object has its own
    model_ref, decoder_ref = weakref.ref(model), weakref.ref(decoder)
    del model, decoder
    gc.collect()
    assert model_ref() is None, "the cached decoder keeps its model alive"
    assert decoder_ref() is None


def test_the_models_switches_choose_the_decoder_once(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = dataclasses.replace(llama, decoder_switches=DecoderSwitches(fast=False))
    hf = decoder_for(model)
    assert isinstance(hf, HFDecoder)
    # Nothing below the edge reads the environment, before or after the decoder is built.
    monkeypatch.setenv("PERSONA_EXPLORER_FAST", "1")
    assert decoder_for(model) is hf

    monkeypatch.setenv("PERSONA_EXPLORER_KERNEL", "1")
    no_kernel = dataclasses.replace(llama, decoder_switches=DecoderSwitches(kernel=False))
    fast = decoder_for(no_kernel)
    assert isinstance(fast, FastLlamaDecoder) and fast.kernel == "onednn"

    # An explicit switch that differs from the cached decoder's replaces it for every caller.
    forced = decoder_for(model, prefer_fast=True)
    assert isinstance(forced, FastLlamaDecoder)
    assert decoder_for(model) is forced
    assert decoder_for(model, prefer_fast=True) is forced


def _package_imports(path: Path) -> set[str]:
    """Every ``persona_explorer`` module a source file imports, relative imports resolved
    (``TYPE_CHECKING`` imports included: a circle there is still a circle)."""
    root = Path(persona_explorer.__file__).parent
    package = ["persona_explorer", *path.parent.relative_to(root).parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            if node.module is None:  # ``from . import x``: x is a module
                found |= {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "persona_explorer"}


def test_the_model_does_not_import_the_decoders() -> None:
    """model.py owns loading; the decoders (cache, fast_llama, hf) build on it, not the reverse.
    The rest of the engine's import rules are in test_architecture.py."""
    path = Path(persona_explorer.__file__).parent / "engine" / "model.py"
    imports = _package_imports(path)
    assert "persona_explorer.core.config" in imports  # the resolver sees the package's imports
    decoders = {
        m
        for m in imports
        if m.startswith("persona_explorer.engine")
        and m
        not in (
            "persona_explorer.engine.gguf_blocks",
            "persona_explorer.engine.model",
            "persona_explorer.engine.threads",  # OpenMP teams, for the compute lock
        )
    }
    assert not decoders, f"model.py imports {sorted(decoders)}"


# ---------------------------------------------------------------------------------------------
# Decoders against the bridge


def test_padded_prefill_matches_unpadded_bridge(decoded_model: LoadedModel) -> None:
    model = decoded_model
    prompts = prompt_ids(model)
    seen, logits, mask = record_prefill(model, prompts)
    width = mask.shape[1]
    assert len({len(p) for p in prompts}) == len(prompts)  # really padded
    for row, p in enumerate(prompts):
        ref_logits, ref_resid = bridge_resids(model, p)
        real = slice(width - len(p), width)
        for layer in range(N_LAYERS):
            close(seen[layer][row, real], ref_resid[layer])
        close(logits[row, real], ref_logits)


def test_cached_greedy_decoding_matches_full_forwards(decoded_model: LoadedModel) -> None:
    """Every decoded token is the argmax of an uncached, unpadded forward over the text so far,
    and every captured residual (prompt mean, last prompt token, each response token) is the
    bridge's ``hook_resid_post`` at that position."""
    model = decoded_model
    prompts = prompt_ids(model)
    res = generate(model, prompts, [()] * len(prompts), GREEDY, keep_tokens=True)
    assert res.decoder == decoder_for(model).name
    cap = res.capture
    assert cap.response_tokens is not None
    for row, p in enumerate(prompts):
        toks = res.tokens[row]
        assert len(toks) == GREEDY.max_new_tokens
        ref_logits, ref_resid = bridge_resids(model, p + toks)
        n = len(p)
        for t, tok in enumerate(toks):
            step_logits = ref_logits[n - 1 + t]
            top2 = step_logits.topk(2).values
            # A near-tie could flip on float noise; with these seeds there is none.
            assert float(top2[0] - top2[1]) > 1e-4
            assert tok == int(step_logits.argmax())
        # [n_layers, seq, d] -> captured layouts
        close(cap.prompt_last[row], ref_resid[:, n - 1])
        close(cap.prompt_mean[row], ref_resid[:, :n].mean(1))
        close(cap.response_tokens[row].transpose(0, 1), ref_resid[:, n:])
        close(cap.response_mean[row], ref_resid[:, n:].mean(1))
        assert float(cap.response_count[row]) == len(toks)


@pytest.mark.parametrize("arch", FAST_ARCHS)
def test_fast_and_hf_decoders_agree(arch: Arch) -> None:
    base = tiny(arch)
    prompts = prompt_ids(base)
    fast = with_decoder(base, "fast")
    hf = with_decoder(base, "hf")
    seen_f, logits_f, mask = record_prefill(fast, prompts)
    seen_h, logits_h, _ = record_prefill(hf, prompts)
    real = mask.bool()
    for layer in [EMBED_LAYER, *range(N_LAYERS)]:
        close(seen_f[layer][real], seen_h[layer][real])
    close(logits_f[real], logits_h[real])
    res_f = generate(fast, prompts, [()] * 3, GREEDY)
    res_h = generate(hf, prompts, [()] * 3, GREEDY)
    assert res_f.tokens == res_h.tokens
    for name in ("prompt_mean", "prompt_last", "response_sum", "embed_prompt_mean"):
        close(getattr(res_f.capture, name), getattr(res_h.capture, name))


# ---------------------------------------------------------------------------------------------
# Layer convention (FACTS.md): layer l = blocks.{l}.hook_resid_post = HF hidden_states[l + 1]


def test_layer_convention(decoded_model: LoadedModel) -> None:
    model = decoded_model
    p = prompt_ids(model)[1]
    seen, _, _ = record_prefill(model, [p])
    with torch.no_grad():
        hidden = model.hf_model(torch.tensor([p]), output_hidden_states=True).hidden_states
        _, bridge = bridge_resids(model, p)
    assert len(hidden) == N_LAYERS + 1
    for layer in range(N_LAYERS - 1):
        close(seen[layer][0], hidden[layer + 1][0])
        if decoder_for(model).name == "hf":  # the same modules run: bit-identical
            assert torch.equal(seen[layer][0], hidden[layer + 1][0])
    last = seen[N_LAYERS - 1][0]
    close(last, bridge[N_LAYERS - 1])
    # HF's last hidden state is after the final norm, so it is NOT layer n-1's residual ...
    assert not torch.allclose(hidden[N_LAYERS][0], last, atol=1e-2)
    # ... but that residual with the final norm applied.
    with torch.no_grad():
        close(final_norm(model)(last), hidden[N_LAYERS][0])
    for layer in range(N_LAYERS):
        close(bridge[layer], hidden[layer + 1][0] if layer < N_LAYERS - 1 else last)


def test_embedding_layer_is_hidden_state_zero(decoded_model: LoadedModel) -> None:
    """``resid_fn(-1, h)`` (the capture's ``embed_*``, exported as row 0 of persona_vectors
    files) is the residual stream before block 0: HF ``hidden_states[0]``."""
    model = decoded_model
    p = prompt_ids(model)[1]
    seen, _, _ = record_prefill(model, [p])
    with torch.no_grad():
        hidden = model.hf_model(torch.tensor([p]), output_hidden_states=True).hidden_states
    close(seen[EMBED_LAYER][0], hidden[0][0])


# ---------------------------------------------------------------------------------------------
# Sessions clean up


def test_hf_session_removes_hooks_after_an_exception(any_model: LoadedModel) -> None:
    model = with_decoder(any_model, "hf")
    bridge = model.bridge
    prompts = prompt_ids(model)[:2]
    clean = generate(model, prompts, [(), ()], SamplingConfig(max_new_tokens=3))

    def boom(layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer == 1:
            raise RuntimeError("boom")
        return h

    ids, mask = left_pad(prompts, model.pad_token_id)
    session = decoder_for(model).session(ids, mask, 3)
    with pytest.raises(RuntimeError, match="boom"):
        session.prefill(boom)
    assert all(not blk._forward_hooks for blk in bridge.blocks)
    assert not bridge.embed._forward_hooks

    # The same inside generate(), during a decoding step rather than the prompt pass.
    original = steering.LayerEdit.apply

    def apply_then_fail(self: steering.LayerEdit, h: torch.Tensor, prompt_pass: bool):
        if not prompt_pass:
            raise RuntimeError("boom in a step")
        return original(self, h, prompt_pass)

    v = torch.ones(model.d_model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steering.LayerEdit, "apply", apply_then_fail)
        with pytest.raises(RuntimeError, match="boom in a step"):
            generate(model, prompts, [(), add_plan(v[None].repeat(N_LAYERS, 1), [1], 1.0)])
    assert all(not blk._forward_hooks for blk in bridge.blocks)
    assert not bridge.embed._forward_hooks
    again = generate(model, prompts, [(), ()], SamplingConfig(max_new_tokens=3))
    assert again.tokens == clean.tokens
    assert torch.equal(again.capture.prompt_mean, clean.capture.prompt_mean)
    assert torch.equal(again.capture.response_sum, clean.capture.response_sum)


def test_fast_session_rejects_more_steps_than_its_cache(llama: LoadedModel) -> None:
    model = with_decoder(llama, "fast")
    ids, mask = left_pad(prompt_ids(model)[:1], model.pad_token_id)
    session = decoder_for(model).session(ids, mask, max_new_tokens=1)
    session.prefill()
    session.step(torch.tensor([5]))
    session.step(torch.tensor([6]))  # the extra pass that reads the last token's residuals
    with pytest.raises(RuntimeError, match="KV cache full"):
        session.step(torch.tensor([7]))


# ---------------------------------------------------------------------------------------------
# Generation details


def test_eos_stops_a_row_and_is_not_part_of_the_response(llama: LoadedModel) -> None:
    model = with_decoder(llama, "fast")
    prompts = prompt_ids(model)
    free = generate(model, prompts, [()] * 3, GREEDY)
    # Make row 1's third greedy token the EOS token: it must stop there, the others go on.
    eos_tok = free.tokens[1][2]
    stopped = generate(
        dataclasses.replace(model, eos_token_ids=frozenset({eos_tok})),
        prompts,
        [()] * 3,
        SamplingConfig(max_new_tokens=10, temperature=0.0),
    )
    first = free.tokens[1].index(eos_tok)
    assert stopped.tokens[1] == free.tokens[1][:first]
    assert stopped.finished[1] is True
    assert float(stopped.capture.response_count[1]) == first
    for row in (0, 2):
        if eos_tok not in free.tokens[row]:
            assert stopped.tokens[row] == free.tokens[row]
            assert stopped.finished[row] is False


def test_seeded_sampling_and_shared_noise(
    llama: LoadedModel,
) -> None:
    model = with_decoder(llama, "fast")
    p = prompt_ids(model)[1]
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=3, stop_at_eos=False)
    a = generate(model, [p, p], [(), ()], cfg)
    b = generate(model, [p, p], [(), ()], cfg)
    assert a.tokens == b.tokens
    assert a.tokens[0] == a.tokens[1]  # same prompt, same noise
    other = generate(model, [p, p], [(), ()], SamplingConfig(**{**cfg.__dict__, "seed": 4}))
    assert other.tokens != a.tokens
    greedy = generate(model, [p], [()], GREEDY).tokens[0][:8]
    assert a.tokens[0] != greedy  # temperature 1 really samples


def test_sampling_config_validation(llama: LoadedModel) -> None:
    for bad in (
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)
    model = llama
    with pytest.raises(ValueError, match="One steering plan per prompt"):
        generate(model, prompt_ids(model)[:2], [()], GREEDY)


def test_stream_yields_growing_prefixes_and_a_final_result(qwen2: LoadedModel) -> None:
    model = with_decoder(qwen2, "fast")
    prompts = prompt_ids(model)[:2]
    updates = list(generate_stream(model, prompts, [(), ()], GREEDY))
    assert [u.done for u in updates] == [False] * 9 + [True]
    final = updates[-1].result
    assert final is not None
    for u in updates[:-1]:
        assert u.result is None
        for row in range(2):
            assert final.tokens[row][: u.step] == u.tokens[row]


def test_stream_consumer_does_not_run_in_inference_mode(llama: LoadedModel) -> None:
    model = with_decoder(llama, "fast")
    states = [
        torch.is_inference_mode_enabled()
        for _ in generate_stream(model, prompt_ids(model)[:1], [()], GREEDY)
    ]
    assert not any(states)
