"""Compare: the baseline and up to three steered rows (different personas, layers or strengths)
in one batch; each row projected onto its own vector; Stop that still reports what was made.

Projections are checked against the capture of the same batch generated directly (generation is
deterministic and row-invariant), so "onto its own vector" is tested, not assumed.
"""

from __future__ import annotations

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_COMPARE_ROWS
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.compare import (
    CompareRequest,
    SteerOutput,
    SteerRequest,
    SteerRow,
    compare,
    compare_stream,
    steer,
)
from persona_explorer.steering import generation
from persona_explorer.steering.generation import SamplingConfig, generate
from persona_explorer.steering.ops import add_plan
from persona_explorer.steering.projection import layer_projections, token_projections
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.test_steering import expected_injected, same_as_baseline

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "What is the capital of France?"
GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_at_eos=False)


def persona(model: LoadedModel, name: str, seed: int) -> PersonaVector:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(model.n_layers, model.d_model, generator=gen)
    return PersonaVector(name=name, vectors=rows, model_id=model.model_id)


def three_personas(model: LoadedModel) -> tuple[SteerRow, ...]:
    return (
        SteerRow(persona(model, "pirate", 1), (1,), 3.0),
        SteerRow(persona(model, "poet", 2), (2,), 2.0),
        SteerRow(persona(model, "grump", 3), (0, 1), -2.0, label="grumpy"),
    )


def check_lengths(out: SteerOutput, n_layers: int) -> None:
    for row in out.rows:
        assert len(row.token_projection) == len(row.tokens) == len(row.token_strings)
        assert len(row.baseline_token_projection) == len(out.baseline.tokens)
        for values in (row.layer_projection, row.layer_injected, row.baseline_layer_projection):
            assert len(values) == n_layers


# --------------------------------------------------------------------------- rows


def test_three_personas_each_projected_onto_its_own_vector(llama: LoadedModel) -> None:
    model = llama
    rows = three_personas(model)
    out = compare(model, CompareRequest(PROMPT, rows, sampling=GREEDY))
    assert len(out.rows) == 4 and out.stopped is False
    # Default labels name what tells the rows apart: here the persona and the layers.
    labels = ["baseline", "pirate, strength 3 at layer 1", "poet, strength 2 at layer 2", "grumpy"]
    assert [r.label for r in out.rows] == labels
    assert [r.vector_name for r in out.rows] == ["pirate", "pirate", "poet", "grump"]
    assert [r.layers for r in out.rows] == [(), (1,), (2,), (0, 1)]
    assert out.layers == (1, 2, 0)
    # Each row's default read-out layer follows its own last steered layer.
    assert [r.readout_layer for r in out.rows] == [2, 2, 3, 2] and out.readout_layer == 2
    check_lengths(out, model.n_layers)

    # The same batch, generated directly: its capture is what the projections must come from.
    plans = [()] + [add_plan(r.vector.vectors, r.layers, r.strength) for r in rows]
    res = generate(model, [model.chat_ids(PROMPT)] * 4, plans, GREEDY, keep_tokens=True)
    cap = res.capture
    assert [r.tokens for r in out.rows] == res.tokens
    assert cap.response_tokens is not None
    base_tokens = cap.response_tokens[0, : len(res.tokens[0])]
    for k, (row, spec) in enumerate(zip(out.steered, rows, strict=True), start=1):
        v, at = spec.vector.vectors, row.readout_layer
        assert row.layer_projection == layer_projections(cap.response_mean[k], v).tolist()
        toks = cap.response_tokens[k, : len(res.tokens[k])]
        assert row.token_projection == token_projections(toks, v, at).tolist()
        # Row k's baseline is the baseline row seen through row k's vector.
        assert row.baseline_layer_projection == layer_projections(cap.response_mean[0], v).tolist()
        assert row.baseline_token_projection == token_projections(base_tokens, v, at).tolist()
        want = [expected_injected(v, spec.layers, spec.strength, x) for x in range(model.n_layers)]
        assert row.layer_injected == pytest.approx(want, rel=1e-12, abs=0)
        assert row.token_injected == row.layer_injected[at]
    # The baseline row is projected onto the first row's vector, as that row's baseline.
    first = out.steered[0]
    assert out.baseline.layer_projection == first.baseline_layer_projection
    assert out.baseline.token_projection == first.baseline_token_projection
    assert out.baseline.baseline_layer_projection == out.baseline.layer_projection
    assert out.baseline.layer_injected == [0.0] * model.n_layers
    # Different vectors: the rows' own baselines differ from one another.
    assert out.steered[1].baseline_layer_projection != first.baseline_layer_projection


def test_a_zero_strength_row_is_the_baseline(llama: LoadedModel) -> None:
    model = llama
    pirate, poet, _ = three_personas(model)
    rows = (SteerRow(pirate.vector, (1,), 0.0), poet, SteerRow(pirate.vector, (1,), 0.0))
    out = compare(model, CompareRequest(PROMPT, rows, sampling=GREEDY))
    same_as_baseline(out.rows[1], out.baseline)
    same_as_baseline(out.rows[3], out.baseline)
    assert out.rows[2].tokens != out.baseline.tokens
    assert out.rows[1].label == "pirate, strength 0 at layer 1"


def test_one_persona_at_three_strengths_is_steer(llama: LoadedModel) -> None:
    model = llama
    vec = persona(model, "pirate", 1)
    strengths = (1.0, 2.0, 4.0)
    rows = tuple(SteerRow(vec, (1,), s) for s in strengths)
    out = compare(model, CompareRequest(PROMPT, rows, sampling=GREEDY, readout_layer=3))
    assert [r.label for r in out.steered] == [
        "steered, strength 1",
        "steered, strength 2",
        "steered, strength 4",
    ]
    assert {r.readout_layer for r in out.rows} == {3}
    # The same as the one-persona request: one code path.
    old = steer(
        model, SteerRequest(PROMPT, vec, (1,), strengths, sampling=GREEDY, projection_layer=3)
    )
    for a, b in zip(out.rows, old.rows, strict=True):
        assert (a.label, a.text, a.layer_projection, a.token_projection) == (
            b.label,
            b.text,
            b.layer_projection,
            b.token_projection,
        )
        assert a.layer_injected == b.layer_injected
    injected = [r.token_injected for r in out.steered]
    assert injected == pytest.approx([s * injected[0] for s in strengths], rel=1e-12)


def test_one_persona_at_three_layers(llama: LoadedModel) -> None:
    model = llama
    vec = persona(model, "pirate", 1)
    rows = tuple(SteerRow(vec, (layer,), 2.0) for layer in (0, 1, 3))
    out = compare(model, CompareRequest(PROMPT, rows, sampling=GREEDY))
    labels = [r.label for r in out.steered]
    assert labels == [
        "steered, strength 2 at layer 0",
        "steered, strength 2 at layer 1",
        "steered, strength 2 at layer 3",
    ]
    assert [r.readout_layer for r in out.steered] == [1, 2, 3]
    # One vector: every row's baseline is the same baseline, at its own read-out layer.
    assert {tuple(r.baseline_layer_projection) for r in out.rows} == {
        tuple(out.baseline.layer_projection)
    }
    check_lengths(out, model.n_layers)


def test_compare_refuses_bad_requests(llama: LoadedModel) -> None:
    model = llama
    vec = persona(model, "pirate", 1)
    row = SteerRow(vec, (1,), 1.0)
    with pytest.raises(InputError, match=f"at most {MAX_COMPARE_ROWS} steered rows"):
        compare_stream(model, CompareRequest(PROMPT, (row,) * 4, sampling=GREEDY))
    with pytest.raises(InputError, match="at least one steered row"):
        compare_stream(model, CompareRequest(PROMPT, (), sampling=GREEDY))
    with pytest.raises(InputError, match="at least one layer"):
        compare(model, CompareRequest(PROMPT, (SteerRow(vec, (), 1.0),), sampling=GREEDY))
    with pytest.raises(InputError, match="out of range"):
        compare(model, CompareRequest(PROMPT, (SteerRow(vec, (4,), 1.0),), sampling=GREEDY))
    with pytest.raises(InputError, match="finite"):
        compare(model, CompareRequest(PROMPT, (SteerRow(vec, (1,), float("nan")),)))
    with pytest.raises(InputError, match="Read-out layer"):
        compare(model, CompareRequest(PROMPT, (row,), readout_layer=-1))
    other = PersonaVector(name="other", vectors=torch.ones(4, 8))
    with pytest.raises(InputError, match="d_model"):
        compare(model, CompareRequest(PROMPT, (row, SteerRow(other, (1,), 1.0))))
    # The one-persona form keeps no row limit (a strength sweep has more than three rows).
    out = steer(model, SteerRequest(PROMPT, vec, (1,), (0.0, 1.0, 2.0, 4.0), sampling=GREEDY))
    assert len(out.rows) == 5


# --------------------------------------------------------------------------- stop


class StopAfter:
    """``should_stop`` that says stop from its ``n``-th call on."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def test_stop_after_two_steps_reports_what_was_made(llama: LoadedModel) -> None:
    model = llama
    cfg = SamplingConfig(max_new_tokens=12, stop_at_eos=False)
    req = CompareRequest(PROMPT, three_personas(model), sampling=cfg)
    updates = list(compare_stream(model, req, should_stop=StopAfter(2)))
    texts, out = updates[-1]
    assert out is not None and all(o is None for _, o in updates[:-1])
    assert out.stopped is True and out.new_tokens == 4 * 2
    assert all(len(r.tokens) == 2 and not r.finished for r in out.rows)
    assert texts == [r.text for r in out.rows]
    check_lengths(out, model.n_layers)
    # What was made is what an unstopped run makes first.
    full = compare(model, CompareRequest(PROMPT, req.rows, sampling=cfg))
    assert full.stopped is False and full.new_tokens == 4 * 12
    for cut, whole in zip(out.rows, full.rows, strict=True):
        assert cut.tokens == whole.tokens[:2]
        # Not bit-identical: a longer run sizes its KV cache differently.
        assert cut.token_projection == pytest.approx(whole.token_projection[:2], abs=1e-5)
        assert cut.token_injected == whole.token_injected


def test_a_stop_that_cuts_nothing_is_not_a_stop(llama: LoadedModel) -> None:
    model = llama
    cfg = SamplingConfig(max_new_tokens=2, stop_at_eos=False)
    req = CompareRequest(PROMPT, three_personas(model)[:1], sampling=cfg)
    out = compare(model, req, should_stop=StopAfter(2))  # asked with the last token
    assert out.stopped is False and out.new_tokens == 2 * 2
    assert compare(model, req, should_stop=lambda: False).stopped is False


def test_stop_before_the_first_token_gives_empty_rows(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small prompt chunks, so that Stop is asked during the prompt pass.
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 4)
    model = llama
    req = CompareRequest(PROMPT, three_personas(model), sampling=GREEDY)
    updates = list(compare_stream(model, req, should_stop=lambda: True))
    assert len(updates) == 1
    texts, out = updates[0]
    assert out is not None and texts == ["", "", "", ""]
    assert out.stopped is True and out.new_tokens == 0 and out.tokens_per_second == 0.0
    for row in out.rows:
        assert row.text == "" and row.tokens == [] and row.token_strings == []
        assert row.token_projection == [] and row.baseline_token_projection == []
        assert row.layer_projection == [0.0] * model.n_layers  # no tokens to average
        assert row.layer_injected == [0.0] * model.n_layers and row.token_injected == 0.0
        assert row.finished is False
    check_lengths(out, model.n_layers)
