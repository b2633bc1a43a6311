"""``scripts/llama_build.py``: which llama.cpp build each kind of CPU gets, the cache key, and the
smoke run that keeps a binary that dies out of the cache. No compiler runs here: the smoke run
is driven with stand-in binaries (shell scripts), one of which kills itself with SIGILL the way
an AMX instruction does on a VM that reports AMX without granting it."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import pytest

from scripts import llama_build as lb

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EPYC = (FIXTURES / "cpuinfo_epyc_avx2.txt").read_text()
XEON = (FIXTURES / "cpuinfo_xeon_avx512_amx.txt").read_text()


def _on(options: dict[str, str]) -> set[str]:
    return {name for name, value in options.items() if value == "ON"}


def test_the_avx2_epyc_gets_avx2_and_nothing_of_avx512() -> None:
    flags = lb.cpu_flags(EPYC)
    assert {"avx2", "fma", "f16c"} <= flags and "avx512f" not in flags
    options = lb.ggml_options(flags)
    assert {"GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_SSE42"} <= _on(
        options
    )
    assert not any("AVX512" in name or "AMX" in name or "VNNI" in name for name in _on(options))


def test_the_xeon_gets_every_avx512_part_it_reports_and_no_amx() -> None:
    flags = lb.cpu_flags(XEON)
    assert {"amx_tile", "amx_int8", "avx512f", "avx512_vnni"} <= flags  # the fixture reports AMX
    options = lb.ggml_options(flags)
    assert {
        "GGML_AVX2",
        "GGML_AVX512",
        "GGML_AVX512_VNNI",
        "GGML_AVX512_VBMI",
        "GGML_AVX512_BF16",
        "GGML_AVX_VNNI",
    } <= _on(options)
    for amx in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert options[amx] == "OFF"


@pytest.mark.parametrize("cpuinfo", [EPYC, XEON])
def test_neither_machine_gets_native_or_amx(cpuinfo: str) -> None:
    args = lb.cmake_arguments(lb.ggml_options(lb.cpu_flags(cpuinfo)))
    assert "-DGGML_NATIVE=OFF" in args
    assert not any("native" in a.lower() and a != "-DGGML_NATIVE=OFF" for a in args)
    assert not any("AMX" in a and not a.endswith("=OFF") for a in args)
    assert "-DGGML_CPU_ALL_VARIANTS=ON" not in args  # picks AMX from CPUID alone


def test_avx512_parts_need_the_avx512_base() -> None:
    """A CPU reporting VNNI but not all five AVX-512 base parts gets none of the parts."""
    flags = lb.cpu_flags(XEON) - {"avx512dq"}
    options = lb.ggml_options(flags)
    assert options["GGML_AVX512"] == "OFF"
    assert options["GGML_AVX512_VNNI"] == options["GGML_AVX512_BF16"] == "OFF"


def test_other_architectures_get_no_x86_switches() -> None:
    options = lb.ggml_options(lb.cpu_flags("Features : fp asimd sve\n"), machine="aarch64")
    assert not any(name.startswith("GGML_AVX") for name in options)
    assert options["GGML_NATIVE"] == "OFF"


def test_the_cache_is_keyed_on_the_machine(tmp_path: Path) -> None:
    epyc = lb.plan(EPYC, tmp_path, compiler="g++ 12")
    xeon = lb.plan(XEON, tmp_path, compiler="g++ 12")
    assert epyc.dest != xeon.dest and epyc.dest.parent == tmp_path
    assert lb.plan(EPYC, tmp_path, compiler="g++ 12").dest == epyc.dest  # stable
    assert lb.plan(EPYC, tmp_path, compiler="g++ 13").dest != epyc.dest
    # Same options, but one reports AMX: a different machine, a different build.
    amx = EPYC.replace(" rdpid", " rdpid amx_tile")
    assert lb.plan(amx, tmp_path, compiler="g++ 12").options == epyc.options
    assert lb.plan(amx, tmp_path, compiler="g++ 12").dest != epyc.dest
    assert lb.VERSION in epyc.dest.name


# --------------------------------------------------------------------------- the smoke run


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _built(tmp_path: Path, server_body: str, bench_body: str) -> Path:
    built = tmp_path / "build" / "bin"
    built.mkdir(parents=True)
    version = 'if [ "$1" = "--version" ]; then echo "version: 1"; exit 0; fi\n'
    _script(built / "llama-server", version + server_body)
    _script(built / "llama-batched-bench", version + bench_body)
    (built / "libggml.so").write_bytes(b"\x7fELF")
    return built


def test_a_binary_killed_by_sigill_is_reported_and_not_cached(tmp_path: Path) -> None:
    the_plan = lb.plan(XEON, tmp_path / "cache", compiler="g++ 12")
    built = _built(tmp_path, "exit 0", 'echo "loading model"; kill -ILL $$')
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    smokes = {"llama-server": lambda *a: None, "llama-batched-bench": lb.smoke_batched_bench}
    with pytest.raises(lb.BuildError) as caught:
        lb.install(built, the_plan, gguf, threads=2, smokes=smokes)
    message = str(caught.value)
    assert "llama-batched-bench was killed by SIGILL (illegal instruction" in message
    assert "not cached" in message
    assert "-DGGML_AMX_TILE=OFF" in message and "AVX512_VNNI" in message  # the build flags
    assert "loading model" in message  # its last output
    assert not the_plan.dest.exists()
    assert lb.cached(the_plan.dest) is None
    assert list(the_plan.dest.parent.iterdir()) == []  # no stage folder left behind


def test_a_server_that_dies_on_its_first_request_is_reported(tmp_path: Path) -> None:
    """The server's smoke run: it dies while loading, as llama-server did on the AMX VM."""
    the_plan = lb.plan(XEON, tmp_path / "cache", compiler="g++ 12")
    built = _built(tmp_path, "echo 'main: loading model'; kill -ILL $$", "exit 0")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(lb.BuildError, match=r"llama-server was killed by SIGILL"):
        lb.install(built, the_plan, gguf, threads=2)
    assert not the_plan.dest.exists()


def test_a_passing_smoke_run_is_cached_with_its_record(tmp_path: Path) -> None:
    the_plan = lb.plan(EPYC, tmp_path / "cache", compiler="g++ 12")
    built = _built(tmp_path, "exit 0", "echo '|    PP |     TG | T_TG s |'")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    smokes = {"llama-server": lambda *a: None, "llama-batched-bench": lb.smoke_batched_bench}
    server = lb.install(built, the_plan, gguf, threads=2, smokes=smokes)
    assert server == the_plan.dest / "llama-server"
    assert lb.cached(the_plan.dest) == server
    record = json.loads((the_plan.dest / lb.BUILD_RECORD).read_text())
    assert record["extensions"] == lb.extensions_used(the_plan.options)
    assert "AVX2" in record["extensions"] and "AVX512" not in record["extensions"]
    assert (the_plan.dest / "libggml.so").is_file()


def test_a_folder_without_a_smoke_record_is_not_a_cache(tmp_path: Path) -> None:
    dest = tmp_path / "llama.cpp-x"
    dest.mkdir()
    _script(dest / "llama-server", "exit 0")
    assert lb.cached(dest) is None


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (-signal.SIGILL, "SIGILL (illegal instruction"),
        (-signal.SIGSEGV, "SIGSEGV"),
        (3, "exited with 3"),
    ],
)
def test_exit_codes_are_named(code: int, said: str) -> None:
    assert said in lb.describe_exit(code)


def test_print_options_builds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert lb.main(["--print-options"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["options"]["GGML_NATIVE"] == "OFF"
    assert all(shown["options"][name] == "OFF" for name in lb.NEVER)
