"""What the CPU reports: the extension flags in ``/proc/cpuinfo``.

One parser for the two places that choose instructions by them: the decode kernel's runtime
check (:mod:`persona_explorer.engine.kernels`) and the llama.cpp build (``scripts/
llama_build.py``, which runs with the system Python before any venv exists: hence here, in the
standard-library-only core). Reported is not granted (a VM may report AMX it does not allow),
so callers pick from these only the extensions they know to be safe.

Imports: the standard library only.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpu_flags", "read_cpuinfo"]


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The first processor's extension flags in a ``/proc/cpuinfo`` text (x86: ``flags``;
    arm64: ``Features``); None where it lists none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """The text of ``/proc/cpuinfo`` ("" where there is none: not Linux, or no access)."""
    try:
        return path.read_text()
    except OSError:
        return ""
