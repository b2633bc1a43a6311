"""Persona extraction: the pure math on planted directions, and extract_persona end to end."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from persona_explorer.engine.model import LoadedModel
from persona_explorer.personas.definitions import custom_persona
from persona_explorer.personas.extract import (
    REFERENCE_RATIO,
    STRENGTH_STEP,
    ExtractionConfig,
    cohens_d,
    extract_persona,
    mean_difference,
    recommend_strength,
    separation_scores,
    suggest_layer,
    system_prompt_pairs,
)
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import bridge_resids, close, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

N_LAYERS, D = 6, 32
PLANTED = 3


def planted_acts(
    n: int = 100, strength: float = 10.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pos/neg activations [n, n_layers, d]: shared noise and offset, plus a planted direction
    (strongly at layer PLANTED, weakly elsewhere) in pos only. Returns (pos, neg, directions)."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(N_LAYERS, D, generator=gen)
    directions /= directions.norm(dim=-1, keepdim=True)
    offset = 5.0 * torch.randn(N_LAYERS, D, generator=gen)  # common to both: must cancel
    amount = torch.full((N_LAYERS, 1), 0.5)
    amount[PLANTED] = strength
    pos = torch.randn(n, N_LAYERS, D, generator=gen) + offset + amount * directions
    neg = torch.randn(n, N_LAYERS, D, generator=gen) + offset
    return pos, neg, directions


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


# ---------------------------------------------------------------------------------------------
# Pure math


def test_mean_difference_recovers_the_planted_direction() -> None:
    pos, neg, directions = planted_acts()
    v = mean_difference(pos, neg)
    assert v.shape == (N_LAYERS, D)
    assert cosine(v[PLANTED], directions[PLANTED]) > 0.99
    assert abs(float(v[PLANTED].norm()) - 10.0) < 1.0  # raw, not normalised
    torch.testing.assert_close(v, pos.mean(0) - neg.mean(0))
    # Unequal group sizes are fine; half precision comes back as float32.
    assert mean_difference(pos[:7].half(), neg[:3].half()).dtype == torch.float32
    with pytest.raises(ValueError, match="at least one pos and one neg"):
        mean_difference(pos[:0], neg)
    with pytest.raises(ValueError, match="at least one pos and one neg"):
        mean_difference(pos, neg[:0])


def test_separation_peaks_at_the_planted_layer() -> None:
    pos, neg, _ = planted_acts()
    scores, cross_validated = separation_scores(pos, neg, seed=0)
    assert cross_validated
    assert scores.shape == (N_LAYERS,)
    assert int(scores.argmax()) == PLANTED
    assert float(scores[PLANTED]) > 5.0  # planted 10 units apart in unit-variance noise
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1 :]])
    assert float(others.max()) < 1.5
    again, _ = separation_scores(pos, neg, seed=0)
    assert torch.equal(scores, again)
    assert suggest_layer(scores.tolist()) == PLANTED


def test_separation_is_cross_validated_so_pure_noise_scores_low() -> None:
    """With 32 dimensions and 6 samples per group an in-sample direction separates pure noise
    well; the held-out score must not."""
    gen = torch.Generator().manual_seed(3)
    pos = torch.randn(6, N_LAYERS, D, generator=gen)
    neg = torch.randn(6, N_LAYERS, D, generator=gen)
    held_out, cv = separation_scores(pos, neg)
    assert cv
    direction = mean_difference(pos, neg)
    unit = direction / direction.norm(dim=-1, keepdim=True)
    in_sample = cohens_d((pos * unit).sum(-1), (neg * unit).sum(-1))
    assert float(in_sample.mean()) > 2.0
    assert float(held_out.mean()) < float(in_sample.mean()) / 2


def test_separation_without_enough_samples_is_in_sample() -> None:
    pos, neg, _ = planted_acts(n=3)
    scores, cv = separation_scores(pos, neg)
    assert not cv
    direction = mean_difference(pos, neg)
    unit = direction / direction.norm(dim=-1, keepdim=True)
    expected = cohens_d((pos * unit).sum(-1), (neg * unit).sum(-1))
    torch.testing.assert_close(scores, expected)


def test_cohens_d_matches_a_hand_computation() -> None:
    pos = torch.tensor([[1.0, 10.0], [2.0, 12.0], [4.0, 11.0], [5.0, 15.0]])  # [n, n_layers]
    neg = torch.tensor([[0.0, 10.0], [1.0, 9.0], [-1.0, 11.0]])
    got = cohens_d(pos, neg)
    for layer in range(2):
        a, b = pos[:, layer].tolist(), neg[:, layer].tolist()
        pooled = ((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)) / (
            len(a) + len(b) - 2
        )
        expected = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(pooled)
        assert float(got[layer]) == pytest.approx(expected, rel=1e-6)
    assert float(cohens_d(neg, pos)[0]) == pytest.approx(-float(got[0]))


def test_cohens_d_edge_cases() -> None:
    one, two = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]])
    assert torch.equal(cohens_d(one, two), torch.zeros(2))  # two samples: no variance estimate
    # A single pos sample contributes no variance; the neg side's variance is the pooled one.
    neg = torch.tensor([[0.0], [2.0]])
    assert float(cohens_d(torch.tensor([[4.0]]), neg)[0]) == pytest.approx(3 / math.sqrt(2))
    # Zero variance does not divide by zero.
    same = torch.ones(3, 1)
    assert torch.isfinite(cohens_d(same * 2, same)).all()
    assert float(cohens_d(same, same)[0]) == 0.0


def test_suggest_layer_stays_in_the_middle() -> None:
    sep = [0.0, 9.0, 0, 0, 0, 0, 5.0, 0, 0, 0, 0, 9.0]  # n = 12: layers 0-1 and 10-11 ignored
    assert suggest_layer(sep) == 6
    assert suggest_layer([1.0, 3.0, 2.0]) == 1  # fewer than 6 layers: all count
    assert suggest_layer([9.0, 1.0, 2.0, 3.0, 0.0, 9.0]) == 3  # n = 6: layers 1-4
    assert suggest_layer([0.5]) == 0


def test_extraction_config_validation() -> None:
    for bad in (
        {"variant": "mean"},
        {"samples": 0},
        {"samples": 65},
        {"n_questions": 0},
        {"batch_size": 0},
    ):
        with pytest.raises(ValueError):
            ExtractionConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# extract_persona on a tiny model

PERSONA = custom_persona(
    "tiny_pirate",
    pos_prompts=["You are a pirate. Talk like one.", "Answer like an old sea captain."],
    neg_prompts=["You are a helpful assistant.", "Answer plainly."],
    questions=["What is the capital of France?", "How do I bake bread?", "Unused question?"],
)


def extraction(**kw: object) -> ExtractionConfig:
    defaults: dict[str, object] = {"n_questions": 2, "max_new_tokens": 4, "batch_size": 3}
    return ExtractionConfig(**{**defaults, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # fast decoder and HF decoder
def test_extract_persona_end_to_end(arch: str) -> None:
    model = tiny(arch)  # type: ignore[arg-type]
    progress: list[float] = []
    res = extract_persona(model, PERSONA, extraction(), progress=lambda f, _msg: progress.append(f))
    vec = res.vector
    assert isinstance(vec, PersonaVector)
    assert vec.vectors.shape == (model.n_layers, model.d_model)
    assert torch.isfinite(vec.vectors).all() and vec.vectors.abs().sum() > 0
    assert vec.name == "tiny_pirate" and vec.model_id == model.model_id
    assert vec.variant == "response"
    assert vec.separation is not None and len(vec.separation) == model.n_layers
    assert all(math.isfinite(s) for s in vec.separation)
    assert vec.layer == suggest_layer(vec.separation)
    assert vec.embedding is not None and vec.embedding.shape == (model.d_model,)
    assert set(res.by_variant) == {"response", "prompt", "last"}
    assert torch.equal(vec.vectors, res.by_variant["response"].vectors)

    # 2 pairs x 2 questions x 1 sample, one pos and one neg rollout each.
    assert len(res.rollouts) == 8
    assert [r.side for r in res.rollouts] == ["pos", "neg"] * 4
    assert {r.question for r in res.rollouts} == set(PERSONA.questions[:2])
    counts = vec.metadata["counts"]
    empty = sum(not r.response.strip() for r in res.rollouts)
    assert counts["empty_responses"] == empty
    assert counts["pos"] == sum(r.side == "pos" and bool(r.response.strip()) for r in res.rollouts)
    assert counts["neg"] == sum(r.side == "neg" and bool(r.response.strip()) for r in res.rollouts)
    assert counts["pos"] + counts["neg"] + empty == 8
    assert (counts["pairs"], counts["questions"], counts["samples"]) == (2, 2, 1)
    assert vec.metadata["settings"]["max_new_tokens"] == 4
    assert res.cross_validated == vec.metadata["separation_cross_validated"]
    assert progress and progress[-1] == 1.0

    # Seeded: the same call gives the same vector, bit for bit.
    again = extract_persona(model, PERSONA, extraction())
    assert torch.equal(again.vector.vectors, vec.vectors)
    assert [r.response for r in again.rollouts] == [r.response for r in res.rollouts]


def prompt_side_reference(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The 'last' and 'prompt' variants computed by hand, one unpadded forward per prompt."""
    acts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"pos": [], "neg": []}
    for pos, neg in system_prompt_pairs(PERSONA, model.display_name):
        for question in PERSONA.questions[:2]:
            for side, system in (("pos", pos), ("neg", neg)):
                _, resid = bridge_resids(model, model.chat_ids(question, system=system))
                acts[side].append((resid[:, -1], resid.mean(1)))  # [n_layers, d] each
    last = mean_difference(
        torch.stack([a[0] for a in acts["pos"]]), torch.stack([a[0] for a in acts["neg"]])
    )
    mean = mean_difference(
        torch.stack([a[1] for a in acts["pos"]]), torch.stack([a[1] for a in acts["neg"]])
    )
    return last, mean


def test_prompt_variants_match_a_hand_computation(qwen2: LoadedModel) -> None:
    """Rollouts are sorted by prompt length and cut into batches of 3; every row's activations
    must still land on its own pos/neg side."""
    model = qwen2
    last, mean = prompt_side_reference(model)
    res = extract_persona(model, PERSONA, extraction(variant="last", temperature=0.0))
    close(res.by_variant["last"].vectors, last)
    close(res.by_variant["prompt"].vectors, mean)
    assert torch.equal(res.vector.vectors, res.by_variant["last"].vectors)
    assert res.vector.variant == "last"
    # Prompt-side variants use every rollout, empty responses included.
    assert res.vector.metadata["counts"]["pos"] == res.vector.metadata["counts"]["neg"] == 4


def test_extraction_can_be_stopped(llama: LoadedModel) -> None:
    with pytest.raises(InterruptedError):
        extract_persona(llama, PERSONA, extraction(), should_stop=lambda: True)


def test_vector_metadata_holds_no_machine_paths() -> None:
    """Metadata travels to other machines and to visitors: no absolute paths in it."""
    import json
    from pathlib import Path

    from persona_explorer.personas.extract import portable_source
    from persona_explorer.vectors.files import load

    assert portable_source("/home/me/assets/personas/traits/instructions/evil.json") == (
        "traits/evil.json"
    )
    assert portable_source("/tmp/mine.json") == "mine.json"
    for path in sorted(Path("assets/vectors").glob("*.safetensors")):
        text = json.dumps(load(path).metadata)
        assert "/work/" not in text and "/home/" not in text and "/root/" not in text, path


# ---------------------------------------------------------------------------------------------
# Recommended layer and strength

# R(L) on the embedded model, as recommend_strength's docstring reports it.
REFERENCE_RESIDUAL_NORMS = {10: 106.1, 14: 113.1, 18: 156.8, 22: 253.2}


def shipped_builtins() -> list[PersonaVector]:
    from pathlib import Path

    from persona_explorer.vectors.files import load

    vecs = [load(p) for p in sorted(Path("assets/vectors").glob("*.safetensors"))]
    if not vecs:
        pytest.skip("no shipped built-in vectors")
    return vecs


def test_recommend_strength_scales_with_the_residual_and_rounds() -> None:
    assert recommend_strength(10.0, 100.0, ratio=0.3) == 3.0
    assert recommend_strength(20.0, 100.0, ratio=0.3) == 1.5  # twice the vector, half as strong
    assert recommend_strength(7.0, 100.0, ratio=0.3) == 4.25  # 4.29 to the nearest quarter
    assert recommend_strength(1000.0, 1.0) == STRENGTH_STEP  # never rounds down to nothing
    assert recommend_strength(1e-30, 100.0) == 100.0  # capped, not infinite
    for vector_norm, residual_norm in ((0.0, 100.0), (1.0, 0.0), (math.nan, 1.0), (1.0, math.inf)):
        assert recommend_strength(vector_norm, residual_norm) is None


def test_builtin_strengths_lie_on_the_sweep_grid_around_the_rule() -> None:
    """The rule gives the unit of the built-in check's sweep grid (0.5x to 3x of it); every
    shipped strength is a point of that grid, so at most its top: the check keeps the
    strongest setting whose every answer holds up (README, Built-in personas)."""
    from persona_explorer.dev.builtin_check import MULTIPLES, strengths_for

    for vec in shipped_builtins():
        assert vec.layer in REFERENCE_RESIDUAL_NORMS and vec.strength, vec.name
        assert vec.strength in strengths_for(vec), (vec.name, vec.strength)
        norm = float(vec.vectors[vec.layer].norm())
        got = recommend_strength(norm, REFERENCE_RESIDUAL_NORMS[vec.layer])
        assert got is not None and vec.strength / 3 <= got, (vec.name, got)
        ratio = vec.strength * norm / REFERENCE_RESIDUAL_NORMS[vec.layer]
        assert 0.25 * REFERENCE_RATIO < ratio <= max(MULTIPLES) * REFERENCE_RATIO * 1.01, (
            vec.name,
            ratio,
        )


def test_suggested_layer_stays_near_the_builtins_recorded_layers() -> None:
    vecs = shipped_builtins()
    recorded = [v.layer for v in vecs if v.layer is not None]
    for vec in vecs:
        assert vec.separation is not None
        n = len(vec.separation)
        layer = suggest_layer(vec.separation)
        assert n // 6 <= layer < n - n // 6
        assert min(recorded) - 2 <= layer <= max(recorded) + 2, (vec.name, layer)


@pytest.mark.parametrize("variant", ["response", "last"])
def test_extraction_records_a_strength_and_how_it_was_chosen(
    llama: LoadedModel, variant: str
) -> None:
    res = extract_persona(llama, PERSONA, extraction(variant=variant))
    for vec in (res.vector, *res.by_variant.values()):
        assert vec.strength is not None and math.isfinite(vec.strength) and vec.strength > 0
        rule = vec.metadata["strength_rule"]
        assert rule["layer"] == vec.layer and rule["ratio"] == REFERENCE_RATIO
        assert "residual norm" in rule["rule"]
        assert vec.strength == recommend_strength(rule["vector_norm"], rule["residual_norm"])
    assert len(res.residual_norms) == llama.n_layers
    assert res.vector.metadata["strength_rule"]["residual_norm"] == pytest.approx(
        res.residual_norms[res.vector.layer], abs=0.01
    )


@pytest.mark.integration
def test_residual_norms_measured_while_extracting_match_the_reference() -> None:
    """On the embedded model a small extraction measures the same scale the rule was calibrated
    on (the residual norms that the built-in check's sweep grid is built from)."""
    from persona_explorer.engine.model import load_model
    from persona_explorer.personas.data import load_builtin

    model = load_model()
    res = extract_persona(
        model, load_builtin("pirate", "role"), ExtractionConfig(n_questions=2, max_new_tokens=16)
    )
    for layer, reference in REFERENCE_RESIDUAL_NORMS.items():
        assert res.residual_norms[layer] == pytest.approx(reference, rel=0.15), layer
    assert res.vector.strength is not None and 0.25 <= res.vector.strength <= 12
