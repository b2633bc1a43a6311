"""Repetition control: the frequency and presence penalties, the word-3-gram loop measure, and
the sweep's worst-answer rule (issue 24: a class sees single answers, not the mean)."""

from __future__ import annotations

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_penalty
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.sweep_checkpoint import SweepCheckpoint
from persona_explorer.evaluate.sweep_config import Criteria, SweepConfig
from persona_explorer.evaluate.sweep_result import Cell, qualifies, recommend, word_repetition
from persona_explorer.steering.generation import SamplingConfig, _penalize, generate
from persona_explorer.steering.ops import Add
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import tiny


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny("llama")


def _prompts(model: LoadedModel) -> list[list[int]]:
    return [model.chat_ids("Tell me a story about the sea."), model.chat_ids("Hi")]


def _repeats(tokens: list[int]) -> int:
    """How many tokens of an answer repeat an earlier one."""
    return len(tokens) - len(set(tokens))


def test_penalize_subtracts_counts_row_by_row() -> None:
    logits = torch.zeros(2, 5)
    counts = torch.tensor([[0.0, 2.0, 0.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]])
    cfg = SamplingConfig(frequency_penalty=0.5, presence_penalty=1.0)
    out = _penalize(logits, counts, cfg)
    assert out.tolist() == [[0.0, -2.0, 0.0, -1.5, 0.0], [-2.5, 0.0, 0.0, 0.0, 0.0]]


def test_zero_penalty_is_exactly_plain_decoding(model: LoadedModel) -> None:
    prompts = _prompts(model)
    plain = generate(model, prompts, [(), ()], SamplingConfig(max_new_tokens=24))
    zero = generate(
        model,
        prompts,
        [(), ()],
        SamplingConfig(max_new_tokens=24, frequency_penalty=0.0, presence_penalty=0.0),
    )
    assert zero.tokens == plain.tokens
    assert torch.equal(zero.capture.response_mean, plain.capture.response_mean)


def test_frequency_penalty_breaks_greedy_loops(model: LoadedModel) -> None:
    # A random tiny model loops at once under greedy decoding; the penalty must spread it out.
    cfg = SamplingConfig(max_new_tokens=40, stop_at_eos=False)
    plain = generate(model, _prompts(model), [(), ()], cfg)
    penalized = generate(
        model,
        _prompts(model),
        [(), ()],
        SamplingConfig(**{**cfg.__dict__, "frequency_penalty": 2.0}),
    )
    assert penalized.tokens != plain.tokens
    for before, after in zip(plain.tokens, penalized.tokens, strict=True):
        assert _repeats(after) < _repeats(before)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_penalty_keeps_rows_independent(model: LoadedModel, temperature: float) -> None:
    """A row's answer is the same alone and beside a steered neighbour: the counts are its own."""
    d = model.d_model
    vec = torch.randn(d, generator=torch.Generator().manual_seed(3))
    cfg = SamplingConfig(
        max_new_tokens=24, temperature=temperature, seed=5, frequency_penalty=1.0, stop_at_eos=False
    )
    ids = _prompts(model)[0]
    alone = generate(model, [ids], [()], cfg)
    both = generate(model, [ids, ids], [(), (Add(1, vec, 8.0),)], cfg)
    assert both.tokens[0] == alone.tokens[0]
    assert both.tokens[1] != both.tokens[0]
    zero = generate(model, [ids, ids], [(), (Add(1, vec, 0.0),)], cfg)
    assert zero.tokens[1] == zero.tokens[0]


@pytest.mark.parametrize("bad", [-0.1, 2.5, float("nan"), "x"])
def test_penalty_is_checked(bad: object) -> None:
    with pytest.raises(InputError):
        check_penalty(bad)
    with pytest.raises(InputError):
        SamplingConfig(frequency_penalty=bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        SweepConfig(layers=(1,), strengths=(0.0, 1.0), frequency_penalty=bad)  # type: ignore[arg-type]


def test_word_repetition_sees_loops_whatever_the_tokens() -> None:
    assert word_repetition("") == 0.0
    assert word_repetition("a b") == 0.0
    assert word_repetition("The sea is wide and the sky is grey today.") == 0.0
    loop = "Aye, aye, aye, aye, aye, aye!"
    assert word_repetition(loop) == pytest.approx(3 / 4)
    # Case and punctuation do not hide a repeat: one of the four 3-grams repeats an earlier one.
    assert word_repetition("First, you've got. first you've got") == pytest.approx(1 / 4)
    long_loop = " ".join(["First, you've got a whole new adventure ahead of you."] * 3)
    assert word_repetition(long_loop) > 0.6


def _cell(strength: float, worst: float, rep: float = 0.05) -> Cell:
    return Cell(
        layer=10,
        strength=strength,
        trait=0.8,
        projection=1.0,
        perplexity=2.0,
        coherence=0.8,
        repetition=rep,
        texts=["..."],
        worst_repetition=worst,
    )


def test_a_cell_with_one_looping_answer_does_not_qualify() -> None:
    crit = Criteria()
    assert crit.max_worst_repetition == 0.3
    assert qualifies(_cell(1.0, 0.3), crit, 0.05)
    assert not qualifies(_cell(1.0, 0.31), crit, 0.05)
    # The mean alone would pass: low mean repetition, one looping answer.
    base = _cell(0.0, 0.0)
    chosen, _ = recommend([_cell(1.0, 0.61, rep=0.06), _cell(2.0, 0.2)], base, crit)
    assert chosen is not None and chosen.strength == 2.0
    none, why = recommend([_cell(1.0, 0.61, rep=0.06)], base, crit)
    assert none is None and "worst answer looped (0.61 > 0.3)" in why


def test_decoding_settings_key_the_sweep_checkpoint(model: LoadedModel) -> None:
    vec = PersonaVector(
        name="v", model_id=model.model_id, vectors=torch.ones(model.n_layers, model.d_model)
    )
    a = SweepConfig(layers=(1,), strengths=(0.0, 1.0), frequency_penalty=0.0)
    b = SweepConfig(layers=(1,), strengths=(0.0, 1.0), frequency_penalty=1.0)
    assert SweepCheckpoint.key_for(model, vec, ["p"], a) != SweepCheckpoint.key_for(
        model, vec, ["p"], b
    )
