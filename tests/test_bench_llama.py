"""The llama.cpp comparison of ``bench``: finding llama-batched-bench, its command, parsing its
table, the alternating rounds and their median, and one real quick comparison on the embedded
model. Timings are never asserted, only structure and positivity.

``fixtures/llama_batched_bench.txt`` is the unedited output of a llama.cpp 11434.0.0 build
(``-npp 39 -ntg 64 -npl 1,2,4 -t 2 -tb 2`` on the embedded GGUF)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from persona_explorer.core.config import Settings, load_settings
from persona_explorer.dev import bench_llama
from persona_explorer.dev.bench_llama import (
    BINARY_NAME,
    LlamaRunError,
    alternate,
    build_command,
    find_batched_bench,
    format_comparison,
    median_ratio,
    parse_table,
    parse_threads,
    step_seconds_by_batch,
    summarize,
)
from persona_explorer.engine.model import LoadedModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "llama_batched_bench.txt"


# --------------------------------------------------------------------------- the table


def test_parse_table_reads_a_captured_run() -> None:
    text = FIXTURE.read_text()
    rows = parse_table(text)
    assert [r.batch for r in rows] == [1, 2, 4]
    for r in rows:
        assert (r.prompt_tokens, r.new_tokens) == (39, 64)
        assert r.kv_cells == r.batch * (39 + 64)  # unshared prompts
        assert 0 < r.prompt_seconds < r.total_seconds
        assert r.step_seconds == pytest.approx(r.generate_seconds / 64)
        assert r.step_seconds > 0
    assert parse_threads(text) == 2
    steps = step_seconds_by_batch(rows, (1, 2, 4))
    assert list(steps) == [1, 2, 4]


def test_parse_table_finds_columns_by_name() -> None:
    text = (
        "log line | with a pipe\n"
        "| B | TG | PP | N_KV | T s | T_TG s | T_PP s | extra |\n"
        "|---|----|----|------|-----|--------|--------|-------|\n"
        "| 2 | 10 | 5  | 30   | 1.5 | 1.000  | 0.500  | x     |\n"
        "\n"
        "llama_perf_context_print: ...\n"
    )
    (row,) = parse_table(text)
    assert (row.batch, row.new_tokens, row.prompt_tokens) == (2, 10, 5)
    assert row.step_seconds == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model loaded\nno table at all\n", "no llama-batched-bench table"),
        ("| PP | TG | B | T_TG s |\n|--|--|--|--|\n| 1 | 2 | 1 | 0.1 |\n", "lacks columns"),
        (
            "| PP | TG | B | N_KV | T_PP s | T_TG s | T s |\n|-|-|-|-|-|-|-|\n| 1 | x | 1 |\n",
            "unreadable",
        ),
        ("| PP | TG | B | N_KV | T_PP s | T_TG s | T s |\n|-|-|-|-|-|-|-|\n", "no rows"),
    ],
    ids=["no table", "missing columns", "bad row", "empty"],
)
def test_parse_table_refuses_what_it_cannot_read(text: str, match: str) -> None:
    with pytest.raises(LlamaRunError, match=match):
        parse_table(text)


def test_a_batch_the_tool_skipped_is_an_error() -> None:
    rows = parse_table(FIXTURE.read_text())
    with pytest.raises(LlamaRunError, match=r"no row for batch \[8\]"):
        step_seconds_by_batch(rows, (2, 8))


# --------------------------------------------------------------------------- rounds and median


def test_median_ratio_is_the_median_of_per_round_ratios() -> None:
    # Ratios 2.0, 0.5, 1.0: the median is 1.0 (a ratio of medians would be 1.5 / 1.0).
    assert median_ratio([2.0, 1.0, 1.5], [1.0, 2.0, 1.5]) == pytest.approx(1.0)
    assert median_ratio([3.0], [2.0]) == pytest.approx(1.5)  # > 1: llama.cpp slower, ours faster
    with pytest.raises(ValueError, match=r"one llama\.cpp and one own time"):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"one llama\.cpp and one own time"):
        median_ratio([], [])
    with pytest.raises(ValueError, match="positive"):
        median_ratio([1.0, 0.0], [1.0, 1.0])


def test_rounds_alternate_llama_first() -> None:
    calls: list[str] = []

    def side(name: str, seconds: float) -> Callable[[], dict[int, float]]:
        def run() -> dict[int, float]:
            calls.append(name)
            return {1: seconds, 2: seconds * 1.5}

        return run

    rounds = alternate(3, side("llama", 0.02), side("ours", 0.01))
    assert calls == ["llama", "ours"] * 3
    summary = summarize(rounds, (1, 2))
    assert len(summary["rounds"]) == 3
    assert summary["rounds"][0]["llama_step_ms"] == {"batch1": 20.0, "batch2": 30.0}
    assert summary["median"]["batch2"] == {
        "llama_step_ms": 30.0,
        "ours_step_ms": 15.0,
        "ratio": 2.0,
    }
    for r in summary["rounds"]:
        for share in r["others_cpu"].values():
            assert share is None or 0.0 <= share <= 1.0
    with pytest.raises(ValueError, match="at least one round"):
        alternate(0, side("llama", 1.0), side("ours", 1.0))


def test_a_busy_machine_is_flagged() -> None:
    rounds = [{"llama": {2: 0.03}, "ours": {2: 0.02}, "others_cpu": {"llama": 0.4, "ours": 0.0}}]
    result = {
        "skipped": None,
        "gguf": "m.gguf",
        "gguf_megabytes": 90.0,
        "prompt_tokens": 39,
        "new_tokens": 64,
        "threads": 2,
        "batches": [2],
        "target": 1.0,
        "aim": 1.5,
        **summarize(rounds, (2,)),
        "ratio": 1.5,
    }
    lines = format_comparison(result)
    assert lines[1] == (
        "  round 1: B=2 30.0 / 20.0 ms = 1.50x "
        "(other processes' CPU share: llama.cpp's run 40%, ours 0%)"
    )
    assert lines[-1].startswith("  warning: round 1 ran while other processes used over 10%")
    assert lines[-1].endswith("rerun on an idle machine")  # the only round: the median moves
    quiet = {"llama": {2: 0.03}, "ours": {2: 0.03}, "others_cpu": {"llama": 0.02, "ours": None}}
    three = {**result, **summarize([*rounds, quiet, quiet], (2,))}
    assert format_comparison(three)[-1].endswith("the median should still hold")
    assert not format_comparison({**result, **summarize([quiet], (2,))})[-1].startswith("  warn")


# --------------------------------------------------------------------------- the binary


def test_missing_configured_binary_is_a_clear_skip_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / BINARY_NAME
    found = find_batched_bench(Settings(llama_batched_bench=missing))
    assert found.path is None
    assert str(missing) in found.reason
    assert "PERSONA_EXPLORER_LLAMA_BATCHED_BENCH" in found.reason
    assert "scripts/llama_build.py" in found.reason


def test_missing_cached_build_names_the_script(tmp_path: Path) -> None:
    found = find_batched_bench(Settings(), cache_root=tmp_path)
    assert found.path is None
    script = bench_llama.build_script()
    assert f"llama.cpp-{script.VERSION}-" in found.reason  # the folder for this machine's build
    assert "run scripts/llama_build.py to build it" in found.reason


def test_the_cached_build_and_the_setting_are_found(tmp_path: Path) -> None:
    cached = bench_llama.default_binary(tmp_path)
    assert cached is not None and cached.parent.parent == tmp_path
    cached.parent.mkdir()
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o644)
    assert "not executable" in find_batched_bench(Settings(), cache_root=tmp_path).reason
    cached.chmod(0o755)
    assert find_batched_bench(Settings(), cache_root=tmp_path).path == cached
    # The setting wins over the cache, and comes from the environment through config.py.
    other = tmp_path / "custom-bench"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    settings = load_settings({"PERSONA_EXPLORER_LLAMA_BATCHED_BENCH": str(other)})
    assert settings.llama_batched_bench == other
    assert find_batched_bench(settings, cache_root=tmp_path).path == other
    assert load_settings({}).llama_batched_bench is None


def test_command_matches_our_workload(tmp_path: Path) -> None:
    cmd = build_command(tmp_path / BINARY_NAME, tmp_path / "m.gguf", 39, 64, 3, (1, 2, 4))

    def arg(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert cmd[0] == str(tmp_path / BINARY_NAME)
    assert (arg("-m"), arg("-npp"), arg("-ntg"), arg("-npl")) == (
        str(tmp_path / "m.gguf"),
        "39",
        "64",
        "1,2,4",
    )
    assert arg("-t") == arg("-tb") == "3"
    # The tool silently drops a batch whose unshared prompts and tokens do not fit.
    assert int(arg("-c")) >= 4 * (39 + 64)
    big = build_command(tmp_path / "b", tmp_path / "m.gguf", 200, 64, 2, (8,))
    assert int(big[big.index("-c") + 1]) >= 8 * (200 + 64)


def test_other_models_are_skipped_with_a_reason(llama: LoadedModel) -> None:
    vector = torch.zeros(llama.n_layers, llama.d_model)
    out = bench_llama.compare(llama, [1, 2, 3], vector, 0, rounds=1, tokens=4)
    assert out["skipped"] and "not the embedded one" in out["skipped"]
    assert format_comparison(out) == [f"llama.cpp comparison skipped: {out['skipped']}"]


# --------------------------------------------------------------------------- the real thing


def _built_binary() -> Path:
    found = find_batched_bench(load_settings())
    if found.path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{found.reason}: .ci/run must build it on CI", pytrace=False)
        pytest.skip(found.reason)
    return found.path


@pytest.mark.integration
def test_a_quick_real_comparison() -> None:
    from persona_explorer.dev.measure import PROMPT
    from persona_explorer.engine.model import load_model

    binary = _built_binary()
    model = load_model(device="cpu")
    ids = model.chat_ids(PROMPT)
    vector = torch.randn(model.n_layers, model.d_model, generator=torch.Generator().manual_seed(0))
    out = bench_llama.compare(
        model, ids, vector, model.n_layers // 2, rounds=1, tokens=6, read_bandwidth_gbs=10.0
    )
    assert out["skipped"] is None, out["skipped"]
    assert out["binary"] == str(binary)
    assert out["prompt_tokens"] == len(ids)
    assert out["llama_threads"] == out["threads"] == torch.get_num_threads()
    assert len(out["rounds"]) == 1
    for key in ("llama_step_ms", "ours_step_ms", "ratio"):
        assert set(out["rounds"][0][key]) == {"batch1", "batch2", "batch8", "batch32"}
        assert all(v > 0 for v in out["rounds"][0][key].values())
    assert out["ratio"] == out["median"]["batch2"]["ratio"] > 0
    assert out["llama_bound_ms"] > 0
    lines = format_comparison(out)
    assert any("round 1:" in line for line in lines)
    assert "target >= 1.0x, aim 1.5x" in lines[-1]
