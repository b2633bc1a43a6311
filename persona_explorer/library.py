"""The saved vector library: one safetensors file per vector in one directory, nothing else.

There is no index to fall out of sync: the directory listing *is* the library, and each file
carries its own metadata (name, model, layer, strength, ...). Writes go through
:func:`vector_files.save`, which writes a temporary file and renames it, so a crash mid-save leaves
either the old library or the new one, never a torn file. File names are derived from the
vector's name by :func:`slugify` and never taken from user input as a path, so a name like
``../../etc/passwd`` becomes ``etc-passwd.safetensors`` inside the library directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import vector_files
from .errors import InputError
from .vector_files import VectorFileError
from .vectors import PersonaVector

__all__ = ["MAX_NAME_CHARS", "Library", "LibraryEntry", "LibraryError", "slugify"]

log = logging.getLogger(__name__)

EXTENSION = ".safetensors"
MAX_NAME_CHARS = 80
_MAX_SLUG_CHARS = 64
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
# atomic_write leaves ".{name}.{hex}.tmp" only if the process dies mid-write; sweep old ones.
_STALE_TMP_SECONDS = 3600


class LibraryError(InputError):
    """A library operation cannot be done (unknown id, bad name, read-only library)."""


def slugify(name: str) -> str:
    """A safe file stem for ``name``: lowercase ASCII letters, digits, ``-`` and ``_``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_name.lower()).strip("-_")
    return slug[:_MAX_SLUG_CHARS].strip("-_") or "vector"


def clean_name(name: object) -> str:
    """A display name as typed by a user: stripped, single-line, of reasonable length."""
    if not isinstance(name, str) or not name.strip():
        raise LibraryError("Give the vector a name.")
    text = " ".join(name.split())
    if len(text) > MAX_NAME_CHARS:
        raise LibraryError(f"Names are at most {MAX_NAME_CHARS} characters (got {len(text)}).")
    return text


@dataclass(frozen=True)
class LibraryEntry:
    """One file of the library: its vector, or why it could not be read."""

    id: str  # file stem; the key used by rename/delete/get
    path: Path
    vector: PersonaVector | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.vector.name if self.vector is not None else self.id


class Library:
    """Vectors saved on disk under ``root`` (one ``<id>.safetensors`` file each).

    Safe to share between the threads of one server: writes hold a lock, and reads of a file
    that is being replaced see the old or the new version (rename is atomic).
    """

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.read_only = read_only
        # Re-entrant: rename() reads the entry (entries() takes the lock) while holding it.
        self._lock = threading.RLock()
        # path -> (mtime_ns, size, entry): re-read a file only when it changes.
        self._cache: dict[Path, tuple[int, int, LibraryEntry]] = {}
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep_stale_temp_files()

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[LibraryEntry]:
        """Every vector file, sorted by name; unreadable files are listed with their error."""
        if not self.root.is_dir():
            return []
        paths = [
            p
            for p in sorted(self.root.glob("*" + EXTENSION))
            if not p.name.startswith(".") and _ID.match(p.stem)
        ]
        out = []
        # The lock guards the cache: two requests listing at once must not interleave updates
        # (a reader could otherwise pop an entry another has just re-read).
        with self._lock:
            seen = set()
            for path in paths:
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                seen.add(path)
                cached = self._cache.get(path)
                if cached and cached[:2] == (st.st_mtime_ns, st.st_size):
                    out.append(cached[2])
                    continue
                entry = self._read(path)
                self._cache[path] = (st.st_mtime_ns, st.st_size, entry)
                out.append(entry)
            for stale in set(self._cache) - seen:
                self._cache.pop(stale, None)
        return sorted(out, key=lambda e: (e.name.lower(), e.id))

    def _read(self, path: Path) -> LibraryEntry:
        try:
            return LibraryEntry(path.stem, path, vector_files.load(path))
        except (VectorFileError, ValueError, OSError) as exc:
            log.warning("library: cannot read %s: %s", path, exc)
            return LibraryEntry(path.stem, path, None, str(exc))

    def ids(self) -> list[str]:
        return [e.id for e in self.entries()]

    def _path(self, entry_id: str) -> Path:
        if not isinstance(entry_id, str) or not _ID.match(entry_id):
            raise LibraryError(f"No vector {entry_id!r} in the library.")
        return self.root / (entry_id + EXTENSION)

    def entry(self, entry_id: str) -> LibraryEntry:
        path = self._path(entry_id)
        for e in self.entries():
            if e.path == path:
                return e
        raise LibraryError(f"No vector {entry_id!r} in the library (was it deleted?).")

    def get(self, entry_id: str) -> PersonaVector:
        e = self.entry(entry_id)
        if e.vector is None:
            raise LibraryError(f"The library file {e.path.name} cannot be read: {e.error}")
        return e.vector

    def find_by_name(self, name: str) -> LibraryEntry | None:
        """The entry whose id or vector name equals ``name`` (case-insensitive), if any."""
        want = name.strip().lower()
        for e in self.entries():
            if e.id == want or e.name.lower() == want:
                return e
        return None

    # ------------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self.read_only:
            raise LibraryError("This collection is read-only.")

    def _free_id(self, base: str, keep: str | None = None) -> str:
        """``base``, else ``base-2``, ``base-3``...: the first with no file (``keep`` is free)."""
        candidate, n = base, 1
        while candidate != keep and self._path(candidate).exists():
            n += 1
            suffix = f"-{n}"
            candidate = base[: _MAX_SLUG_CHARS - len(suffix)] + suffix
        return candidate

    def save(self, vec: PersonaVector, name: str | None = None) -> LibraryEntry:
        """Add ``vec`` (optionally under a new name) as a new file; never overwrites another."""
        self._check_writable()
        if not isinstance(vec, PersonaVector):
            raise TypeError(f"save() needs a PersonaVector, got {type(vec).__name__}")
        display = clean_name(name if name is not None else vec.name)
        meta = dict(vec.metadata)
        meta.setdefault("created", _now())
        meta["saved"] = _now()
        vec = vec.with_(name=display, metadata=meta)
        with self._lock:
            entry_id = self._free_id(slugify(display))
            path = vector_files.save(vec, self._path(entry_id))
        return LibraryEntry(entry_id, path, vec)

    def rename(self, entry_id: str, new_name: str) -> LibraryEntry:
        """Store the vector under ``new_name``: write the new file, then remove the old one.

        A crash between the two steps leaves both files (two valid copies), never none.
        """
        self._check_writable()
        display = clean_name(new_name)
        with self._lock:
            vec = self.get(entry_id)
            old = self._path(entry_id)
            new_id = self._free_id(slugify(display), keep=entry_id)
            renamed = vec.with_(name=display)
            path = vector_files.save(renamed, self._path(new_id))
            if new_id != entry_id:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        return LibraryEntry(new_id, path, renamed)

    def delete(self, entry_id: str) -> None:
        self._check_writable()
        path = self._path(entry_id)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise LibraryError(f"No vector {entry_id!r} in the library.") from None
            self._cache.pop(path, None)

    def _sweep_stale_temp_files(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for tmp in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    os.unlink(tmp)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
