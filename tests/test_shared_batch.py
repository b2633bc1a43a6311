"""The shared decoding batch: visitors' generations decode together and each gets exactly the
bits it gets alone (issue 25).

On the tiny random models with the fast decoder and its compiled kernel (skipped where the
kernel cannot build: then nothing can share a step, which a test below also checks).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from persona_explorer.engine import decoder_for, kernels
from persona_explorer.engine import threads as omp
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering import generation, shared_batch
from persona_explorer.steering.generation import (
    GenerationResult,
    SamplingConfig,
    generate,
    generate_stream,
)
from persona_explorer.steering.ops import RowPlan, add_plan, steering_hooks
from tests.tiny_models import CAPTURE_FIELDS, PROMPTS, tiny, with_decoder


@pytest.fixture(scope="module")
def ops() -> Any:
    module = kernels.load(True)
    if module is None:
        pytest.skip("no compiler or no AVX2: nothing shares a step")
    return module


@pytest.fixture(params=["llama", "qwen2"])  # qwen2: q/k/v biases
def model(request: pytest.FixtureRequest, ops: Any) -> Iterator[LoadedModel]:
    copy = with_decoder(tiny(request.param), "fast")
    assert decoder_for(copy).ops is not None
    yield copy
    shared_batch.stop(copy)


def job(model: LoadedModel, i: int) -> tuple[list[list[int]], list[RowPlan], SamplingConfig]:
    """The i-th visitor's request: its own prompt, vector, layer, strength, sampling and length."""
    gen = torch.Generator().manual_seed(100 + i)
    vec = torch.randn(model.n_layers, model.d_model, generator=gen)
    prompt = model.chat_ids(PROMPTS[i % len(PROMPTS)])
    rows = 1 + i % 3  # one to three rows, as Steer, the Drift chat and Compare send
    plans: list[RowPlan] = [()] + [
        add_plan(vec, [r % model.n_layers], 0.7 * r) for r in range(1, rows)
    ]
    cfg = SamplingConfig(
        max_new_tokens=6 + 2 * i,
        temperature=0.0 if i % 2 == 0 else 0.8,
        seed=i,
        frequency_penalty=0.5 * (i % 3),
        stop_at_eos=i % 4 != 0,
    )
    return [prompt] * rows, plans, cfg


def assert_same(a: GenerationResult, b: GenerationResult) -> None:
    assert a.tokens == b.tokens
    assert a.finished == b.finished and a.steps == b.steps
    for name in CAPTURE_FIELDS:
        x, y = getattr(a.capture, name), getattr(b.capture, name)
        assert torch.equal(x, y), name


def run_together(model: LoadedModel, n: int) -> list[GenerationResult]:
    results: list[GenerationResult | None] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def visitor(i: int) -> None:
        try:
            start.wait()
            results[i] = generate(model, *job(model, i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_each_visitor_gets_its_solo_answer_bit_for_bit(model: LoadedModel) -> None:
    alone = [generate(model, *job(model, i)) for i in range(12)]
    batch = shared_batch.serve(model)
    together = run_together(model, 12)
    assert batch.steps > 0 and batch.widest > 1, "the runs never shared a step"
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)


def test_the_kernel_gives_a_row_the_same_bits_in_any_batch(ops: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    for fmt_weights in (torch.randn(40, 96, generator=gen), torch.randn(33, 70, generator=gen)):
        mat = kernels.Group(ops, [kernels.plain(fmt_weights)])
        x = torch.randn(9, fmt_weights.shape[1], generator=gen)
        alone = torch.cat([mat(x[i : i + 1]) for i in range(9)])
        for rows in range(2, 10):
            assert torch.equal(mat(x[:rows]), alone[:rows]), rows


def test_what_cannot_share_runs_alone(model: LoadedModel) -> None:
    batch = shared_batch.serve(model)
    prompts = [model.chat_ids("Hi!")] * (kernels.MAX_ROWS + 1)
    wide = generate(model, prompts, [()] * len(prompts), SamplingConfig(max_new_tokens=3))
    assert len(wide.tokens) == kernels.MAX_ROWS + 1
    prompts = [model.chat_ids("Hi!")]
    loose = list(
        generate_stream(model, prompts, [()], SamplingConfig(max_new_tokens=3), row_invariant=False)
    )
    assert loose[-1].done
    # Inside steering_hooks the caller holds the compute lock, which the engine thread would
    # wait on forever: the run goes alone, and finishes.
    with steering_hooks(model, [()]):
        inside = generate(model, prompts, [()], SamplingConfig(max_new_tokens=3))
    assert len(inside.tokens[0]) <= 3
    assert batch.steps == 0


def test_the_hf_decoder_never_joins() -> None:
    hf = with_decoder(tiny("llama"), "hf")
    batch = shared_batch.serve(hf)
    try:
        res = generate(hf, [hf.chat_ids("Hi!")], [()], SamplingConfig(max_new_tokens=3))
        assert res.decoder == "hf" and batch.steps == 0
    finally:
        shared_batch.stop(hf)


def test_stop_ends_one_run_and_the_others_carry_on(model: LoadedModel) -> None:
    prompts, plans, cfg = job(model, 2)
    cfg = SamplingConfig(max_new_tokens=200, stop_at_eos=False)
    alone = generate(model, prompts, plans, cfg)
    shared_batch.serve(model)
    flag = threading.Event()
    results: dict[str, GenerationResult] = {}

    def stopped() -> None:
        for update in generate_stream(model, prompts, plans, cfg, should_stop=flag.is_set):
            flag.set()  # at the first update the reader takes
            if update.result is not None:
                results["stopped"] = update.result

    def other() -> None:
        results["other"] = generate(model, prompts, plans, cfg)

    threads = [threading.Thread(target=stopped), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert 1 <= results["stopped"].steps < cfg.max_new_tokens
    assert results["stopped"].tokens[0] == alone.tokens[0][: len(results["stopped"].tokens[0])]
    assert_same(results["other"], alone)


def test_a_reader_that_leaves_frees_its_place(model: LoadedModel) -> None:
    batch = shared_batch.serve(model)
    prompts, plans, _ = job(model, 1)
    cfg = SamplingConfig(max_new_tokens=50, stop_at_eos=False)
    stream = generate_stream(model, prompts, plans, cfg)
    next(stream)
    next(stream)
    stream.close()  # Gradio closes the generator when the visitor presses Stop or leaves
    assert batch._active == [] and not batch._joining
    again = generate(model, *job(model, 1))
    assert again.steps > 0


def test_a_failing_step_reaches_its_readers_and_the_engine_goes_on(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = shared_batch.serve(model)
    decoder = decoder_for(model)
    real = decoder.step_many
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("kernel trouble")
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder, "step_many", flaky)
    with pytest.raises(RuntimeError, match="kernel trouble"):
        generate(model, *job(model, 0))
    assert_same(generate(model, *job(model, 0)), _alone(model, 0))
    assert batch.steps > 0


def _alone(model: LoadedModel, i: int, *request: Any) -> GenerationResult:
    shared_batch.stop(model)
    try:
        return generate(model, *(request or job(model, i)))
    finally:
        shared_batch.serve(model)


def _on_thread(fn: Any) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_only_the_engine_thread_keeps_an_openmp_team(model: LoadedModel) -> None:
    """Another thread's team makes libgomp's workers sleep between regions (a step of the
    embedded model: 12.5 -> 22.6 ms): a reader runs on one thread, a long job's pass gets the
    team for the pass only, and the engine thread keeps the app's team size."""
    if omp._gomp() is None:
        pytest.skip("torch does not run on libgomp here")
    team = torch.get_num_threads()
    shared_batch.serve(model)

    def reader() -> tuple[int, int]:
        omp.single()  # what the app's handlers do (AppContext.job)
        generate(model, *job(model, 0))
        return torch.get_num_threads(), _engine_threads()

    def _engine_threads() -> int:
        batch = generation._SHARED[model]
        return batch._team if isinstance(batch, shared_batch.SharedBatch) else 0

    assert _on_thread(reader) == (1, team)

    def long_job() -> tuple[int, int, int]:
        omp.set_team(1)
        with model.compute_lock:
            inside = torch.get_num_threads()
        after = torch.get_num_threads()
        omp.set_team(3)
        with model.compute_lock:
            pass
        return inside, after, torch.get_num_threads()

    assert _on_thread(long_job) == (team, 1, 3)  # the pass's team, then its own setting back
    assert _on_thread(torch.get_num_threads) == team  # a fresh thread: the process default
    assert torch.get_num_threads() == team  # this thread was never touched


def test_a_reader_takes_updates_at_a_pace_and_never_misses_the_last(model: LoadedModel) -> None:
    """Thirty readers decoding their texts after every step held the interpreter lock the
    engine needs: a reader takes the first update at once, the last always, and partial ones
    at most every ``reading_pace`` (75 ms alone, 30 ms more per run in the batch)."""
    batch = shared_batch.serve(model)
    assert batch.reading_pace() == shared_batch.READ_EVERY_S
    prompts, plans, _ = job(model, 1)
    cfg = SamplingConfig(max_new_tokens=60, stop_at_eos=False)
    alone = _alone(model, 1, prompts, plans, cfg)
    updates = list(generate_stream(model, prompts, plans, cfg))
    assert updates[-1].done and updates[-1].result is not None
    assert_same(updates[-1].result, alone)
    assert len(updates) < cfg.max_new_tokens  # the tiny model's steps are far under 75 ms
    steps = [u.step for u in updates]
    assert steps == sorted(steps) and steps[0] == 1  # the first at once, in order


def test_the_engine_logs_what_each_busy_spell_did(
    model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    shared_batch.serve(model)

    def spells() -> list[re.Match[str]]:
        pattern = r"(\d+) runs in [\d.]+ s: (\d+) steps of ([\d.]+) rows, [\d.]+ ms each"
        lines = [r.getMessage() for r in caplog.records if "shared batch:" in r.getMessage()]
        found = [re.search(pattern, line) for line in lines]
        assert all(found), lines
        return found  # type: ignore[return-value]

    with caplog.at_level(logging.INFO, logger=shared_batch.__name__):
        together = run_together(model, 4)
        deadline = time.monotonic() + 30
        # A spell is logged once the batch is idle again; the four may have needed more than one.
        while sum(int(m[1]) for m in spells()) < 4:
            assert time.monotonic() < deadline, "no line once the batch went idle"
            time.sleep(0.01)
    found = spells()
    assert sum(int(m[1]) for m in found) == 4
    # Every step of every run ran in some logged step: at least the longest run's count, at
    # most all of them, each with between one row and all four runs' rows.
    steps = sum(int(m[2]) for m in found)
    assert max(r.steps for r in together) <= steps <= sum(r.steps for r in together)
    widest = sum(len(job(model, i)[0]) for i in range(4))
    assert all(1 <= float(m[3]) <= widest for m in found)
