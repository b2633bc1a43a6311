"""The shipped trait and role definitions: where they are, which there are, loading one.

The data is the assistant-axis / persona_vectors JSON vendored in ``assets/personas`` (or the
folder the ``persona_data_dir`` setting, ``$PERSONA_EXPLORER_PERSONA_DATA``, points at: the
caller passes it as ``data_dir``); :mod:`.definitions` reads and validates each file.

Imports: :mod:`.definitions` only.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from persona_explorer.personas.definitions import (
    DEFAULT_NAME,
    BuiltinKind,
    PersonaDefinition,
    PersonaError,
    load_persona,
)

__all__ = ["PERSONA_DATA_ENV", "list_builtin", "load_builtin", "shared_data_dir"]

PERSONA_DATA_ENV = "PERSONA_EXPLORER_PERSONA_DATA"
_BUILTIN_SUBDIR: dict[str, str] = {"trait": "traits", "role": "roles"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _as_data_dir(candidate: Path) -> Path | None:
    """``candidate`` itself, or its ``data/`` child, if it holds traits/ or roles/."""
    for d in (candidate, candidate / "data"):
        if any((d / sub / "instructions").is_dir() for sub in _BUILTIN_SUBDIR.values()):
            return d
    return None


def shared_data_dir(configured: Path | None = None) -> Path | None:
    """The directory holding ``traits/instructions`` and ``roles/instructions``, or None.

    Looked up in order: ``configured`` (the ``persona_data_dir`` setting), ``<repo>/assets/
    personas``, ``<repo>/../shared/data/assistant-axis/data``. Each may also point one level up
    (at a folder whose ``data/`` holds them). A configured folder that is unusable is skipped.
    """
    root = _repo_root()
    candidates = [configured] if configured is not None else []
    candidates.append(root / "assets" / "personas")
    candidates.append(root.parent / "shared" / "data" / "assistant-axis" / "data")
    for c in candidates:
        found = _as_data_dir(c)
        if found is not None:
            return found
    return None


def _check_kind(kind: object) -> str:
    if kind not in _BUILTIN_SUBDIR:
        raise PersonaError(f"kind must be 'trait' or 'role', got {kind!r}")
    return _BUILTIN_SUBDIR[str(kind)]


def list_builtin(
    kind: BuiltinKind = "trait", *, include_default: bool = False, data_dir: Path | None = None
) -> list[str]:
    """Sorted names of the shipped traits or roles ([] when no data directory is found).

    The ``default`` role (the Assistant itself) is left out unless ``include_default``: as a
    persona it would be contrasted with itself.
    """
    sub = _check_kind(kind)
    base = shared_data_dir(data_dir)
    if base is None:
        return []
    folder = base / sub / "instructions"
    if not folder.is_dir():
        return []
    names = sorted(p.stem for p in folder.glob("*.json") if p.is_file())
    if not include_default:
        names = [n for n in names if n != DEFAULT_NAME]
    return names


def load_builtin(
    name: str, kind: BuiltinKind = "trait", *, data_dir: Path | None = None
) -> PersonaDefinition:
    """Load a shipped trait or role by name (e.g. ``"evil"``, or ``"pirate"`` as a role), from
    ``data_dir`` (the ``persona_data_dir`` setting) or the shipped data."""
    sub = _check_kind(kind)
    # Names may come from the UI: never let them walk out of the data directory.
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise PersonaError(f"invalid {kind} name {name!r}: use letters, digits, '_' and '-' only")
    base = shared_data_dir(data_dir)
    if base is None:
        raise PersonaError(
            "no built-in persona data found: set "
            f"{PERSONA_DATA_ENV} to the assistant-axis 'data' folder, or install it under "
            "assets/personas"
        )
    path = base / sub / "instructions" / f"{name}.json"
    if not path.is_file():
        known = list_builtin(kind, include_default=True, data_dir=data_dir)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise PersonaError(f"unknown {kind} {name!r} in {base / sub}{hint}")
    return load_persona(path)
