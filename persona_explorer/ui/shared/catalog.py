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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_NAME_CHARS
from persona_explorer.core.names import clean_name, slugify
from persona_explorer.vectors.library import Library
from persona_explorer.vectors.persona_vector import (
    PersonaVector,
    VectorInfo,
    VectorMismatchError,
    check_fits,
)

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
    """One vector as listed: what it is (``info``, read from the file's header alone), or why
    it cannot be read. Session vectors also carry the vector itself; the others are loaded
    from disk when used (:meth:`CatalogView.load`)."""

    key: str
    where: Where
    info: VectorInfo | None
    error: str | None = None
    vector: PersonaVector | None = None

    @property
    def id(self) -> str:
        return self.key.split(":", 1)[1]

    @property
    def name(self) -> str:
        return self.info.name if self.info is not None else self.id

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
    if item.info is None:
        return item.error or "unreadable"
    try:
        check_fits(item.info, shape.n_layers, shape.d_model, shape.model_id)
    except VectorMismatchError as exc:
        return str(exc)
    return None


class CatalogView:
    """One scan of every vector a session can see, and the lists built from it."""

    def __init__(self, items: list[VectorItem], catalog: VectorCatalog) -> None:
        self.items = items
        self.catalog = catalog
        shape = catalog.shape
        self.shape = shape
        self.by_key = {i.key: i for i in items}
        self._problems = {i.key: _fit_problem(i, shape) for i in items}

    def fit_problem(self, key: str) -> str | None:
        """Why the vector under ``key`` cannot steer the loaded model, or None."""
        return self._problems[key]

    def fits(self, item: VectorItem) -> bool:
        return self.fit_problem(item.key) is None

    def find(self, ref: object) -> VectorItem:
        """The item a dropdown key refers to, readable or not (unreadable files can be deleted)."""
        item = self.by_key.get(ref) if isinstance(ref, str) else None
        return item if item is not None else self.resolve(ref)

    def load(self, item: VectorItem) -> PersonaVector:
        """The vector itself (read from disk for built-in and library items)."""
        if item.vector is not None:
            return item.vector
        source = self.catalog.builtins if item.where == "built-in" else self.catalog.library
        return source.get(item.id)

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
            names = sorted({i.name for i in self.readable()})
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(
                f"Unknown persona {ref[:80]!r}. Available: {shown or 'none yet'}. Extract a "
                "new one in the Extract tab or upload one in the Library tab."
            )
        if found.info is None:
            raise InputError(f"The vector file for {found.name!r} cannot be read: {found.error}")
        return found

    def resolve_fitting(self, ref: object) -> tuple[VectorItem, PersonaVector]:
        """:meth:`resolve`, refusing a vector made for another model."""
        item = self.resolve(ref)
        problem = self.fit_problem(item.key)
        if problem:
            raise InputError(f"{item.name!r} cannot steer this model. {problem}")
        return item, self.load(item)

    def resolve_many(self, keys: object, most: int, purpose: str) -> tuple[PersonaVector, ...]:
        """The vectors picked in a multi-select (1 to ``most``, duplicates dropped), each
        :meth:`resolve_fitting`; ``purpose`` ("screen", "measure") words the errors."""
        if keys is not None and (isinstance(keys, str) or not isinstance(keys, Sequence)):
            raise InputError("Persona vectors must be a list of names or keys.")
        picked = list(
            dict.fromkeys(k.strip() for k in keys or [] if isinstance(k, str) and k.strip())
        )
        if not picked:
            raise InputError(f"Pick at least one persona vector to {purpose} with (e.g. evil).")
        if len(picked) > most:
            raise InputError(
                f"{len(picked)} persona vectors chosen: {purpose} with at most {most}."
            )
        return tuple(self.resolve_fitting(key)[1] for key in picked)

    # ------------------------------------------------------------ lists

    def readable(self) -> list[VectorItem]:
        return [i for i in self.items if i.info is not None]

    def persona_choices(self) -> list[tuple[str, str]]:
        """(label, key) for the persona dropdown: readable vectors, fitting ones first."""
        fits = [(i.label, i.key) for i in self.readable() if self.fits(i)]
        other = [(f"{i.label} · other model", i.key) for i in self.readable() if not self.fits(i)]
        return fits + other

    def item_choices(self) -> list[tuple[str, str]]:
        """Every item, unreadable ones too: they must stay selectable to be deleted."""
        return [
            (i.label if i.info is not None else f"{i.label} · unreadable", i.key)
            for i in self.items
        ]

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
            VectorItem(f"builtin:{e.id}", "built-in", e.info, e.error)
            for e in self.builtins.entries()
        ]
        items += [
            VectorItem(f"library:{e.id}", "library", e.info, e.error)
            for e in self.library.entries()
        ]
        items += [
            VectorItem(k, "session", VectorInfo.of(v), vector=v) for k, v in (session or {}).items()
        ]
        return CatalogView(items, self)


# --------------------------------------------------------------------------- session vectors


def add_to_session(
    session: Mapping[str, PersonaVector] | None, vec: PersonaVector, limit: int
) -> tuple[SessionVectors, str]:
    """A new session dict with ``vec`` added under a fresh key; returns (dict, key).

    At most ``limit`` vectors: the session lives in the server's memory.
    """
    new = dict(session or {})
    try:  # a file's stored name can be anything: keep names short, single-line and visible
        name = clean_name(vec.name[:MAX_NAME_CHARS])
    except InputError:
        name = "vector"
    if name != vec.name:
        vec = vec.with_(name=name)
    if len(new) >= limit:
        raise InputError(
            f"This browser session already holds {len(new)} vectors, the limit: delete some "
            "in the Library tab (or download them) first."
        )
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


def source_label(vec: PersonaVector | VectorInfo) -> str:
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
