"""Steering on tiny random models: what the edits do to the residual stream, row by row.

Each claim is checked where it is exact: strength 0 and unsteered rows are compared with
``torch.equal``; the steered layer against ``base + strength * v`` up to float rounding.
Both paths are covered: generation (decoders + capture) and ``steering_hooks`` around the
bridge's own ``run_with_cache``.
"""

from __future__ import annotations

import math

import pytest
import torch

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import DEFAULT_LIMITS, check_strength, parse_layers
from persona_explorer.engine import decoder_for
from persona_explorer.engine.model import LoadedModel
from persona_explorer.evaluate.compare import (
    RowOutput,
    SteerRequest,
    default_readout_layer,
    injected_components,
    steer,
)
from persona_explorer.steering import ops as steering
from persona_explorer.steering.generation import Capture, GenerationResult, SamplingConfig, generate
from persona_explorer.steering.ops import (
    Add,
    Cap,
    SteeringError,
    add_plan,
    compile_plan,
    steering_hooks,
)
from persona_explorer.steering.projection import unit_rows
from persona_explorer.vectors.persona_vector import PersonaVector
from tests.tiny_models import (
    CAPTURE_FIELDS,
    N_LAYERS,
    RESID_NAMES,
    bridge_resids,
    build_tiny,
    clean_hook_counts,
    close,
    hook_counts,
    prompt_ids,
    record_prefill,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = 1  # the steered layer: one before it, two after it
STRENGTH = 3.0
GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_at_eos=False)


def vectors(model: LoadedModel, seed: int = 1) -> torch.Tensor:
    """[n_layers, d_model] random persona rows, each about as long as a residual vector."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(model.n_layers, model.d_model, generator=gen)


def run(model: LoadedModel, prompts: list[list[int]], plans: list, **kw) -> GenerationResult:
    return generate(model, prompts, plans, kw.pop("cfg", GREEDY), keep_tokens=True, **kw)


def rows_equal(a: Capture, b: Capture, rows: list[int]) -> None:
    for name in CAPTURE_FIELDS:
        ta, tb = getattr(a, name), getattr(b, name)
        assert torch.equal(ta[rows], tb[rows]), name


def projection(h: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return (h.float() * (direction / direction.norm())).sum(-1)


# ---------------------------------------------------------------------------------------------
# Validation


def test_validation_messages() -> None:
    d = 8
    v = torch.ones(d)

    def compile_one(op: Add | Cap) -> None:
        compile_plan(
            [(op,)], n_layers=4, d_model=d, device=torch.device("cpu"), dtype=torch.float32
        )

    cases: list[tuple[Add | Cap, str]] = [
        (Add(4, v, 1.0), "Layer 4 is out of range: this model has layers 0-3"),
        (Add(-1, v, 1.0), "Layer -1 is out of range"),
        (Add(0, torch.ones(d + 1), 1.0), r"shape \(9,\); this model needs \(8,\)"),
        (Add(0, torch.ones(2, d), 1.0), r"shape \(2, 8\)"),
        (Add(0, torch.full((d,), math.nan), 1.0), "NaN or infinite"),
        (Add(0, v, math.nan), "finite"),
        (Add(0, v, math.inf), "finite"),
        (Add(0, v, 1.0, positions="prompt"), "positions must be 'all' or 'response'"),  # type: ignore[arg-type]
        (Cap(0, torch.zeros(d), 1.0), "non-zero direction"),
        (Cap(0, v, math.nan), "finite"),
        # Strength 0 skips the edit, but not the checks.
        (Add(9, v, 0.0), "out of range"),
        (Add(0, torch.ones(3), 0.0), "shape"),
    ]
    for op, message in cases:
        with pytest.raises(InputError, match=message):
            compile_one(op)
    # How strong a user may steer is a policy of the app and the CLI, not the engine's.
    compile_one(Add(0, v, 1e6))


def test_the_strength_limit_is_one_rule_for_every_caller() -> None:
    limit = DEFAULT_LIMITS.max_abs_strength
    assert check_strength(limit, DEFAULT_LIMITS) == limit  # the limit itself is allowed
    assert check_strength(-limit, DEFAULT_LIMITS) == -limit
    for bad in (limit + 1, -(limit + 1), 1e6):
        with pytest.raises(InputError, match="too large"):
            check_strength(bad, DEFAULT_LIMITS)
    for bad in (math.nan, math.inf, "x", None, True):
        with pytest.raises(InputError, match="number"):
            check_strength(bad, DEFAULT_LIMITS)


def test_invalid_plans_fail_before_anything_runs(llama: LoadedModel) -> None:
    model = llama
    prompts = prompt_ids(model)[:2]
    bad = (Add(model.n_layers, torch.ones(model.d_model), 1.0),)
    with pytest.raises(InputError, match="out of range"):
        generate(model, prompts, [(), bad])
    with pytest.raises(InputError, match="out of range"), steering_hooks(model, [bad]):
        pytest.fail("the context must not be entered")
    assert hook_counts(model) == clean_hook_counts("llama")


def test_non_integer_layer_is_rejected() -> None:
    with pytest.raises(SteeringError):
        compile_plan(
            [(Add(1.5, torch.ones(8), 1.0),)],  # type: ignore[arg-type]
            n_layers=4,
            d_model=8,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )


def test_strength_times_vector_must_fit_the_model_dtype() -> None:
    v = torch.full((8,), 100.0)  # finite, and 1000 * 100 = 1e5 > float16 max (65504)
    with pytest.raises(SteeringError):
        edits = compile_plan(
            [(Add(0, v, 1000.0),)], 4, 8, device=torch.device("cpu"), dtype=torch.float16
        )
        assert torch.isfinite(edits[0].add_all).all()  # type: ignore[union-attr]


def test_add_plan_and_parse_layers() -> None:
    rows = torch.arange(4.0)[:, None].repeat(1, 8)  # row l filled with l
    plan = add_plan(rows, [2, 0], 1.5, "response")
    assert [op.layer for op in plan] == [2, 0]
    assert all(isinstance(op, Add) and op.strength == 1.5 for op in plan)
    assert torch.equal(plan[0].vector, rows[2]) and torch.equal(plan[1].vector, rows[0])
    assert all(op.positions == "response" for op in plan)
    assert parse_layers("2", 4) == (2,)
    assert parse_layers(" 3, 1-2,1 ", 4) == (1, 2, 3)
    assert parse_layers([3, 0], 4) == (0, 3)
    for bad, message in (
        ("4", "out of range"),
        ("x", "Cannot read"),
        ("", "at least one"),
        ("0-999999999", "out of range"),  # refused before any range is built
        ("-1", "Cannot read"),
    ):
        with pytest.raises(InputError, match=message):
            parse_layers(bad, 4)


# ---------------------------------------------------------------------------------------------
# Strength 0 is no steering at all


def test_zero_strength_is_bit_identical_to_no_steering(any_model: LoadedModel) -> None:
    model = any_model
    rows = vectors(model)
    p = prompt_ids(model)[1]
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, seed=5, stop_at_eos=False)
    plain = run(model, [p, p], [(), ()], cfg=cfg)
    zero = add_plan(rows, [LAYER], 0.0) + add_plan(rows, range(N_LAYERS), 0.0, "response")
    zeroed = run(model, [p, p], [(), zero], cfg=cfg)
    assert zeroed.tokens[0] == zeroed.tokens[1]
    assert zeroed.tokens == plain.tokens
    rows_equal(zeroed.capture, plain.capture, [0, 1])
    # steering_hooks compiles to no hooks at all.
    ids = torch.tensor([p])
    clean = model.bridge(ids)
    with steering_hooks(model, [zero]) as edits:
        assert edits == {}
        assert torch.equal(model.bridge(ids), clean)


# ---------------------------------------------------------------------------------------------
# Add: the steered layer is base + strength * v, earlier layers untouched, later ones moved


def test_add_all_positions_through_generation(any_model: LoadedModel) -> None:
    model = any_model
    rows = vectors(model)
    delta = STRENGTH * rows[LAYER]
    prompts = prompt_ids(model)
    base = run(model, prompts, [()] * 3)
    steered = run(model, prompts, [add_plan(rows, [LAYER], STRENGTH)] * 3)
    b, s = base.capture, steered.capture
    for name in ("prompt_mean", "prompt_last"):
        before, after = getattr(b, name), getattr(s, name)
        assert torch.equal(after[:, :LAYER], before[:, :LAYER])
        close(after[:, LAYER], before[:, LAYER] + delta, rel=1e-5)
        for later in range(LAYER + 1, N_LAYERS):
            assert not torch.allclose(after[:, later], before[:, later], atol=1e-2)
    assert torch.equal(s.embed_prompt_mean, b.embed_prompt_mean)
    # Generation itself is steered: every row's text changes at this strength.
    assert all(st != bt for st, bt in zip(steered.tokens, base.tokens, strict=True))


def test_add_response_positions_through_generation(any_model: LoadedModel) -> None:
    """'response' edits only the last prompt token in the prompt pass: the prompt mean moves by
    delta / n_prompt_tokens, the last token by delta."""
    model = any_model
    rows = vectors(model)
    delta = STRENGTH * rows[LAYER]
    prompts = prompt_ids(model)
    base = run(model, prompts, [()] * 3)
    steered = run(model, prompts, [add_plan(rows, [LAYER], STRENGTH, "response")] * 3)
    b, s = base.capture, steered.capture
    n_tokens = torch.tensor([float(len(p)) for p in prompts])[:, None]
    assert torch.equal(s.prompt_last[:, :LAYER], b.prompt_last[:, :LAYER])
    assert torch.equal(s.prompt_mean[:, :LAYER], b.prompt_mean[:, :LAYER])
    close(s.prompt_last[:, LAYER], b.prompt_last[:, LAYER] + delta, rel=1e-5)
    close(s.prompt_mean[:, LAYER], b.prompt_mean[:, LAYER] + delta / n_tokens, rel=1e-5)


@pytest.mark.parametrize("positions", ["all", "response"])
def test_add_per_position_in_the_prompt_pass(decoded_model: LoadedModel, positions: str) -> None:
    model = decoded_model
    rows = vectors(model)
    delta = STRENGTH * rows[LAYER]
    prompts = prompt_ids(model)
    base, _, mask = record_prefill(model, prompts)
    plan = add_plan(rows, [LAYER], STRENGTH, positions)  # type: ignore[arg-type]
    steered, _, _ = record_prefill(model, prompts, [plan] * 3)
    real = mask.bool()
    for layer in range(-1, LAYER):
        assert torch.equal(steered[layer], base[layer])
    if positions == "all":
        close(steered[LAYER][real], (base[LAYER] + delta)[real], rel=1e-5)
        assert not torch.allclose(steered[LAYER + 1][real], base[LAYER + 1][real], atol=1e-2)
    else:
        close(steered[LAYER][:, -1], base[LAYER][:, -1] + delta, rel=1e-5)
        # Causal attention: editing the last position leaves every earlier (real) one
        # untouched, at this layer and every later one.
        earlier = real.clone()
        earlier[:, -1] = False
        for layer in range(LAYER, N_LAYERS):
            assert torch.equal(steered[layer][earlier], base[layer][earlier])
            assert not torch.allclose(steered[layer][:, -1], base[layer][:, -1], atol=1e-2)


@pytest.mark.parametrize("positions", ["all", "response"])
def test_add_through_steering_hooks_and_run_with_cache(
    any_model: LoadedModel, positions: str
) -> None:
    model = any_model
    rows = vectors(model)
    delta = STRENGTH * rows[LAYER]
    p = prompt_ids(model)[2]
    base_logits, base = bridge_resids(model, p)
    plan = add_plan(rows, [LAYER], STRENGTH, positions)  # type: ignore[arg-type]
    with steering_hooks(model, [plan]) as edits:
        assert set(edits) == {LAYER}
        logits, steered = bridge_resids(model, p)
    for layer in range(LAYER):
        assert torch.equal(steered[layer], base[layer])
    if positions == "all":
        close(steered[LAYER], base[LAYER] + delta, rel=1e-5)
        assert not torch.allclose(steered[LAYER + 1 :], base[LAYER + 1 :], atol=1e-2)
    else:
        assert torch.equal(steered[:, :-1], base[:, :-1])
        close(steered[LAYER, -1], base[LAYER, -1] + delta, rel=1e-5)
    assert not torch.allclose(logits[-1], base_logits[-1], atol=1e-3)
    # Outside the block the bridge is clean again.
    _, after = bridge_resids(model, p)
    assert torch.equal(after, base)


@pytest.mark.parametrize("positions", ["all", "response"])
def test_every_decoded_token_is_steered(decoded_model: LoadedModel, positions: str) -> None:
    """A steered, KV-cached generation equals a from-scratch forward over prompt + response
    with ``strength * v`` added at the steered layer (every position for 'all'; the last prompt
    token and every response token for 'response')."""
    model = decoded_model
    rows = vectors(model)
    delta = STRENGTH * rows[LAYER]
    p = prompt_ids(model)[1]
    res = run(model, [p], [add_plan(rows, [LAYER], STRENGTH, positions)])  # type: ignore[arg-type]
    toks = res.tokens[0]
    n = len(p)
    first = 0 if positions == "all" else n - 1

    def add(h: torch.Tensor, hook: object) -> torch.Tensor:
        h = h.clone()
        h[:, first:] += delta
        return h

    with model.bridge.hooks(fwd_hooks=[(RESID_NAMES[LAYER], add)]):
        logits, ref = bridge_resids(model, p + toks)  # [seq, vocab], [n_layers, seq, d]
    assert toks == logits[n - 1 : -1].argmax(-1).tolist()
    assert res.capture.response_tokens is not None
    close(res.capture.response_tokens[0].transpose(0, 1), ref[:, n:])
    close(res.capture.prompt_last[0], ref[:, n - 1])


# ---------------------------------------------------------------------------------------------
# One batch, one plan per row


def test_per_row_steering_leaves_other_rows_bit_identical(decoded_model: LoadedModel) -> None:
    model = decoded_model
    rows = vectors(model)
    prompts = prompt_ids(model)
    base = run(model, prompts, [()] * 3)
    plan = add_plan(rows, [LAYER], STRENGTH) + add_plan(rows, [LAYER + 1], 1.0, "response")
    mixed = run(model, prompts, [(), plan, ()])
    assert [mixed.tokens[0], mixed.tokens[2]] == [base.tokens[0], base.tokens[2]]
    rows_equal(mixed.capture, base.capture, [0, 2])
    assert mixed.tokens[1] != base.tokens[1]
    assert not torch.allclose(mixed.capture.prompt_last[1], base.capture.prompt_last[1])


def test_rows_with_different_strengths_match_separate_runs(llama: LoadedModel) -> None:
    model = llama
    rows = vectors(model)
    p = prompt_ids(model)[1]
    strengths = (-2.0, 0.0, 2.0)
    together = run(model, [p] * 3, [add_plan(rows, [LAYER], s) for s in strengths])
    for i, s in enumerate(strengths):
        alone = run(model, [p], [add_plan(rows, [LAYER], s)])
        assert together.tokens[i] == alone.tokens[0]
        close(together.capture.prompt_last[i], alone.capture.prompt_last[0])
        close(together.capture.response_sum[i], alone.capture.response_sum[0])


# ---------------------------------------------------------------------------------------------
# Cap: the projection never falls below the floor


def test_cap_lifts_projections_to_the_floor(decoded_model: LoadedModel) -> None:
    model = decoded_model
    direction = vectors(model, seed=7)[LAYER]
    unit = direction / direction.norm()
    prompts = prompt_ids(model)
    base, _, mask = record_prefill(model, prompts)
    real = mask.bool()
    base_proj = projection(base[LAYER][1][real[1]], direction)
    floor = float(base_proj.median())  # half the positions get lifted, half are left alone
    cap = (Cap(LAYER, direction, floor),)
    capped, _, _ = record_prefill(model, prompts, [(), cap, ()])
    h1 = capped[LAYER][1][real[1]]
    proj = projection(h1, direction)
    assert (proj >= floor - 1e-4).all()
    below = base_proj < floor
    assert below.any() and (~below).any()
    assert torch.equal(h1[~below], base[LAYER][1][real[1]][~below])  # above the floor: untouched
    # A lift moves along the direction only.
    lift = (floor - base_proj[below])[:, None] * unit
    close(h1[below], base[LAYER][1][real[1]][below] + lift, rel=1e-5)
    for layer in range(-1, N_LAYERS):
        assert torch.equal(capped[layer][[0, 2]], base[layer][[0, 2]])

    # Through generation: every response token of the capped row respects the floor too.
    high = float(base_proj.max()) + 1.0  # above every position: the cap is always active
    plain = run(model, prompts, [()] * 3)
    res = run(model, prompts, [(), (Cap(LAYER, direction, high),), ()])
    assert res.capture.response_tokens is not None
    assert (projection(res.capture.response_tokens[1, :, LAYER], direction) >= high - 1e-4).all()
    assert float(projection(res.capture.prompt_last[1, LAYER], direction)) >= high - 1e-4
    rows_equal(res.capture, plain.capture, [0, 2])


def test_cap_response_positions_and_steering_hooks(any_model: LoadedModel) -> None:
    model = any_model
    direction = vectors(model, seed=7)[LAYER]
    p = prompt_ids(model)[2]
    _, base = bridge_resids(model, p)
    floor = float(projection(base[LAYER], direction).max()) + 1.0
    with steering_hooks(model, [(Cap(LAYER, direction, floor),)]):
        _, all_capped = bridge_resids(model, p)
    with steering_hooks(model, [(Cap(LAYER, direction, floor, "response"),)]):
        _, last_capped = bridge_resids(model, p)
    assert torch.equal(all_capped[:LAYER], base[:LAYER])
    close(projection(all_capped[LAYER], direction), torch.full((len(p),), floor), rel=1e-5)
    assert torch.equal(last_capped[:, :-1], base[:, :-1])
    close(projection(last_capped[LAYER, -1], direction), torch.tensor(floor), rel=1e-5)


def test_two_caps_on_different_rows_of_one_layer(qwen2: LoadedModel) -> None:
    model = qwen2
    d1, d2 = vectors(model, seed=7)[LAYER], vectors(model, seed=8)[LAYER]
    prompts = prompt_ids(model)
    base, _, mask = record_prefill(model, prompts)
    f1 = float(projection(base[LAYER][0], d1).max()) + 0.5
    f2 = float(projection(base[LAYER][2], d2).max()) + 0.5
    capped, _, _ = record_prefill(
        model, prompts, [(Cap(LAYER, d1, f1),), (), (Cap(LAYER, d2, f2),)]
    )
    real = mask.bool()
    close(projection(capped[LAYER][0][real[0]], d1), torch.full((int(real[0].sum()),), f1))
    close(projection(capped[LAYER][2][real[2]], d2), torch.full((int(real[2].sum()),), f2))
    assert torch.equal(capped[LAYER][1], base[LAYER][1])


# ---------------------------------------------------------------------------------------------
# Hooks never outlive their block


def test_steering_hooks_are_removed_after_an_exception(any_model: LoadedModel) -> None:
    model = any_model
    arch = model.architecture
    rows = vectors(model)
    ids = torch.tensor([prompt_ids(model)[1]])
    clean = model.bridge(ids)
    with (
        pytest.raises(RuntimeError, match="user code failed"),
        steering_hooks(model, [add_plan(rows, [0, LAYER, N_LAYERS - 1], STRENGTH)]),
    ):
        assert hook_counts(model) != clean_hook_counts(arch)
        assert not torch.equal(model.bridge(ids), clean)
        raise RuntimeError("user code failed")
    assert hook_counts(model) == clean_hook_counts(arch)
    for hook_point in model.bridge.hook_dict.values():
        assert not hook_point._forward_hooks
    assert torch.equal(model.bridge(ids), clean)

    # The same when the hook itself raises in the middle of a forward.
    def fail(self: steering.LayerEdit, h: torch.Tensor, prompt_pass: bool) -> torch.Tensor:
        raise RuntimeError("edit failed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steering.LayerEdit, "apply", fail)
        with (
            pytest.raises(RuntimeError, match="edit failed"),
            steering_hooks(model, [add_plan(rows, [LAYER], STRENGTH)]),
        ):
            model.bridge(ids)
    assert hook_counts(model) == clean_hook_counts(arch)
    assert torch.equal(model.bridge(ids), clean)


def test_the_leak_detector_sees_a_leaked_hook(gpt2: LoadedModel) -> None:
    model = gpt2
    handle = model.bridge.blocks[2].register_forward_hook(lambda *args: None)
    try:
        assert hook_counts(model) != clean_hook_counts("gpt2")
    finally:
        handle.remove()
    assert hook_counts(model) == clean_hook_counts("gpt2")


# ---------------------------------------------------------------------------------------------
# Side by side (compare.steer): baseline row + one row per strength, in one batch; projections
# at a read-out layer, with the added vector's direct part (compare.py's docstring)


def test_side_by_side_rows(any_model: LoadedModel) -> None:
    model = any_model
    vec = PersonaVector(name="tiny", vectors=vectors(model), model_id=model.model_id)
    req = SteerRequest(
        prompt="What is the capital of France?",
        vector=vec,
        layers=(LAYER,),
        strengths=(0.0, STRENGTH),
        sampling=GREEDY,
    )
    out = steer(model, req)
    assert [r.strength for r in out.rows] == [0.0, 0.0, STRENGTH]
    assert out.baseline.label == "baseline" and f"{STRENGTH:g}" in out.rows[2].label
    assert out.rows[1].tokens == out.baseline.tokens  # strength 0 = the baseline, exactly
    assert out.rows[1].layer_projection == out.baseline.layer_projection
    assert out.rows[2].tokens != out.baseline.tokens
    # Read after the steered layer by default (the older name still answers).
    assert out.readout_layer == out.projection_layer == LAYER + 1
    assert out.decoder == decoder_for(model).name and out.stopped is False
    assert out.prompt == req.prompt and out.model_id == model.model_id
    for row in out.rows:
        assert len(row.layer_projection) == len(row.layer_injected) == model.n_layers
        assert len(row.token_projection) == len(row.tokens) == len(row.token_strings)
        assert row.readout_layer == LAYER + 1 and row.vector_name == "tiny"
    assert out.baseline.layers == () and out.rows[2].layers == (LAYER,)
    # The baseline row is what an unsteered generate() of the same prompt gives.
    alone = run(model, [model.chat_ids(req.prompt)], [()])
    assert out.baseline.tokens == alone.tokens[0]
    with pytest.raises(InputError, match="out of range"):
        steer(model, SteerRequest(req.prompt, vec, (model.n_layers,), (1.0,), sampling=GREEDY))
    with pytest.raises(SteeringError, match="at least one strength"):
        steer(model, SteerRequest(req.prompt, vec, (LAYER,), (), sampling=GREEDY))


def expected_injected(
    rows: torch.Tensor, layers: tuple[int, ...], strength: float, at: int
) -> float:
    """The added vectors' direct part of a projection at layer ``at``, written out."""
    unit = unit_rows(rows)[at].double()
    dots = [float(rows[layer].double() @ unit) for layer in layers if layer <= at]
    return strength * math.fsum(dots) if dots else 0.0


def same_as_baseline(row: RowOutput, base: RowOutput) -> None:
    """Everything but the label, strength and layers is bit-identical to the baseline."""
    assert row.text == base.text and row.tokens == base.tokens
    assert row.token_strings == base.token_strings and row.finished == base.finished
    assert row.layer_projection == base.layer_projection
    assert row.token_projection == base.token_projection
    assert row.baseline_layer_projection == base.layer_projection
    assert row.baseline_token_projection == base.token_projection
    assert row.layer_injected == base.layer_injected == [0.0] * len(base.layer_projection)
    assert row.token_injected == base.token_injected == 0.0


@pytest.mark.parametrize("readout", range(N_LAYERS))
def test_injected_component_at_every_read_out_layer(any_model: LoadedModel, readout: int) -> None:
    model = any_model
    rows = vectors(model)
    vec = PersonaVector(name="tiny", vectors=rows, model_id=model.model_id)
    req = SteerRequest(
        "What is the capital of France?",
        vec,
        (LAYER,),
        (0.0, STRENGTH, -STRENGTH),
        sampling=GREEDY,
        projection_layer=readout,
    )
    out = steer(model, req)
    base, zero, plus, minus = out.rows
    assert out.readout_layer == readout and {r.readout_layer for r in out.rows} == {readout}
    same_as_baseline(zero, base)  # strength 0: no steering, and nothing injected
    for row in (plus, minus):
        want = [expected_injected(rows, (LAYER,), row.strength, at) for at in range(N_LAYERS)]
        assert row.layer_injected == pytest.approx(want, rel=1e-12, abs=0)
        assert row.token_injected == row.layer_injected[readout]
        # Nothing is injected before the steered layer: exactly 0.0 (not -0.0).
        assert all(str(x) == "0.0" for x in row.layer_injected[:LAYER])
        assert row.baseline_layer_projection == base.layer_projection
        assert row.baseline_token_projection == base.token_projection
    assert plus.layer_injected == [-x for x in minus.layer_injected]
    assert plus.layer_injected[LAYER] == pytest.approx(STRENGTH * float(rows[LAYER].norm()))


def test_injected_component_sums_over_the_steered_layers(llama: LoadedModel) -> None:
    model = llama
    rows = vectors(model)
    vec = PersonaVector(name="tiny", vectors=rows, model_id=model.model_id)
    layers = (0, 2)
    out = steer(model, SteerRequest("Hi!", vec, layers, (STRENGTH,), sampling=GREEDY))
    row = out.steered[0]
    assert out.readout_layer == 3
    want = [expected_injected(rows, layers, STRENGTH, at) for at in range(N_LAYERS)]
    assert row.layer_injected == pytest.approx(want, rel=1e-12, abs=0)
    # Layer 3 carries both added vectors: <v0, u3> + <v2, u3>.
    u3 = unit_rows(rows)[3].double()
    both = STRENGTH * (float(rows[0].double() @ u3) + float(rows[2].double() @ u3))
    assert row.token_injected == pytest.approx(both, rel=1e-12)
    assert injected_components(rows, layers, 0.0) == [0.0] * N_LAYERS
    # A layer given twice is added twice.
    twice = injected_components(rows, (LAYER, LAYER), STRENGTH)
    once = injected_components(rows, (LAYER,), STRENGTH)
    assert twice == pytest.approx([2 * x for x in once], rel=1e-12)


def test_injected_component_is_the_added_vector_at_the_steered_layer(llama: LoadedModel) -> None:
    """Read at the steered layer itself, a token whose prefix the steering left unchanged has
    exactly the baseline's residual plus the added vector: projection - injected = baseline."""
    model = llama
    vec = PersonaVector(name="tiny", vectors=vectors(model), model_id=model.model_id)
    req = SteerRequest(
        "What is the capital of France?", vec, (LAYER,), (1.0,), sampling=GREEDY,
        projection_layer=LAYER,
    )  # fmt: skip
    base, row = steer(model, req).rows
    same = 0
    while same < len(row.tokens) and row.tokens[same] == base.tokens[same]:
        same += 1
    assert same >= 1  # the prompt and strength were picked so that the first token agrees
    assert abs(row.token_injected) > 1.0
    own = [v - row.token_injected for v in row.token_projection[:same]]
    assert own == pytest.approx(base.token_projection[:same], abs=1e-4)


def test_default_read_out_layer(llama: LoadedModel) -> None:
    model = llama
    last = model.n_layers - 1
    assert default_readout_layer((LAYER,), model.n_layers) == LAYER + 1
    assert default_readout_layer((2, 0), model.n_layers) == 3  # after the last, not the first
    assert default_readout_layer((last,), model.n_layers) == last  # capped
    vec = PersonaVector(name="tiny", vectors=vectors(model), model_id=model.model_id)
    for layers, want in (((0,), 1), ((0, 2), 3), ((last,), last)):
        out = steer(model, SteerRequest("Hi!", vec, layers, (1.0,), sampling=GREEDY))
        assert out.readout_layer == want
        assert [r.readout_layer for r in out.rows] == [want, want]
    with pytest.raises(InputError, match="Read-out layer 4 is out of range"):
        steer(
            model,
            SteerRequest("Hi!", vec, (LAYER,), (1.0,), sampling=GREEDY, projection_layer=4),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_side_by_side_on_cuda() -> None:
    model = build_tiny("llama", device="cuda")
    rows = vectors(model)
    res = run(model, prompt_ids(model), [(), add_plan(rows, [LAYER], STRENGTH), ()])
    assert res.capture.prompt_last.device.type == "cuda"
    vec = PersonaVector(name="tiny", vectors=rows, model_id=model.model_id)
    out = steer(model, SteerRequest("Hi!", vec, (LAYER,), (0.0, STRENGTH), sampling=GREEDY))
    same_as_baseline(out.rows[1], out.baseline)
    want = [expected_injected(rows, (LAYER,), STRENGTH, at) for at in range(model.n_layers)]
    assert out.rows[2].layer_injected == pytest.approx(want, rel=1e-12, abs=0)


def test_steering_hooks_hold_the_model_so_other_requests_wait(llama: LoadedModel) -> None:
    """In a server, another request must not run while the bridge carries someone's hooks."""
    import threading
    import time

    model = llama
    rows = vectors(model)
    ids = prompt_ids(model)[:1]
    done = threading.Event()

    def other_request() -> None:
        run(model, ids, [()])
        done.set()

    with steering_hooks(model, [add_plan(rows, [LAYER], STRENGTH)]):
        worker = threading.Thread(target=other_request)
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()
        run(model, ids, [()])  # the holder itself may still generate (the lock is re-entrant)
    worker.join(timeout=30)
    assert done.is_set()
