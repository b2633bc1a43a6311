"""The saved vector library: one safetensors file per vector in one directory.

There is no index to fall out of sync: the directory listing *is* the library, and each file
carries its own metadata (name, model, layer, strength, owner, ...). Besides the vector files the
directory holds at most ``.lock`` (the cross-process write lock) and, while a write is under way,
its hidden ``.<name>.<hex>.tmp`` staging files; the listing ignores both, and staging files a
killed writer left behind are removed at the next start or save.

Reading. :meth:`Library.entries` reads each file's safetensors *header* only
(:func:`vector_files.read_info`), never its tensors, and keeps what it read keyed by the file's
(mtime, size), so a listing of hundreds of vectors costs one ``stat`` each once warm. A file that
cannot be read, for whatever reason (too large, truncated, a hostile header that exhausts the
parser's recursion or memory), is listed with its reason and never breaks the listing.
:meth:`Library.get` loads the tensors on use and keeps the last few loaded.

Writing. A vector is written whole into a staging directory, then published under its id with a
hard link, which fails if the id is taken, so no write ever replaces another vector. Id
allocation, quota checks and the write happen under a per-process lock *and* a file lock on
``.lock``, so two server processes sharing the directory never lose a save or exceed a quota.
File names are derived from the vector's name by :func:`slugify` and never taken from user input
as a path, so a name like ``../../etc/passwd`` becomes ``etc-passwd.safetensors`` inside the
library directory.

Ownership. ``save(..., owner=token)`` stores a hash of the visitor's token (never the token) in
the vector's metadata; only a caller presenting the same token may rename or delete it. The web
app always passes the visitor's token; ``owner=None`` is the local administrator (the command
line, scripts), who may modify every entry. Files no one can read may be deleted by anyone, so
garbage can always be removed. A ``read_only`` library (the built-ins, public mode) refuses every
write.

Quotas (from :class:`~persona_explorer.core.limits.Limits`): vectors in all, vectors per owner,
bytes per vector and bytes in all; a save past any of them is refused with a message naming the
limit and the variable that sets it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock

from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import TMP_SUFFIX, fsync_dir, is_temp_name
from persona_explorer.core.limits import DEFAULT_LIMITS, MAX_NAME_CHARS, Limits
from persona_explorer.core.names import (
    MAX_SLUG_CHARS,
    clean_description,
    clean_name,
    slugify,
    strip_invisible,
)
from persona_explorer.vectors import files as vector_files
from persona_explorer.vectors.persona_vector import PersonaVector, VectorInfo

__all__ = ["Library", "LibraryEntry", "LibraryError"]

log = logging.getLogger(__name__)

EXTENSION = ".safetensors"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
_LOCK_NAME = ".lock"
# Every writer of this module holds the file lock while its staging file exists, so a temporary
# file seen under the lock is an orphan, unless a writer that does not take the lock made it (an
# older version during a rolling restart, a script calling vector_files.save on the directory).
# A minute is far longer than any such write of a vector (at most max_vector_mb) takes. A crash
# just before a start leaves a younger orphan: it is ignored by the listing and swept by a
# later start or save.
_STALE_TMP_SECONDS = 60
# A writer that holds the lock longer than this is wedged; the caller gets an error to retry.
_LOCK_TIMEOUT_S = 30.0
# Loaded vectors kept for repeated steering; the byte bound matters for big models' vectors.
_LOADED_MAX_VECTORS = 32
_LOADED_MAX_BYTES = 64 * 1024 * 1024
# Domain separation: the stored hash identifies a token for this purpose only.
_OWNER_SALT = b"persona-explorer library owner\x00"
_OWNER_HASH = re.compile(r"^[0-9a-f]{32}$")
_MAX_REASON_CHARS = 300


class LibraryError(InputError):
    """A library operation cannot be done (unknown id, bad name, quota, owner, read-only)."""


def _owner_hash(owner: str) -> str:
    if not isinstance(owner, str) or not owner:
        raise LibraryError("This browser has no id to save under; reload the page and try again.")
    digest = hashlib.sha256(_OWNER_SALT + owner.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class LibraryEntry:
    """One file of the library: what its header says (``info``), or why it cannot be read
    (``error``). ``owner`` is the stored hash of the saver's token (None: saved by the
    administrator, or unreadable); ``size`` is the file's size in bytes."""

    id: str  # file stem; the key used by rename/delete/get
    path: Path
    info: VectorInfo | None
    error: str | None = None
    size: int = 0
    owner: str | None = None

    @property
    def name(self) -> str:
        # Files saved before names were cleaned, or copied in by hand, may still carry
        # bidi overrides or zero-width characters: never show them.
        if self.info is not None and isinstance(self.info.name, str):
            shown = " ".join(strip_invisible(self.info.name[: 16 * MAX_NAME_CHARS]).split())
            if shown:
                return shown[:MAX_NAME_CHARS]
        return self.id


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        text = str(exc)
    elif isinstance(exc, RecursionError):
        text = "its header is nested too deeply to read"
    elif isinstance(exc, MemoryError):
        text = "its header is too large to read"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def _too_large(name: str, size: int, limit: int) -> str:
    return (
        f"{name} is {size / 2**20:.1f} MiB; library vectors are at most {limit / 2**20:g} MiB "
        "(PERSONA_EXPLORER_MAX_VECTOR_MB)."
    )


def _vector_bytes(vec: PersonaVector) -> int:
    total = vec.vectors.numel() * vec.vectors.element_size()
    if vec.embedding is not None:
        total += vec.embedding.numel() * vec.embedding.element_size()
    return total


class Library:
    """Vectors saved on disk under ``root`` (one ``<id>.safetensors`` file each).

    Safe to share between the threads of one server and between processes: writes hold a
    per-process lock and a file lock, and reads of a file being replaced see the old or the new
    version (publishing is a link or a rename, both atomic).
    """

    def __init__(
        self, root: Path | str, *, read_only: bool = False, limits: Limits | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.read_only = read_only
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        # Re-entrant: writes list the library (entries() takes the lock) while holding it.
        self._lock = threading.RLock()
        # path -> ((mtime_ns, size), entry): re-read a header only when its file changes.
        self._cache: dict[Path, tuple[tuple[int, int], LibraryEntry]] = {}
        # path -> ((mtime_ns, size), vector), least recently used first.
        self._loaded: OrderedDict[Path, tuple[tuple[int, int], PersonaVector]] = OrderedDict()
        self._file_lock: filelock.BaseFileLock | None = None
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            self._file_lock = filelock.FileLock(self.root / _LOCK_NAME)
            try:
                with self._writing():
                    self._sweep_stale_temp_files()
            except LibraryError as exc:
                # Orphans are harmless (the listing ignores them); a busy lock must not stop
                # the server from starting.
                log.warning("library: temporary files not swept: %s", exc)

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[LibraryEntry]:
        """Every vector file, sorted by name; unreadable files are listed with their error.

        Reads headers only, and only of files that changed since the last call."""
        if not self.root.is_dir():
            return []
        paths = [p for p in self.root.glob("*" + EXTENSION) if _ID.match(p.stem)]
        # The lock guards the cache: two requests listing at once must not interleave updates
        # (a reader could otherwise pop an entry another has just re-read).
        with self._lock:
            out = [e for e in map(self._lookup, paths) if e is not None]
            for gone in set(self._cache).difference(paths):
                self._cache.pop(gone, None)
        return sorted(out, key=lambda e: (e.name.lower(), e.id))

    def _lookup(self, path: Path) -> LibraryEntry | None:
        """The entry for ``path`` from the cache or its header; None if there is no such file.
        Call with ``self._lock`` held."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None
        except OSError as exc:
            return LibraryEntry(path.stem, path, None, _reason(exc))
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        entry = self._read(path, st.st_size)
        self._cache[path] = (key, entry)
        return entry

    def _read(self, path: Path, size: int) -> LibraryEntry:
        limit = self.limits.max_vector_bytes
        try:
            if size > limit:
                raise LibraryError(_too_large(path.name, size, limit))
            info = vector_files.read_info(path, max_bytes=limit)
        # Anything one file can raise (RecursionError and MemoryError from a hostile header
        # included) makes that file unreadable, never the listing or the server's start.
        except Exception as exc:
            reason = _reason(exc)
            # Once per version of the file: the result is cached by (mtime, size).
            log.warning("library: cannot read %s: %s", path.name, reason)
            return LibraryEntry(path.stem, path, None, reason, size)
        owner = info.metadata.get("owner") if isinstance(info.metadata, dict) else None
        if not (isinstance(owner, str) and _OWNER_HASH.match(owner)):
            owner = None
        return LibraryEntry(path.stem, path, info, None, size, owner)

    def ids(self) -> list[str]:
        return [e.id for e in self.entries()]

    def _path(self, entry_id: str) -> Path:
        if not isinstance(entry_id, str) or not _ID.match(entry_id):
            raise LibraryError(f"No vector {entry_id!r} in the library.")
        return self.root / (entry_id + EXTENSION)

    def entry(self, entry_id: str) -> LibraryEntry:
        """The entry ``entry_id`` (its header only; reads no other file)."""
        path = self._path(entry_id)
        with self._lock:
            found = self._lookup(path)
        if found is None:
            raise LibraryError(f"No vector {entry_id!r} in the library (was it deleted?).")
        return found

    def get(self, entry_id: str) -> PersonaVector:
        """The vector ``entry_id``, loaded on first use and kept while recently used."""
        path = self._path(entry_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise LibraryError(
                f"No vector {entry_id!r} in the library (was it deleted?)."
            ) from None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._loaded.get(path)
            if hit is not None and hit[0] == key:
                self._loaded.move_to_end(path)
                return hit[1]
        limit = self.limits.max_vector_bytes
        # Loaded outside the lock: steering requests must not wait for each other's reads.
        try:
            if st.st_size > limit:
                raise LibraryError(_too_large(path.name, st.st_size, limit))
            vec = vector_files.load(path, max_bytes=limit)
        except FileNotFoundError:
            raise LibraryError(
                f"No vector {entry_id!r} in the library (was it deleted?)."
            ) from None
        except Exception as exc:
            reason = _reason(exc)
            if isinstance(exc, vector_files.VectorFileError):
                self._mark_unreadable(path, key, reason)
            raise LibraryError(f"The library file {path.name} cannot be read: {reason}") from exc
        with self._lock:
            self._loaded[path] = (key, vec)
            self._loaded.move_to_end(path)
            held = sum(_vector_bytes(v) for _, v in self._loaded.values())
            while len(self._loaded) > 1 and (
                len(self._loaded) > _LOADED_MAX_VECTORS or held > _LOADED_MAX_BYTES
            ):
                _, (_, dropped) = self._loaded.popitem(last=False)
                held -= _vector_bytes(dropped)
        return vec

    def _mark_unreadable(self, path: Path, key: tuple[int, int], reason: str) -> None:
        """A header can look sound while the data behind it is cut off or corrupt: once
        loading shows it, list the file as unreadable too, so that it can be deleted."""
        with self._lock:
            cached = self._cache.get(path)
            if cached is None or (cached[0] == key and cached[1].info is not None):
                log.warning("library: cannot read %s: %s", path.name, reason)
                self._cache[path] = (key, LibraryEntry(path.stem, path, None, reason, key[1]))

    def find_by_name(self, name: str) -> LibraryEntry | None:
        """The entry whose id or vector name equals ``name`` (case-insensitive), if any."""
        want = name.strip().lower()
        for e in self.entries():
            if e.id == want or e.name.lower() == want:
                return e
        return None

    def can_modify(self, entry: LibraryEntry, owner: str | None) -> bool:
        """Whether the caller identified by ``owner`` (a visitor's token; None = the local
        administrator) may rename or delete ``entry``."""
        if self.read_only:
            return False
        if entry.info is None or owner is None:
            return True
        if entry.owner is None or not isinstance(owner, str) or not owner:
            return False
        return hmac.compare_digest(entry.owner, _owner_hash(owner))

    # ------------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self.read_only:
            raise LibraryError("This collection is read-only.")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold both locks: this process's threads and other processes wait."""
        self._check_writable()
        assert self._file_lock is not None
        with self._lock:
            try:
                self._file_lock.acquire(timeout=_LOCK_TIMEOUT_S)
            except filelock.Timeout:
                raise LibraryError(
                    "The library is busy (another process is writing to it); try again."
                ) from None
            try:
                yield
            finally:
                self._file_lock.release()

    def _check_owner(self, entry: LibraryEntry, owner: str | None) -> None:
        if owner is not None:
            _owner_hash(owner)  # a missing token is the caller's bug: say so, not "not yours"
        if not self.can_modify(entry, owner):
            raise LibraryError(
                f"Only the browser that saved “{entry.name}” can rename or delete it."
            )

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._cache.pop(path, None)
            self._loaded.pop(path, None)

    def _publish(
        self, vec: PersonaVector, base: str, *, keep: str | None = None, total: int | None = None
    ) -> tuple[str, Path, int]:
        """Write ``vec`` and publish it as ``base``, ``base-2``, ``base-3``...: the first id
        no file has (``keep``, the entry being rewritten, counts as free). With ``total`` (bytes
        the library holds), refuse a write that would take it past its limit. Call while
        :meth:`_writing`; returns (id, path, size)."""
        staging = self.root / f".{base}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        staging.mkdir()
        try:
            written = vector_files.save(vec, staging / ("vector" + EXTENSION))
            size = written.stat().st_size
            limit = self.limits.max_vector_bytes
            if size > limit:
                raise LibraryError(_too_large(f"“{vec.name}”", size, limit))
            if total is not None and total + size > self.limits.library_max_total_bytes:
                raise LibraryError(
                    f"The library holds {total / 2**20:.1f} MiB of vectors; “{vec.name}” "
                    f"({size / 2**20:.1f} MiB) would pass its limit of "
                    f"{self.limits.library_max_total_mb} MiB "
                    "(PERSONA_EXPLORER_LIBRARY_MAX_TOTAL_MB); delete some first."
                )
            entry_id = self._claim(written, base, keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return entry_id, self._path(entry_id), size

    def _claim(self, src: Path, base: str, keep: str | None) -> str:
        candidate, n = base, 1
        while True:
            target = self._path(candidate)
            if candidate == keep:
                os.replace(src, target)
                fsync_dir(self.root)
                return candidate
            if not target.exists():
                # A hard link never replaces an existing file: even a writer that ignores the
                # file lock cannot make two saves share an id.
                try:
                    os.link(src, target)
                except FileExistsError:
                    pass
                except OSError:
                    # No hard links on this filesystem: the file lock alone keeps ids apart.
                    if not target.exists():
                        os.replace(src, target)
                        fsync_dir(self.root)
                        return candidate
                else:
                    fsync_dir(self.root)
                    return candidate
            n += 1
            suffix = f"-{n}"
            candidate = base[: MAX_SLUG_CHARS - len(suffix)] + suffix

    def save(
        self, vec: PersonaVector, name: str | None = None, *, owner: str | None = None
    ) -> LibraryEntry:
        """Add ``vec`` (optionally under a new name) as a new file; never overwrites another.

        ``owner``: the visitor's token (the web app always passes it); its hash is stored so
        that only the same visitor may rename or delete the vector, and counts against
        ``library_max_per_owner``. None: saved by the local administrator (command line)."""
        self._check_writable()
        if not isinstance(vec, PersonaVector):
            raise TypeError(f"save() needs a PersonaVector, got {type(vec).__name__}")
        owner_id = None if owner is None else _owner_hash(owner)
        display = clean_name(name if name is not None else vec.name)
        # Before anything is copied or written: an oversized vector costs nothing to refuse.
        tensor_bytes = _vector_bytes(vec)
        if tensor_bytes > self.limits.max_vector_bytes:
            raise LibraryError(
                _too_large(f"“{display}”", tensor_bytes, self.limits.max_vector_bytes)
            )
        meta: dict[str, Any] = dict(vec.metadata)
        meta.setdefault("created", _now())
        meta["saved"] = _now()
        # Replaced, never kept: a file that came with someone else's hash must not become theirs.
        meta.pop("owner", None)
        if owner_id is not None:
            meta["owner"] = owner_id
        if "description" in meta:
            meta["description"] = clean_description(meta["description"])
        vec = vec.with_(name=display, metadata=meta)
        with self._writing():
            # A long-running server would otherwise keep another process's orphans until it
            # restarts; under the lock this costs one directory scan.
            self._sweep_stale_temp_files()
            current = self.entries()
            self._check_counts(current, owner_id)
            entry_id, path, size = self._publish(
                vec, slugify(display), total=sum(e.size for e in current)
            )
        return LibraryEntry(entry_id, path, VectorInfo.of(vec), None, size, owner_id)

    def _check_counts(self, current: list[LibraryEntry], owner_id: str | None) -> None:
        lim = self.limits
        if len(current) >= lim.library_max_vectors:
            raise LibraryError(
                f"The library holds {len(current)} vectors, its limit "
                "(PERSONA_EXPLORER_LIBRARY_MAX_VECTORS); delete some first."
            )
        if owner_id is not None:
            mine = sum(1 for e in current if e.owner == owner_id)
            if mine >= lim.library_max_per_owner:
                raise LibraryError(
                    f"You have saved {mine} vectors to the library, the most one browser may "
                    "save (PERSONA_EXPLORER_LIBRARY_MAX_PER_OWNER); delete some of yours first."
                )

    def rename(self, entry_id: str, new_name: str, *, owner: str | None = None) -> LibraryEntry:
        """Store the vector under ``new_name``: write the new file, then remove the old one.

        A crash between the two steps leaves both files (two valid copies), never none.
        ``owner`` as for :meth:`delete`."""
        self._check_writable()
        path = self._path(entry_id)
        display = clean_name(new_name)
        with self._writing():
            entry = self._lookup(path)
            if entry is None:
                raise LibraryError(f"No vector {entry_id!r} in the library (was it deleted?).")
            self._check_owner(entry, owner)
            renamed = self.get(entry_id).with_(name=display)
            new_id, new_path, size = self._publish(renamed, slugify(display), keep=entry_id)
            if new_id != entry_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._forget(path)
        return LibraryEntry(new_id, new_path, VectorInfo.of(renamed), None, size, entry.owner)

    def delete(self, entry_id: str, *, owner: str | None = None) -> None:
        """Remove ``entry_id``. ``owner``: the visitor's token, which must be the one it was
        saved with (None: the local administrator, who may delete anything). A file no one
        can read may be deleted by anyone."""
        self._check_writable()
        path = self._path(entry_id)
        with self._writing():
            entry = self._lookup(path)
            if entry is None:
                raise LibraryError(f"No vector {entry_id!r} in the library.")
            self._check_owner(entry, owner)
            try:
                path.unlink()
            except FileNotFoundError:
                raise LibraryError(f"No vector {entry_id!r} in the library.") from None
            finally:
                self._forget(path)

    def _sweep_stale_temp_files(self) -> None:
        """Remove orphaned staging files and directories (call while :meth:`_writing`)."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        for tmp in self.root.iterdir():
            if not is_temp_name(tmp.name):
                continue
            try:
                st = tmp.lstat()
                if st.st_mtime >= cutoff:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                log.info("library: removed the stale temporary %s", tmp.name)
            except OSError as exc:
                log.warning("library: cannot remove %s: %s", tmp.name, exc)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
