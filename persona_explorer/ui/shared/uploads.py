"""Uploads: a quota per visitor and in total, and deletion of what a handler has read.

Gradio receives every file at ``/gradio_api/upload`` before any handler sees it, from anybody,
and keeps it an hour: five 60 MB uploads filled the disk by 300 MB in seconds. Three bounds:

* the size of one file (``Limits.max_upload_mb``, passed to Gradio as ``max_file_size``), fitted
  to the largest legitimate upload, a vector file;
* :class:`UploadQuota`, an ASGI middleware in front of the upload route: one address may send
  ``upload_quota_mb`` in an hour, and nothing is received while the upload folder holds
  ``upload_total_mb``. It reads ``Content-Length`` before the body is read (a request without
  one is refused; the server never reads past it), and answers with a message of its own;
* :func:`discard`: a handler that has read an upload into memory deletes it at once.

Imports: gradio, starlette (Gradio's server), :mod:`.fairness`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradio.utils import get_upload_folder
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from persona_explorer.ui.shared.fairness import client_address

__all__ = ["UploadQuota", "discard", "folder_bytes"]

WINDOW_S = 3600.0  # Gradio deletes uploads after an hour (build_demo's delete_cache)
_FOLDER_CACHE_S = 5.0


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


def discard(path: object, folder: Path | None = None) -> None:
    """Delete an upload that has been read (its folder too, when Gradio made one for it).
    Only a file inside Gradio's upload ``folder`` is touched, whatever a client sent."""
    if not isinstance(path, (str, Path)) or not str(path):
        return
    root = Path(folder or get_upload_folder()).resolve()
    p = Path(path).resolve()
    if root not in p.parents or p.parent == root:
        return
    with contextlib.suppress(OSError):
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        p.parent.rmdir()  # only when empty: Gradio puts each upload in a folder of its own


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
