"""Our side-by-side decode against llama.cpp's ``llama-batched-bench`` on the same GGUF.

The embedded model ships as a Q4_1 GGUF; llama.cpp runs that file directly, we run its weights
dequantized. Each round runs ``llama-batched-bench`` once (batches 1, 2, 8 and 32 of ``tokens``
generated tokens after a prompt as long as ours, with our thread count), then our decode once at
the same batch sizes, so slow drifts of a shared machine hit both sides alike. The headline is
the median over rounds of (llama.cpp batch-2 step time / our batch-2 step time): above 1 we are
faster. Target >= 1.0x, aim 1.5x.

A step is one decoding pass over every row of the batch. llama.cpp's is ``T_TG / TG`` from its
table (it feeds random tokens and samples nothing); ours, up to ``kernels.MAX_ROWS`` rows, is
timed between the streamed updates of :func:`.generation.generate_stream`, the loop the Steer
tab runs (steering edits, activation capture, greedy sampling), excluding the prompt pass; above
that, as the shared batch runs a class: ``rows / 2`` visitors' side-by-side runs, each with its
own steering and capture, stepped together by ``step_many`` (:func:`shared_step_seconds`).

``python bench/bench_llama.py [--rounds 3] [--tokens 64] [--json]`` runs only this comparison;
``python -m persona_explorer bench`` includes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from persona_explorer.core.config import REPO_ROOT, Settings, default_cache_dir, load_settings
from persona_explorer.dev.bench_steps import our_step_seconds, row_plans, shared_step_seconds
from persona_explorer.engine import kernels
from persona_explorer.engine.model import EMBEDDED_MODEL_ID, LoadedModel, embedded_gguf_path

# One visitor (1, 2: a steered answer, or Steer's side by side) and a class (8, 32 rows: four
# and sixteen visitors' side-by-side runs in the shared batch).
BATCHES = (1, 2, 8, 32)
HEADLINE_BATCH = 2
TARGET = 1.0
AIM = 1.5
BUILD_SCRIPT = REPO_ROOT / "scripts" / "llama_build.py"
BINARY_NAME = "llama-batched-bench"
RUN_TIMEOUT_S = 600
# Other processes' share of the CPUs above which a round is flagged as run on a busy machine.
BUSY_WARNING = 0.1


# --------------------------------------------------------------------------- finding the binary


@dataclass(frozen=True)
class Lookup:
    """Where llama-batched-bench is, or why there is none (``path`` None, ``reason`` says)."""

    path: Path | None
    reason: str = ""


def build_script() -> Any:
    """``scripts/llama_build.py`` as a module (it is a standalone script: the system Python runs
    it before the venv exists), or None where the repository's scripts are not there."""
    spec = importlib.util.spec_from_file_location("llama_build", BUILD_SCRIPT)
    if spec is None or spec.loader is None or not BUILD_SCRIPT.is_file():
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("llama_build", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def default_binary(cache_root: Path | None = None) -> Path | None:
    """Where ``scripts/llama_build.py`` caches the build for this machine: the user cache dir
    (not the app's ``PERSONA_EXPLORER_CACHE``, which the script does not know), in a folder named
    for the llama.cpp version and a digest of the build options and this CPU's extensions."""
    script = build_script()
    if script is None:
        return None
    root = cache_root if cache_root is not None else default_cache_dir()
    return script.plan(root=root).dest / BINARY_NAME


def build_record(binary: Path) -> dict[str, Any] | None:
    """The build's record beside the binary (options, extensions, compiler), if it has one."""
    try:
        record = json.loads((binary.parent / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def find_batched_bench(settings: Settings, cache_root: Path | None = None) -> Lookup:
    """The configured binary (``PERSONA_EXPLORER_LLAMA_BATCHED_BENCH``) or the cached build.

    A configured path that does not work is reported, not replaced by the cached build: the
    operator asked for that one."""
    build = f"run {BUILD_SCRIPT.relative_to(REPO_ROOT)} to build it"
    if settings.llama_batched_bench is not None:
        path = settings.llama_batched_bench
        origin = "PERSONA_EXPLORER_LLAMA_BATCHED_BENCH"
    else:
        found = default_binary(cache_root)
        if found is None:
            return Lookup(None, f"no build script at {BUILD_SCRIPT}")
        path, origin = found, "the llama.cpp build cache"
    if not path.is_file():
        return Lookup(None, f"no {BINARY_NAME} at {path} ({origin}; {build})")
    if not os.access(path, os.X_OK):
        return Lookup(None, f"{path} ({origin}) is not executable")
    return Lookup(path)


# --------------------------------------------------------------------------- running llama.cpp


def context_size(prompt_tokens: int, new_tokens: int, batches: Sequence[int]) -> int:
    """KV cells for the largest batch with unshared prompts (llama-batched-bench silently skips
    a batch that does not fit), rounded up to 256, at least 1024."""
    need = max(batches) * (prompt_tokens + new_tokens)
    return max(1024, -(-need // 256) * 256)


def build_command(
    binary: Path,
    gguf: Path,
    prompt_tokens: int,
    new_tokens: int,
    threads: int,
    batches: Sequence[int] = BATCHES,
) -> list[str]:
    """``llama-batched-bench`` at its defaults but for the workload: one prompt per sequence
    (unshared: ours runs the prompt once per row too), the same thread count for prompt and
    generation."""
    ctx = context_size(prompt_tokens, new_tokens, batches)
    return [
        str(binary),
        "-m",
        str(gguf),
        "-c",
        str(ctx),
        "-b",
        "512",
        "-ub",
        "512",
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(new_tokens),
        "-npl",
        ",".join(str(b) for b in batches),
        "-t",
        str(threads),
        "-tb",
        str(threads),
    ]


class LlamaRunError(RuntimeError):
    """llama-batched-bench exited badly or printed no usable table."""


def run_batched_bench(command: Sequence[str], timeout_s: float = RUN_TIMEOUT_S) -> str:
    """Its output, stdout then stderr (the table goes to stdout, the loading log to stderr)."""
    try:
        proc = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise LlamaRunError(f"{BINARY_NAME} ran past {timeout_s:.0f} s") from None
    except OSError as exc:
        raise LlamaRunError(f"{BINARY_NAME} did not start: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-1500:].strip()
        raise LlamaRunError(f"{BINARY_NAME} exited with {proc.returncode}: {tail}")
    return proc.stdout + "\n" + proc.stderr


# --------------------------------------------------------------------------- parsing its table


@dataclass(frozen=True)
class BenchRow:
    """One row of llama-batched-bench's table (times in seconds)."""

    prompt_tokens: int  # PP
    new_tokens: int  # TG
    batch: int  # B
    kv_cells: int  # N_KV
    prompt_seconds: float  # T_PP s
    generate_seconds: float  # T_TG s
    total_seconds: float  # T s

    @property
    def step_seconds(self) -> float:
        """One decoding step over all ``batch`` sequences."""
        return self.generate_seconds / self.new_tokens


_COLUMNS = {
    "PP": "prompt_tokens",
    "TG": "new_tokens",
    "B": "batch",
    "N_KV": "kv_cells",
    "T_PP s": "prompt_seconds",
    "T_TG s": "generate_seconds",
    "T s": "total_seconds",
}
_SEPARATOR = re.compile(r"^[\s|:-]+$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_header(line: str) -> bool:
    return line.lstrip().startswith("|") and {"PP", "TG", "B", "T_TG s"} <= set(_cells(line))


def parse_table(text: str) -> list[BenchRow]:
    """The rows of the markdown table in ``text`` (log lines around it are ignored).

    Columns are found by their header names, so added or reordered columns do not matter."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _is_header(line)), None)
    if start is None:
        raise LlamaRunError(f"no {BINARY_NAME} table (header with PP, TG, B, T_TG s) in output")
    header = _cells(lines[start])
    missing = [name for name in _COLUMNS if name not in header]
    if missing:
        raise LlamaRunError(f"{BINARY_NAME} table lacks columns {missing}")
    index = {field: header.index(name) for name, field in _COLUMNS.items()}
    rows: list[BenchRow] = []
    for line in lines[start + 1 :]:
        if not line.lstrip().startswith("|"):
            break  # the table ends at the first line that is not a row
        if _SEPARATOR.match(line):
            continue
        cells = _cells(line)
        try:
            values = {field: float(cells[i]) for field, i in index.items()}
            rows.append(
                BenchRow(
                    prompt_tokens=int(values["prompt_tokens"]),
                    new_tokens=int(values["new_tokens"]),
                    batch=int(values["batch"]),
                    kv_cells=int(values["kv_cells"]),
                    prompt_seconds=values["prompt_seconds"],
                    generate_seconds=values["generate_seconds"],
                    total_seconds=values["total_seconds"],
                )
            )
        except (IndexError, ValueError) as exc:
            raise LlamaRunError(f"unreadable {BINARY_NAME} row {line.strip()!r}: {exc}") from None
    if not rows:
        raise LlamaRunError(f"{BINARY_NAME} table has no rows")
    return rows


def parse_threads(text: str) -> int | None:
    """The generation thread count llama-batched-bench reports using (``n_threads = N``)."""
    found = re.search(r"\bn_threads = (\d+)", text)
    return int(found.group(1)) if found else None


def step_seconds_by_batch(rows: Sequence[BenchRow], batches: Sequence[int]) -> dict[int, float]:
    """Step time per batch size; every asked-for batch must be there (the tool skips, silently,
    a batch whose KV cache does not fit)."""
    by_batch = {row.batch: row.step_seconds for row in rows}
    missing = [b for b in batches if b not in by_batch]
    if missing:
        raise LlamaRunError(f"{BINARY_NAME} printed no row for batch {missing}")
    return {b: by_batch[b] for b in batches}


# --------------------------------------------------------------------------- rounds


def median_ratio(llama_s: Sequence[float], ours_s: Sequence[float]) -> float:
    """Median over rounds of llama.cpp's step time / ours (> 1: we are faster). Each round's
    ratio pairs two runs made back to back, so the median of ratios, not a ratio of medians."""
    if len(llama_s) != len(ours_s) or not llama_s:
        raise ValueError("one llama.cpp and one own time per round are needed")
    if min(*llama_s, *ours_s) <= 0:
        raise ValueError("step times must be positive")
    return statistics.median(a / b for a, b in zip(llama_s, ours_s, strict=True))


class CpuWatch:
    """The share of this machine's CPUs that other processes used while it ran: on a shared
    machine llama.cpp's spinning thread barriers slow down far more than our decode does (a
    neighbour on one of 2 cores made its steps 10-100x slower), so each round says how busy the
    machine was. None where ``/proc/stat`` does not exist."""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(f) for f in fields]
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy;
        # steal is the hypervisor giving the CPU to another guest, contention all the same.
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()

    def others_share(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        busy = end[0] - self._start[0]
        own = end[1] - self._start[1]
        wall = end[2] - self._start[2]
        if wall <= 0:
            return None
        return round(min(1.0, max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))), 3)


def alternate(
    rounds: int,
    run_llama: Callable[[], Mapping[int, float]],
    run_ours: Callable[[], Mapping[int, float]],
) -> list[dict[str, Any]]:
    """``rounds`` rounds of llama.cpp once then ours once; each run gives step seconds by batch,
    and each is watched for other processes' CPU use."""
    if rounds < 1:
        raise ValueError("at least one round is needed")
    out = []
    for _ in range(rounds):
        watch = CpuWatch()
        llama = dict(run_llama())
        llama_busy = watch.others_share()
        watch = CpuWatch()
        ours = dict(run_ours())
        out.append(
            {
                "llama": llama,
                "ours": ours,
                "others_cpu": {"llama": llama_busy, "ours": watch.others_share()},
            }
        )
    return out


def summarize(rounds: Sequence[Mapping[str, Any]], batches: Sequence[int]) -> dict[str, Any]:
    """Per-round step times and ratios, and per batch the medians (ratio: of per-round ratios)."""

    def ms(s: float) -> float:
        return round(s * 1e3, 2)

    per_round = [
        {
            "llama_step_ms": {f"batch{b}": ms(r["llama"][b]) for b in batches},
            "ours_step_ms": {f"batch{b}": ms(r["ours"][b]) for b in batches},
            "ratio": {f"batch{b}": round(r["llama"][b] / r["ours"][b], 3) for b in batches},
            "others_cpu": dict(r.get("others_cpu", {})),
        }
        for r in rounds
    ]
    medians = {}
    for b in batches:
        llama = [r["llama"][b] for r in rounds]
        ours = [r["ours"][b] for r in rounds]
        medians[f"batch{b}"] = {
            "llama_step_ms": ms(statistics.median(llama)),
            "ours_step_ms": ms(statistics.median(ours)),
            "ratio": round(median_ratio(llama, ours), 3),
        }
    return {"rounds": per_round, "median": medians}


def skip_reason(model: LoadedModel) -> str:
    """Why the comparison does not apply to this model ("" when it does)."""
    if model.model_id != EMBEDDED_MODEL_ID:
        return (
            f"the loaded model is {model.model_id}, not the embedded one whose GGUF llama.cpp runs"
        )
    if model.device.type != "cpu":
        return f"the model runs on {model.device}; the llama.cpp build is CPU only"
    return ""


def compare(
    model: LoadedModel,
    ids: Sequence[int],
    vector: torch.Tensor,
    layer: int,
    *,
    rounds: int = 3,
    tokens: int = 64,
    settings: Settings | None = None,
    read_bandwidth_gbs: float | None = None,
    batches: Sequence[int] = BATCHES,
) -> dict[str, Any]:
    """Alternating rounds of llama-batched-bench and our side-by-side decode; ``{"skipped":
    reason}`` when llama.cpp cannot run here, else the rounds, the medians and ``ratio`` (the
    batch-2 median). With ``read_bandwidth_gbs``, also llama.cpp's bandwidth bound (its GGUF
    read once per step)."""
    threads = torch.get_num_threads()
    head: dict[str, Any] = {"threads": threads, "new_tokens": tokens, "target": TARGET, "aim": AIM}
    reason = skip_reason(model)
    gguf = embedded_gguf_path()
    if not reason and gguf is None:
        reason = "the embedded model's GGUF is not installed"
    lookup = Lookup(None)
    if not reason:
        lookup = find_batched_bench(settings if settings is not None else load_settings())
        reason = lookup.reason
    if reason or lookup.path is None or gguf is None:
        return {**head, "skipped": reason}
    command = build_command(lookup.path, gguf, len(ids), tokens, threads, batches)
    plans = {b: row_plans(vector, layer, b) for b in batches}

    def ours_at(b: int, n: int) -> float:
        if b <= kernels.MAX_ROWS:
            return our_step_seconds(model, ids, plans[b], n)
        return shared_step_seconds(model, ids, vector, layer, b, n)

    for b in batches:  # warm-up: allocations and kernel choices at each batch size
        ours_at(b, 3)
    reported_threads: list[int | None] = []

    def run_llama() -> dict[int, float]:
        out = run_batched_bench(command)
        reported_threads.append(parse_threads(out))
        return step_seconds_by_batch(parse_table(out), batches)

    def run_ours() -> dict[int, float]:
        return {b: ours_at(b, tokens) for b in batches}

    try:
        done = alternate(rounds, run_llama, run_ours)
    except LlamaRunError as exc:
        return {**head, "skipped": f"{BINARY_NAME} failed: {exc}"}
    summary = summarize(done, batches)
    gguf_mb = gguf.stat().st_size / 1e6
    result = {
        **head,
        "skipped": None,
        "binary": str(lookup.path),
        "command": " ".join(command),
        "gguf": gguf.name,
        "gguf_megabytes": round(gguf_mb, 1),
        "llama_threads": reported_threads[0] if reported_threads else None,
        "prompt_tokens": len(ids),
        "batches": list(batches),
        "extensions": extensions(model, lookup.path),
        **summary,
        "ratio": summary["median"][f"batch{HEADLINE_BATCH}"]["ratio"],
    }
    if read_bandwidth_gbs:
        # The file holds a little metadata and the (tied) embedding table, which llama.cpp
        # reads whole for the output layer: close to the bytes of one step.
        result["llama_bound_ms"] = round(gguf_mb / (read_bandwidth_gbs * 1e3) * 1e3, 2)
    return result


def extensions(model: LoadedModel, binary: Path) -> dict[str, str]:
    """Which vector extensions each side ran with: llama.cpp's from its build record, ours from
    the decoder's kernel (compiled for AVX2 + FMA + F16C) and torch's oneDNN level (prompt
    passes, and decoding where the kernel is off)."""
    record = build_record(binary)
    if record:
        options = record.get("options", {})
        amx = any(v == "ON" for k, v in options.items() if k.startswith("GGML_AMX"))
        llama = f"{', '.join(record.get('extensions', []))}; AMX {'on' if amx else 'off'}"
    else:
        llama = "unknown (no build.json beside the binary)"
    from persona_explorer.engine import decoder_for

    kernel = getattr(decoder_for(model), "kernel", "onednn")
    ours = f"{kernel.split('-')[0].upper()} kernel" if kernel != "onednn" else "no kernel"
    capability = torch.backends.cpu.get_cpu_capability()
    return {"llama_cpp": llama, "ours": f"{ours}; oneDNN at {capability}"}


def format_comparison(c: Mapping[str, Any]) -> list[str]:
    """Report lines: each round, the medians per batch, the headline ratio and its target."""
    if c.get("skipped"):
        return [f"llama.cpp comparison skipped: {c['skipped']}"]
    lines = [
        f"vs llama.cpp ({c['gguf']}, {c['gguf_megabytes']} MB; {c['prompt_tokens']}-token "
        f"prompt, {c['new_tokens']} tokens, {c['threads']} threads; llama.cpp step time / "
        "ours, > 1 = we are faster):"
    ]
    if "extensions" in c:
        ext = c["extensions"]
        lines.append(f"  extensions: llama.cpp {ext['llama_cpp']}; ours {ext['ours']}")
    busy_rounds: list[int] = []
    for i, r in enumerate(c["rounds"], 1):
        cells = ", ".join(
            f"B={b} {r['llama_step_ms'][f'batch{b}']} / {r['ours_step_ms'][f'batch{b}']} ms "
            f"= {r['ratio'][f'batch{b}']:.2f}x"
            for b in c["batches"]
        )
        shares = {k: v for k, v in r.get("others_cpu", {}).items() if v is not None}
        busy = ""
        if shares:
            names = {"llama": "llama.cpp's run", "ours": "ours"}
            used = ", ".join(f"{names.get(k, k)} {v:.0%}" for k, v in shares.items())
            busy = f" (other processes' CPU share: {used})"
            if max(shares.values()) > BUSY_WARNING:
                busy_rounds.append(i)
        lines.append(f"  round {i}: {cells}{busy}")
    med = ", ".join(
        f"B={b} {m['llama_step_ms']} / {m['ours_step_ms']} ms = {m['ratio']:.2f}x"
        for b, m in ((b, c["median"][f"batch{b}"]) for b in c["batches"])
    )
    lines.append(f"  median of {len(c['rounds'])} rounds: {med}")
    bound = (
        f"; llama.cpp's bandwidth bound {c['llama_bound_ms']} ms" if "llama_bound_ms" in c else ""
    )
    lines.append(
        f"  batch {HEADLINE_BATCH} (side by side): {c['ratio']:.2f}x "
        f"(target >= {c['target']}x, aim {c['aim']}x){bound}"
    )
    if busy_rounds:
        # One busy round of three leaves the median to the other two; more can move it.
        verdict = (
            "rerun on an idle machine"
            if 2 * len(busy_rounds) >= len(c["rounds"])
            else "under half the rounds, so the median should still hold"
        )
        names = ", ".join(str(i) for i in busy_rounds)
        lines.append(
            f"  warning: round {names} ran while other processes used over "
            f"{BUSY_WARNING:.0%} of the CPUs; llama.cpp slows down far more than ours on a "
            f"shared machine, so such a round flatters us: {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Only the llama.cpp comparison, on the embedded model."""
    from persona_explorer.dev.measure import PROMPT, read_bandwidth_gbs
    from persona_explorer.engine.model import load_model

    parser = argparse.ArgumentParser(prog="bench_llama", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tokens < 3:
        parser.error("--rounds must be >= 1 and --tokens >= 3")
    model = load_model(device="cpu", settings=load_settings())
    torch.manual_seed(0)
    layer = model.n_layers // 2
    vector = torch.randn(model.n_layers, model.d_model) * 2.0
    result = compare(
        model,
        model.chat_ids(PROMPT),
        vector,
        layer,
        rounds=args.rounds,
        tokens=args.tokens,
        read_bandwidth_gbs=read_bandwidth_gbs(),
    )
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(format_comparison(result)))
        print(f"load average {result['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
