"""The vectors a user can pick from: built-in, saved in the library, and made in this session.

Vectors are referred to by keys: ``builtin:<id>`` (shipped, read-only), ``library:<id>`` (saved
on disk, shared by everyone on this server) and ``session:<id>`` (extracted or uploaded in this
browser session, kept in ``gr.State``). The API also accepts a plain name (``"pirate"``).

:meth:`VectorCatalog.view` scans the built-ins and the library once and returns a
:class:`CatalogView`: every list a refresh shows (dropdowns, table, heat-map choices) is built
from that one scan, and so is :meth:`CatalogView.resolve`.

Imports: ``..library``, ``..vectors``, ``..errors``; no gradio (pure, testable without a server).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..library import Library, slugify
from ..vectors import PersonaVector, VectorMismatchError, check_fits

__all__ = [
    "CatalogView",
    "SessionVectors",
    "VectorCatalog",
    "VectorItem",
    "add_to_session",
    "fmt_strength",
    "model_label",
    "source_label",
]

SessionVectors = dict[str, PersonaVector]
Where = Literal["built-in", "library", "session"]


@dataclass(frozen=True)
class VectorItem:
    key: str
    where: Where
    vector: PersonaVector | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.vector.name if self.vector is not None else self.key.split(":", 1)[1]

    @property
    def label(self) -> str:
        return f"{self.name} · {self.where}"


@dataclass(frozen=True)
class ModelShape:
    """What a vector must fit: the loaded model's id, layer count and width."""

    model_id: str
    n_layers: int
    d_model: int


def _fit_problem(item: VectorItem, shape: ModelShape) -> str | None:
    if item.vector is None:
        return item.error or "unreadable"
    try:
        check_fits(item.vector, shape.n_layers, shape.d_model, shape.model_id)
    except VectorMismatchError as exc:
        return str(exc)
    return None


class CatalogView:
    """One scan of every vector a session can see, and the lists built from it."""

    def __init__(self, items: list[VectorItem], shape: ModelShape) -> None:
        self.items = items
        self.shape = shape
        self.by_key = {i.key: i for i in items}
        self._problems = {i.key: _fit_problem(i, shape) for i in items}

    def fit_problem(self, key: str) -> str | None:
        """Why the vector under ``key`` cannot steer the loaded model, or None."""
        return self._problems[key]

    def fits(self, item: VectorItem) -> bool:
        return self.fit_problem(item.key) is None

    def resolve(self, ref: object) -> VectorItem:
        """The readable vector a dropdown key or a plain name refers to."""
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(
                "No persona selected: pick one, extract one in the Extract tab or upload one "
                "in the Library tab."
            )
        ref = ref.strip()
        found = self.by_key.get(ref)
        if found is None:
            # A plain name (API users): built-in first, then library, then this session.
            wanted = ref.lower()
            found = next(
                (
                    i
                    for i in self.items
                    if i.key.split(":", 1)[1] == wanted or i.name.lower() == wanted
                ),
                None,
            )
        if found is None:
            names = sorted({i.name for i in self.items if i.vector is not None})
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(
                f"Unknown persona {ref[:80]!r}. Available: {shown or 'none yet'}. Extract a "
                "new one in the Extract tab or upload one in the Library tab."
            )
        if found.vector is None:
            raise InputError(f"The vector file for {found.name!r} cannot be read: {found.error}")
        return found

    def resolve_fitting(self, ref: object) -> tuple[VectorItem, PersonaVector]:
        """:meth:`resolve`, refusing a vector made for another model."""
        item = self.resolve(ref)
        problem = self.fit_problem(item.key)
        if problem:
            raise InputError(f"{item.name!r} cannot steer this model. {problem}")
        assert item.vector is not None
        return item, item.vector

    # ------------------------------------------------------------ lists

    def readable(self) -> list[VectorItem]:
        return [i for i in self.items if i.vector is not None]

    def persona_choices(self) -> list[tuple[str, str]]:
        """(label, key) for the persona dropdown: readable vectors, fitting ones first."""
        fits = [(i.label, i.key) for i in self.readable() if self.fits(i)]
        other = [(f"{i.label} · other model", i.key) for i in self.readable() if not self.fits(i)]
        return fits + other

    def item_choices(self) -> list[tuple[str, str]]:
        return [(i.label, i.key) for i in self.readable()]

    def fitting_choices(self) -> list[tuple[str, str]]:
        return [(i.label, i.key) for i in self.readable() if self.fits(i)]

    def default_key(self, wanted: str) -> str | None:
        """``wanted`` if it exists and fits, else the first vector that fits (or any)."""
        with contextlib.suppress(InputError):
            item = self.resolve(wanted)
            if self.fits(item):
                return item.key
        choices = self.persona_choices()
        return choices[0][1] if choices else None


class VectorCatalog:
    """The shipped built-ins and the on-disk library, seen together with a session's vectors."""

    def __init__(self, builtins: Library, library: Library, shape: ModelShape) -> None:
        self.builtins = builtins
        self.library = library
        self.shape = shape

    def view(self, session: Mapping[str, PersonaVector] | None = None) -> CatalogView:
        items = [
            VectorItem(f"builtin:{e.id}", "built-in", e.vector, e.error)
            for e in self.builtins.entries()
        ]
        items += [
            VectorItem(f"library:{e.id}", "library", e.vector, e.error)
            for e in self.library.entries()
        ]
        items += [VectorItem(k, "session", v) for k, v in (session or {}).items()]
        return CatalogView(items, self.shape)


# --------------------------------------------------------------------------- session vectors


def add_to_session(
    session: Mapping[str, PersonaVector] | None, vec: PersonaVector
) -> tuple[SessionVectors, str]:
    """A new session dict with ``vec`` added under a fresh key; returns (dict, key)."""
    new = dict(session or {})
    base = slugify(vec.name)
    key, n = f"session:{base}", 1
    while key in new:
        n += 1
        key = f"session:{base}-{n}"
    new[key] = vec
    return new, key


# --------------------------------------------------------------------------- display helpers


def model_label(model_id: str) -> str:
    return model_id.removeprefix("embedded:") if model_id else "unknown model"


def source_label(vec: PersonaVector) -> str:
    """Where a vector came from, in a few words ("role pirate", "imported gguf", ...)."""
    meta = vec.metadata
    kind, source = meta.get("persona_kind"), str(meta.get("source") or "")
    if kind in ("trait", "role") and source:
        return f"{kind} {Path(source).stem}"
    if kind == "custom":
        return "custom prompts"
    if meta.get("source_format"):
        return f"imported {meta['source_format']}"
    return Path(source).name if source else "—"


def fmt_strength(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"
