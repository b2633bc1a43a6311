"""The tuned models the Train tab makes: adapter folders on disk and models in memory.

Adapters are folders under the cache directory (``adapters/<id>``): a random id, known only to
the session that trained it (:class:`TunedModels` refuses every other session's), at most
:data:`MAX_ADAPTERS_KEPT` folders on disk (the oldest go first) and :data:`MAX_HELD` tuned
models in memory (the least recently used is dropped, and read from its folder again when it
is needed). One visitor trains one model at a time. An uploaded adapter (already checked by
``training.adapter_io``) joins the uploader's adapters through :meth:`TunedModels.install`,
which loads it at once so that a refusal comes with the upload.

These caps are the server's resources, not limits on a request (those are in
:mod:`persona_explorer.core.limits`).

Imports: the domain's adapters (:func:`persona_explorer.training.adapters.load_tuned`),
``core.errors``, and gradio's request type.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from persona_explorer.core.errors import InputError
from persona_explorer.training.adapter_io import AdapterUpload, write_upload
from persona_explorer.training.adapters import load_tuned

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

__all__ = ["ADAPTER_MAX_AGE_S", "MAX_ADAPTERS_KEPT", "MAX_HELD", "TunedModels", "owner_of"]

# What the server keeps (its resources; not limits on a request).
MAX_HELD = 2  # tuned models in memory (each as large as the base model)
MAX_ADAPTERS_KEPT = 16  # adapter folders on disk
ADAPTER_MAX_AGE_S = 24 * 3600  # older folders go when the app starts or trains
_ADAPTER_ID = re.compile(r"^[a-z0-9]{4,40}$")


class TunedModels:
    """The adapters trained in this app and the tuned models made from them (see the module
    doc): who trained each, at most ``max_held`` in memory, ``max_kept`` folders on disk."""

    def __init__(self, root: Path, max_held: int = MAX_HELD, max_kept: int = MAX_ADAPTERS_KEPT):
        self.root = root
        self.max_held = max_held
        self.max_kept = max_kept
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}
        self._held: OrderedDict[str, LoadedModel] = OrderedDict()
        self._training: set[str] = set()
        self._loading = threading.Lock()
        self.prune(max_age_s=ADAPTER_MAX_AGE_S)

    def new_folder(self) -> tuple[str, Path]:
        """A fresh adapter id and its (not yet created) folder, room made on disk first."""
        self.prune(keep=self.max_kept - 1)
        adapter = f"{int(time.time()):x}{secrets.token_hex(8)}"
        return adapter, self.root / adapter

    def prune(self, max_age_s: float | None = None, keep: int | None = None) -> None:
        """Remove folders older than ``max_age_s``, and the oldest beyond ``keep``."""
        with self._lock:
            if not self.root.is_dir():
                return
            folders = []
            for folder in self.root.iterdir():
                with contextlib.suppress(OSError):
                    if folder.is_dir():
                        folders.append((folder.stat().st_mtime, folder))
            folders.sort()
            cutoff = time.time() - max_age_s if max_age_s is not None else None
            excess = max(0, len(folders) - keep) if keep is not None else 0
            for i, (mtime, folder) in enumerate(folders):
                if i < excess or (cutoff is not None and mtime < cutoff):
                    shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def training(self, owner: str) -> Iterator[None]:
        """One training at a time per visitor."""
        with self._lock:
            if owner in self._training:
                raise InputError(
                    "You are already training a model: wait for it to finish, or press Stop."
                )
            self._training.add(owner)
        try:
            yield
        finally:
            with self._lock:
                self._training.discard(owner)

    def add(self, adapter: str, owner: str, model: LoadedModel) -> None:
        with self._lock:
            self._owners[adapter] = owner
            self._hold(adapter, model)

    def install(self, base: LoadedModel, upload: AdapterUpload, owner: str) -> str:
        """An uploaded adapter (already checked) as one of ``owner``'s adapters: written to a
        fresh folder and loaded now, so that anything the checks let through and peft still
        refuses is refused here, not at the first measurement. Returns its id."""
        adapter, folder = self.new_folder()
        write_upload(upload, folder)
        try:
            with self._loading:  # one load at a time: each is as large as the base model
                tuned = load_tuned(base, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.add(adapter, owner, tuned)
        return adapter

    def folder(self, adapter: object, owner: str) -> Path:
        """The folder of one of ``owner``'s adapters (for its download)."""
        adapter = self.check(adapter, owner)
        folder = self.root / adapter
        if not folder.is_dir():
            raise InputError("This adapter was removed to make room for newer ones.")
        return folder

    def _hold(self, adapter: str, model: LoadedModel) -> None:
        self._held[adapter] = model
        self._held.move_to_end(adapter)
        while len(self._held) > self.max_held:
            self._held.popitem(last=False)

    def check(self, adapter: object, owner: str) -> str:
        """``adapter`` when this session trained it; otherwise a refusal."""
        if not isinstance(adapter, str) or not adapter.strip():
            raise InputError("Pick one of your trained models (train one first).")
        adapter = adapter.strip()
        with self._lock:
            mine = _ADAPTER_ID.match(adapter) and self._owners.get(adapter) == owner
        if not mine:
            raise InputError(
                "That adapter was not trained in this session: adapters are private to the "
                "session that trained them. Train one here first."
            )
        return adapter

    def model(self, base: LoadedModel, adapter: str, owner: str) -> LoadedModel:
        """The tuned model of one of ``owner``'s adapters (read from its folder again when it
        was dropped from memory)."""
        adapter = self.check(adapter, owner)
        with self._lock:
            held = self._held.get(adapter)
            if held is not None:
                self._held.move_to_end(adapter)
                return held
        folder = self.root / adapter
        with self._loading:  # one load at a time: each is as large as the base model
            with self._lock:
                held = self._held.get(adapter)
            if held is not None:
                return held
            if not folder.is_dir():
                raise InputError(
                    "This adapter was removed to make room for newer ones: train it again."
                )
            tuned = load_tuned(base, folder)
            with self._lock:
                self._hold(adapter, tuned)
            return tuned


def owner_of(request: gr.Request | None) -> str:
    """The caller's session (a script's gradio_client has one of its own)."""
    session = getattr(request, "session_hash", None) if request is not None else None
    return session if isinstance(session, str) and session else "local"
