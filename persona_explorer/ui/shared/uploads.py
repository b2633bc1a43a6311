"""Uploads: a quota per visitor and in total, and deletion of what a handler has read.

Gradio receives every file at ``/gradio_api/upload`` before any handler sees it, from anybody,
and keeps it an hour: five 60 MB uploads filled the disk by 300 MB in seconds. Three bounds:

* the size of one file (``Limits.max_upload_mb``, passed to Gradio as ``max_file_size``), fitted
  to the largest legitimate upload, a vector file;
* :class:`UploadQuota`, an ASGI middleware in front of the upload route: one address may send
  ``upload_quota_mb`` in an hour, and nothing is received while the upload folder holds
  ``upload_total_mb``. It reads ``Content-Length`` before the body is read (a request without
  one is refused; the server never reads past it), and answers with a message of its own;
* prompt deletion of what a handler has read, owned by :func:`discard` (and the two ways in:
  :func:`consumed`, :func:`held`). A file read once into memory (a vector file, an adapter
  .zip) is deleted as soon as the handler has read it, whether it was accepted or refused. A
  data file (Screen data, Train) or a conversation (Drift) is read again by the same visitor's
  later events (a second run, the inoculation re-score, the full-line download, the predicted
  shift, another replay), so it is *held*: deleted ``HOLD_S`` after a run last read it, or
  sooner when more than ``HOLD_MAX_FILES`` are held (the least recently used first); a refused
  one is deleted at once. An upload no handler reads goes with Gradio's hourly clean-up.

Only a regular file inside Gradio's upload folder (in a folder of its own, as Gradio stores
each upload) is ever deleted: a path a client sent that leads anywhere else is ignored.

Accounting after a deletion: the hourly quota per address counts what an address *sent* (it is
about traffic), so deleting a file does not give the quota back; the total is about the disk,
so the bytes freed count at once (and the folder is measured again every few seconds).

Imports: gradio, starlette (Gradio's server), ``core.errors``, :mod:`.fairness`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from persona_explorer.core.errors import InputError
from persona_explorer.ui.shared.fairness import client_address

__all__ = [
    "GONE",
    "HOLD_MAX_FILES",
    "HOLD_S",
    "UploadQuota",
    "consumed",
    "discard",
    "folder_bytes",
    "held",
    "hold",
    "prune_held",
]

WINDOW_S = 3600.0  # Gradio deletes uploads after an hour (build_demo's delete_cache)
_FOLDER_CACHE_S = 5.0
HOLD_S = 1800.0  # a held data file is deleted half an hour after a run last read it
GONE = "The uploaded file is no longer on the server: upload it again."
HOLD_MAX_FILES = 64  # ... or when more are held (64 x 20 MB stays well inside the total)

# Every live quota, told of the bytes a deletion frees (its figure for the folder is cached).
_QUOTAS: weakref.WeakSet[UploadQuota] = weakref.WeakSet()
# Held data files: resolved path -> (upload folder, when a run last read it), oldest first.
_HELD: OrderedDict[Path, tuple[Path, float]] = OrderedDict()
_HELD_LOCK = threading.Lock()


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` and its subfolders (Gradio's: one level of hashes)."""
    total = 0
    stack = [folder]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
    return total


def _inside(path: object, folder: Path | None) -> tuple[Path, Path] | None:
    """(the upload's resolved path, the resolved folder) when ``path`` names a file inside
    Gradio's upload ``folder``, in a folder of its own; else None (whatever a client sent)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        return None
    try:
        root = Path(folder or get_upload_folder()).resolve()
        p = Path(raw).resolve()  # symlinks followed: one pointing out of the folder is ignored
    except (OSError, RuntimeError, ValueError):
        return None
    if root not in p.parents or p.parent == root:
        return None
    return p, root


def discard(path: object, folder: Path | None = None) -> int:
    """Delete an upload that has been read (its folder too, when Gradio made one for it);
    returns the bytes freed. Only a regular file inside Gradio's upload ``folder`` is touched,
    whatever a client sent: anything else is left alone (0)."""
    found = _inside(path, folder)
    if found is None:
        return 0
    p, root = found
    with _HELD_LOCK:
        _HELD.pop(p, None)
    try:
        st = p.lstat()
        if not stat.S_ISREG(st.st_mode):
            return 0
        p.unlink()
    except OSError:
        return 0
    if p.parent != root:
        with contextlib.suppress(OSError):
            p.parent.rmdir()  # only when empty: Gradio puts each upload in a folder of its own
    for quota in list(_QUOTAS):
        quota.freed(st.st_size)
    return st.st_size


@contextlib.contextmanager
def consumed(path: object, folder: Path | None = None) -> Iterator[object]:
    """``with consumed(upload): read it``: the upload is deleted when the block ends, whether
    the read succeeded or failed (a refused file is not kept either)."""
    try:
        yield path
    finally:
        discard(path, folder)


def hold(path: object, folder: Path | None = None, now: float | None = None) -> None:
    """A data upload a run has just read, kept for the visitor's next events (see the module
    doc); held files past ``HOLD_S`` or beyond ``HOLD_MAX_FILES`` are deleted now."""
    found = _inside(path, folder)
    t = time.monotonic() if now is None else now
    if found is not None:
        with _HELD_LOCK:
            _HELD[found[0]] = (found[1], t)
            _HELD.move_to_end(found[0])
    prune_held(t)


@contextlib.contextmanager
def held(path: object, folder: Path | None = None) -> Iterator[Path]:
    """``with held(upload) as p: read p``: for an upload the visitor's next events read again.
    Accepted (the block ends without an error), it is held (:func:`hold`); refused, it is
    deleted at once. An upload that is no longer on the server is a clear error."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError("The file must be an uploaded file.")
    p = Path(path)
    if not p.is_file():
        raise InputError(GONE)
    try:
        yield p
    except BaseException:
        discard(p, folder)
        raise
    hold(p, folder)


def prune_held(now: float | None = None) -> int:
    """Delete the held data files past ``HOLD_S`` or beyond ``HOLD_MAX_FILES``; returns how
    many were deleted."""
    t = time.monotonic() if now is None else now
    with _HELD_LOCK:
        stale = [
            (p, root)
            for i, (p, (root, used)) in enumerate(_HELD.items())
            if t - used > HOLD_S or len(_HELD) - i > HOLD_MAX_FILES
        ]
    for p, root in stale:
        discard(p, root)
    return len(stale)


class UploadQuota:
    """ASGI middleware: refuses an upload over its address's hourly quota, or while the upload
    folder is full. ``folder`` finds the folder (from the app, when it is known)."""

    def __init__(
        self,
        app: Any,
        *,
        per_address: int,
        total: int,
        trusted_hops: int = 0,
        folder: Callable[[Any], Path | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.per_address = per_address
        self.total = total
        self.trusted_hops = trusted_hops
        self.folder = folder or _gradio_upload_folder
        self.clock = clock
        self.sent: dict[str, deque[tuple[float, int]]] = {}
        self._folder_size: tuple[float, int] | None = None
        _QUOTAS.add(self)

    def freed(self, size: int) -> None:
        """``size`` bytes of the upload folder were deleted: the total counts them at once. The
        hourly quota per address does not give them back (it is about what was sent)."""
        if self._folder_size is not None:
            self._folder_size = (self._folder_size[0], max(0, self._folder_size[1] - size))

    def _used(self, address: str, now: float) -> int:
        log = self.sent.get(address)
        if log is None:
            return 0
        while log and now - log[0][0] > WINDOW_S:
            log.popleft()
        if not log:
            del self.sent[address]
            return 0
        return sum(n for _, n in log)

    def _stored(self, app: Any, now: float) -> int:
        if self._folder_size is None or now - self._folder_size[0] > _FOLDER_CACHE_S:
            folder = self.folder(app)
            size = folder_bytes(folder) if folder is not None else 0
            self._folder_size = (now, size)
        return self._folder_size[1]

    def refusal(self, request: Request, app: Any = None) -> tuple[int, str] | None:
        """(status, message) when this upload is refused; else it is counted and None."""
        raw = request.headers.get("content-length", "")
        if not raw.isdigit():
            return 411, "Uploads must state their size (Content-Length)."
        size = int(raw)
        now = self.clock()
        prune_held()  # held data files past their time go first
        if len(self.sent) > 10_000:  # forget idle addresses
            for key in list(self.sent):
                self._used(key, now)
        address = client_address(request, self.trusted_hops)
        used = self._used(address, now)
        if used + size > self.per_address:
            left = max(0, self.per_address - used) / 2**20
            return 429, (
                f"Upload refused: your network address has uploaded {used / 2**20:.0f} MB in "
                f"the last hour (the limit is {self.per_address / 2**20:.0f} MB; "
                f"{left:.0f} MB left). Try again later."
            )
        if self._stored(app, now) + size > self.total:
            return 507, "Upload refused: the server's upload space is full. Try again later."
        self.sent.setdefault(address, deque()).append((now, size))
        if self._folder_size is not None:
            self._folder_size = (self._folder_size[0], self._folder_size[1] + size)
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if scope.get("method") == "POST" and path.rstrip("/").endswith("/upload"):
            why = self.refusal(Request(scope), scope.get("app"))
            if why is not None:
                status, message = why
                await PlainTextResponse(message, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _gradio_upload_folder(app: Any) -> Path | None:
    folder = getattr(app, "uploaded_file_dir", None)
    return Path(folder) if folder else None
