"""Integration tests on the embedded SmolLM2-135M-Instruct and the shipped persona library.

Properties only, never exact strings: steered differs from baseline, the projection onto the
persona rises with strength, a persona's own words show up when steering toward it.
"""

from __future__ import annotations

import re

import pytest
import torch

from persona_explorer.core.config import Settings
from persona_explorer.engine import kernels
from persona_explorer.engine.fast_llama import FastLlamaDecoder
from persona_explorer.engine.hf import HFDecoder
from persona_explorer.engine.model import EMBEDDED_MODEL_ID, LoadedModel, load_model
from persona_explorer.evaluate.compare import SteerRequest, steer
from persona_explorer.personas.builtin import BUILTIN, builtin_dir
from persona_explorer.steering.generation import SamplingConfig, generate, left_pad
from persona_explorer.steering.ops import add_plan
from persona_explorer.steering.projection import layer_projections
from persona_explorer.vectors.files import load
from persona_explorer.vectors.persona_vector import PersonaVector, check_fits

pytestmark = pytest.mark.integration

PROMPTS = (
    "What should I cook for dinner tonight?",
    "Can you explain why the sky is blue?",
    "Give me some advice for my first day at a new job.",
)
PIRATE_WORDS = re.compile(
    r"\b(arr+|ahoy|matey|mateys|ye|aye|sea|seas|ship|sail\w*|captain|treasure|plunder|"
    r"booty|crew|pirate\w*|scallywag|landlubber|me hearties|shiver)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def library() -> dict[str, PersonaVector]:
    return {spec.name: load(builtin_dir() / f"{spec.name}.safetensors") for spec in BUILTIN}


def test_embedded_model_is_the_default_and_cached(model: LoadedModel) -> None:
    assert model.model_id == EMBEDDED_MODEL_ID
    assert (model.n_layers, model.d_model) == (30, 576)
    cached = list((Settings().cache_dir / "models").glob("smollm2-135m-*/model.safetensors"))
    assert cached, "the dequantized weights should be cached as safetensors"


def test_chat_template_has_no_stray_bos(model: LoadedModel) -> None:
    ids = model.chat_ids("Hello", system="Be brief.")
    start = model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids[1] != start
    # One <|im_start|> per message plus the assistant turn: nothing prepended twice.
    assert ids.count(start) == 3
    assert model.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_library_ships_every_builtin_with_recommended_settings(
    model: LoadedModel, library: dict[str, PersonaVector]
) -> None:
    assert {
        "evil",
        "sycophantic",
        "optimistic",
        "pessimistic",
        "formal",
        "poetic",
        "sarcastic",
        "pirate",
    } <= set(library)
    for name, vec in library.items():
        check_fits(vec, model.n_layers, model.d_model, model.model_id)
        assert vec.layer is not None and 0 <= vec.layer < model.n_layers, name
        assert vec.strength is not None and vec.strength > 0, name
        assert vec.separation is not None and len(vec.separation) == model.n_layers


def test_pirate_vector_steers_toward_pirate_speech(
    model: LoadedModel, library: dict[str, PersonaVector]
) -> None:
    vec = library["pirate"]
    assert vec.layer is not None and vec.strength is not None
    base_words = steered_words = 0
    for prompt in PROMPTS:
        out = steer(
            model,
            SteerRequest(
                prompt,
                vec,
                (vec.layer,),
                (vec.strength,),
                sampling=SamplingConfig(max_new_tokens=40),
            ),
        )
        assert out.steered[0].text != out.baseline.text
        layer = vec.layer
        assert out.steered[0].layer_projection[layer] > out.baseline.layer_projection[layer]
        base_words += len(PIRATE_WORDS.findall(out.baseline.text))
        steered_words += len(PIRATE_WORDS.findall(out.steered[0].text))
    assert steered_words > base_words


@pytest.mark.parametrize("name", ["evil", "optimistic", "formal"])
def test_projection_rises_with_strength(
    model: LoadedModel, library: dict[str, PersonaVector], name: str
) -> None:
    vec = library[name]
    assert vec.layer is not None
    strengths = (-2.0, 1.0, 2.0, 4.0)
    out = steer(
        model,
        SteerRequest(
            PROMPTS[2], vec, (vec.layer,), strengths, sampling=SamplingConfig(max_new_tokens=24)
        ),
    )
    at_layer = [row.layer_projection[vec.layer] for row in out.rows]
    baseline, steered = at_layer[0], at_layer[1:]
    assert steered[0] < baseline < steered[1] < steered[2] < steered[3]
    # Strength 1 often changes only the tone (FACTS.md); 2 and 4 must change the words.
    assert all(row.text != out.baseline.text for row in out.steered[2:])


def test_strength_zero_is_the_baseline_exactly(
    model: LoadedModel, library: dict[str, PersonaVector]
) -> None:
    vec = library["evil"]
    ids = model.chat_ids(PROMPTS[0])
    cfg = SamplingConfig(max_new_tokens=16, temperature=0.8, seed=3)
    res = generate(model, [ids, ids], [(), add_plan(vec.vectors, [15], 0.0)], cfg)
    alone = generate(model, [ids], [()], cfg)
    assert res.tokens[0] == res.tokens[1]
    assert res.capture.response_tokens is not None
    assert torch.equal(res.capture.response_tokens[0], res.capture.response_tokens[1])
    assert torch.equal(res.capture.response_mean[0], res.capture.response_mean[1])
    assert alone.tokens[0] == res.tokens[0]


def test_fast_decoder_matches_the_bridge(model: LoadedModel) -> None:
    prompts = [model.chat_ids(p) for p in PROMPTS]
    ids, mask = left_pad(prompts, model.pad_token_id)
    got: dict[str, dict[int, torch.Tensor]] = {}
    for dec in (FastLlamaDecoder(model), HFDecoder(model)):
        seen: dict[int, torch.Tensor] = {}

        def record(layer: int, h: torch.Tensor, seen: dict = seen) -> torch.Tensor:
            seen[layer] = h.clone()
            return h

        session = dec.session(ids, mask, 1)
        with torch.inference_mode():
            session.prefill(record)
        got[dec.name] = seen
    for row, p in enumerate(prompts):
        x = torch.tensor([p])
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                x, names_filter=lambda n: n.endswith("hook_resid_post")
            )
        for layer in (0, 14, 29):
            ref = cache[f"blocks.{layer}.hook_resid_post"][0]
            scale = ref.abs().max()
            for name, seen in got.items():
                h = seen[layer][row, -len(p) :]
                assert (h - ref).abs().max() <= 1e-4 * scale, (name, row, layer)


def test_projections_come_from_the_generation_passes(
    model: LoadedModel, library: dict[str, PersonaVector]
) -> None:
    """Response-mean projections equal those of one cached forward over prompt + response."""
    vec = library["optimistic"]
    ids = model.chat_ids(PROMPTS[1])
    res = generate(model, [ids], [()], SamplingConfig(max_new_tokens=12, stop_at_eos=False))
    full = torch.tensor([ids + res.tokens[0]])
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            full, names_filter=lambda n: n.endswith("hook_resid_post")
        )
    acts = torch.stack(
        [
            cache[f"blocks.{layer}.hook_resid_post"][0, len(ids) :].mean(0)
            for layer in range(model.n_layers)
        ]
    )
    expected = layer_projections(acts, vec.vectors)
    got = layer_projections(res.capture.response_mean[0], vec.vectors)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-2)


def test_decoding_steps_read_the_gguf_blocks_and_match_the_bridge(model: LoadedModel) -> None:
    """Steps run on the Q4_1/Q8_0 blocks (where the kernel compiles) and agree with the bridge
    over prompt + generated tokens, on a left-padded batch."""
    dec = FastLlamaDecoder(model)
    if dec.ops is not None:
        assert dec.kernel == f"{kernels.best_isa()}-gemv (Q4_1X+Q8_0X)"
        assert dec.step_weight_bytes < 120e6  # the blocks (repacked), not 540 MB of fp32
    prompts = [model.chat_ids(p) for p in PROMPTS[:2]]
    ids, mask = left_pad(prompts, model.pad_token_id)
    steps = 6
    session = dec.session(ids, mask, steps)
    seen: list[dict[int, torch.Tensor]] = []
    tokens: list[list[int]] = [list(p) for p in prompts]
    with torch.inference_mode():
        tok = session.prefill().argmax(-1)
        for _ in range(steps):
            for row, t in enumerate(tok.tolist()):
                tokens[row].append(int(t))
            step: dict[int, torch.Tensor] = {}
            seen.append(step)

            def record(layer: int, h: torch.Tensor, step: dict = step) -> torch.Tensor:
                step[layer] = h[:, -1].clone()
                return h

            tok = session.step(tok, record).argmax(-1)
    session.close()
    for row, p in enumerate(prompts):
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                torch.tensor([tokens[row]]), names_filter=lambda n: n.endswith("hook_resid_post")
            )
        for i in range(steps):
            for layer in (0, 14, 29):
                ref = cache[f"blocks.{layer}.hook_resid_post"][0, len(p) + i]
                got = seen[i][layer][row]
                assert (got - ref).abs().max() <= 1e-4 * ref.abs().max(), (row, i, layer)


def test_gguf_blocks_are_stored_once_and_a_read_only_cache_still_gets_them(
    model: LoadedModel, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persona_explorer.engine import model as model_module
    from persona_explorer.engine.gguf_blocks import BLOCK_FILE

    cfg = model.hf_model.config

    def refuse(*_args: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(model_module, "save_blocks", refuse)
    unsaved = model_module._embedded_blocks(tmp_path, cfg)
    assert not (tmp_path / BLOCK_FILE).exists()
    monkeypatch.undo()
    stored = model_module._embedded_blocks(tmp_path, cfg)
    assert (tmp_path / BLOCK_FILE).is_file()
    for blocks in (unsaved, stored):
        assert set(blocks) == set(model.quantized)
        assert blocks["lm_head.weight"] is blocks["model.embed_tokens.weight"]
        name = "model.layers.3.self_attn.k_proj.weight"
        assert torch.equal(blocks[name].data, model.quantized[name].data)
    assert {q.kind for q in stored.values()} == {"Q4_1", "Q8_0"}
