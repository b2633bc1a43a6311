"""What every tab shares: :class:`AppContext` (settings, model, vector catalog, running jobs,
download files) and :func:`user_errors`, which turns the project's own errors into ``gr.Error``.

Imports: ``..config``, ``..model``, ``..library``, ``..vector_files``, ``..errors``, and
:mod:`.catalog`; never a tab module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from persona_explorer.core.config import Settings
from persona_explorer.core.errors import InputError, UserError
from persona_explorer.core.fileio import atomic_write
from persona_explorer.engine import decoder_for
from persona_explorer.engine import threads as omp
from persona_explorer.engine.model import LoadedModel, load_model
from persona_explorer.steering import shared_batch
from persona_explorer.ui.shared.catalog import ModelShape, VectorCatalog
from persona_explorer.ui.shared.markup import plain
from persona_explorer.vectors.files import FORMATS, export_stem, save, save_notes
from persona_explorer.vectors.library import Library, LibraryEntry
from persona_explorer.vectors.persona_vector import PersonaVector, VectorInfo

if TYPE_CHECKING:
    from persona_explorer.axis.assistant_axis import AxisData
    from persona_explorer.axis.build import ProgressFn

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 2.0  # FACTS.md: ~2 makes a persona visible on this model; 1 often tone only
STRENGTH_SLIDER_MIN_RANGE = 8.0
_EXPORT_MAX_AGE_S = 3600
BUG_MESSAGE = (
    "Something went wrong on the server: this is a bug, not something you did. It has been "
    "logged; try again, and report it if it keeps happening."
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show the project's own errors (:class:`~..errors.UserError`) to the user as they are.

    Anything else is a bug: it is logged with its traceback and the user sees a generic message
    instead of an internal error dressed up as a mistake of theirs.
    """
    try:
        yield
    except gr.Error:
        raise
    except UserError as exc:
        # Gradio renders an error's message as (sanitised) HTML: user text in it is escaped.
        raise gr.Error(plain(exc, 1000)) from exc
    except Exception as exc:
        log.exception("bug in a request handler")
        raise gr.Error(BUG_MESSAGE) from exc


_OWNER_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def new_owner_token() -> str:
    return secrets.token_urlsafe(24)


def check_owner(token: object) -> str:
    """The visitor's owner token (kept in their browser), checked before any library write."""
    if not isinstance(token, str) or not _OWNER_TOKEN.match(token):
        raise InputError(
            "This browser has no valid owner token, which marks the vectors it saves: reload "
            "the page and try again."
        )
    return token


def browser_secret(data_dir: Path) -> str:
    """The key that encrypts owner tokens in browsers, kept across restarts (a new key would
    make every visitor lose the vectors they saved)."""
    path = data_dir / ".browser-secret"
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if len(text) >= 32:
            return text
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)

    def write(tmp: Path) -> None:
        tmp.write_text(secret)
        tmp.chmod(0o600)

    atomic_write(path, write)
    return secret


class Jobs:
    """Stop flags of running long jobs (extractions), per owner: the browser session.

    A job of one session can only be stopped from that session; an API call without a session
    gets an owner of its own, so nobody else's Stop reaches it (the queue's cancel still does).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, set[threading.Event]] = {}

    @contextlib.contextmanager
    def track(self, owner: str | None) -> Iterator[threading.Event]:
        key = owner or f"anonymous-{secrets.token_hex(8)}"
        flag = threading.Event()
        with self._lock:
            self._flags.setdefault(key, set()).add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                flags = self._flags.get(key, set())
                flags.discard(flag)
                if not flags:
                    self._flags.pop(key, None)

    def stop(self, owner: str | None) -> int:
        """Ask every running job of ``owner`` to stop; returns how many were asked."""
        if not owner:
            return 0
        with self._lock:
            flags = list(self._flags.get(owner, ()))
        for flag in flags:
            flag.set()
        return len(flags)


@dataclass(frozen=True)
class JobTimer:
    """A job's deadline; ``expired`` is a ``should_stop`` callback for the engine."""

    deadline: float

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass(frozen=True)
class JobControl:
    """``should_stop`` for one running job: its session's Stop, or the time limit for a job."""

    flag: threading.Event
    timer: JobTimer

    def __call__(self) -> bool:
        return self.flag.is_set() or self.timer.expired()

    def timed_out(self) -> bool:
        return self.timer.expired()


class Exports:
    """Files written for download, each in a fresh folder.

    Folders older than an hour go, checked on every write and every ten minutes by a daemon
    thread; at most ``MAX_EXPORTS`` folders are kept (the oldest go first), so clicking
    "Prepare download" in a loop cannot fill the disk.
    """

    MAX_EXPORTS = 200
    PRUNE_EVERY_S = 600.0

    def __init__(self, root: Path, model_hint: str) -> None:
        self.root = root
        self.model_hint = model_hint or "llama"
        self._lock = threading.Lock()

    def start_pruning(self) -> None:
        def loop() -> None:
            while True:
                time.sleep(self.PRUNE_EVERY_S)
                self.prune()

        threading.Thread(target=loop, name="prune-exports", daemon=True).start()

    def write(self, vec: PersonaVector, fmt: str) -> tuple[Path, list[str]]:
        """Write ``vec`` in ``fmt``; returns the file and what the format left out."""
        if fmt not in FORMATS:
            raise InputError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}.")
        spec = FORMATS[fmt]
        path = save(
            vec,
            self.fresh_folder() / f"{export_stem(vec, spec)}{spec.suffix}",
            layout=spec.layout,
            **({"model_hint": self.model_hint} if fmt == "gguf" else {}),
        )
        return path, save_notes(vec, spec)

    def write_run(self, json_text: str, csv_text: str) -> tuple[Path, Path]:
        """A finished run's record (JSON) and projections (CSV), for its download buttons."""
        folder = self.fresh_folder()
        paths = (folder / "persona-run.json", folder / "persona-run-projections.csv")
        for path, text in zip(paths, (json_text, csv_text), strict=True):
            atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        return paths

    def fresh_folder(self) -> Path:
        """A new folder for one download, made room for first (at most MAX_EXPORTS)."""
        self.prune(keep=self.MAX_EXPORTS - 1)
        folder = self.root / secrets.token_hex(8)
        folder.mkdir(parents=True)
        return folder

    def prune(self, max_age_s: float = _EXPORT_MAX_AGE_S, keep: int | None = None) -> None:
        """Remove folders older than ``max_age_s``, and the oldest beyond ``keep``."""
        keep = self.MAX_EXPORTS if keep is None else keep
        with self._lock:
            folders = []
            for folder in self.root.iterdir():
                with contextlib.suppress(OSError):
                    folders.append((folder.stat().st_mtime, folder))
            folders.sort()
            cutoff = time.time() - max_age_s
            excess = max(0, len(folders) - keep)
            for i, (mtime, folder) in enumerate(folders):
                if mtime < cutoff or i < excess:
                    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class AppContext:
    """Shared state of one running app: read-only apart from the on-disk library."""

    settings: Settings
    model: LoadedModel
    catalog: VectorCatalog
    jobs: Jobs
    exports: Exports
    browser_secret: str
    _axis: AxisData | None = field(default=None, repr=False)
    _axis_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings, model: LoadedModel | None = None) -> AppContext:
        if model is None:
            model = load_model(settings.model or None, device=settings.device, settings=settings)
            if settings.adapter is not None:
                # ``--adapter``: every tab runs on the fine-tuned model (merged weights).
                from persona_explorer.training.adapters import load_tuned

                model = load_tuned(model, settings.adapter)
        # Build the decoder now, once, rather than inside the first visitor's request, with this
        # app's switches (a model handed in, or a tuned one, carries the defaults).
        decoder_for(model, prefer_fast=settings.fast_decoder, use_kernel=settings.decode_kernel)
        if settings.shared_batch:
            shared_batch.serve(model)
        shape = ModelShape(model.model_id, model.n_layers, model.d_model)
        limits = settings.limits
        catalog = VectorCatalog(
            builtins=Library(settings.builtin_vectors_dir, read_only=True, limits=limits),
            # Public mode: visitors keep what they make in their session (and download it).
            library=Library(settings.library_dir, read_only=settings.public, limits=limits),
            shape=shape,
        )
        exports = Exports(
            Path(tempfile.mkdtemp(prefix="persona-explorer-exports-")), model.architecture
        )
        exports.start_pruning()
        return cls(settings, model, catalog, Jobs(), exports, browser_secret(settings.data_dir))

    def axis(self, progress: ProgressFn | None = None) -> AxisData:
        """The loaded model's Assistant Axis: shipped for the embedded model, else read from
        the cache or built once (minutes, with ``progress``) and cached, for every visitor."""
        with self._axis_lock:
            if self._axis is None:
                from persona_explorer.axis.build import axis_for

                self._axis = axis_for(self.model, self.settings.cache_dir, progress)
            return self._axis

    def axis_if_ready(self) -> AxisData | None:
        """The axis if it is loaded or on disk, else None: for views, which must never start
        a build (minutes). An unreadable axis file is logged and gives None (the Persona
        space tab says why when asked for the axis)."""
        from persona_explorer.axis.build import axis_on_disk

        if self._axis is None and axis_on_disk(self.model, self.settings.cache_dir) is None:
            return None
        try:
            return self.axis()
        except InputError as exc:
            log.warning("no Assistant Axis to show: %s", exc)
            return None

    @property
    def library(self) -> Library:
        return self.catalog.library

    def save_to_library(self, vec: PersonaVector, owner: object) -> LibraryEntry:
        """Save for the visitor whose browser holds ``owner`` (quotas and ownership apply)."""
        if self.library.read_only:
            raise InputError(
                "This is a public server: its shared library is read-only. Your vectors stay in "
                "this browser session; download them to keep them."
            )
        return self.library.save(vec, owner=check_owner(owner))

    def heavy_queue(self) -> dict[str, Any]:
        """Event options for a long job (extraction, sweep, screening, training): they share
        one queue and its limit, so the model is never oversubscribed by them together."""
        return {
            "concurrency_limit": self.settings.extract_concurrency,
            "concurrency_id": "extraction",
        }

    def job_timer(self) -> JobTimer:
        return JobTimer(time.monotonic() + self.settings.limits.job_timeout_s)

    @contextlib.contextmanager
    def job(self, request: gr.Request | None) -> Iterator[JobControl]:
        """Run one long job for the caller's session: stoppable from it, and time-limited."""
        owner = request.session_hash if request is not None else None
        if self.settings.shared_batch:
            # Only the engine thread keeps an OpenMP team (``engine.threads``); this thread's
            # passes under the compute lock still get one for their length.
            omp.single()
        with self.jobs.track(owner) as flag:
            yield JobControl(flag, self.job_timer())

    # ------------------------------------------------------------ defaults for a vector

    def default_layer(self, vec: PersonaVector | VectorInfo) -> int:
        n = self.model.n_layers
        for candidate in (vec.layer, vec.best_layer):
            if candidate is not None and 0 <= candidate < n:
                return int(candidate)
        return (2 * n) // 3

    def default_strength(self, vec: PersonaVector | VectorInfo) -> float:
        return float(vec.strength) if vec.strength is not None else DEFAULT_STRENGTH

    def strength_range(self, strength: float) -> float:
        """Slider half-width: room for 4x the recommended strength, within the limit."""
        want = max(STRENGTH_SLIDER_MIN_RANGE, math.ceil(abs(4 * strength)))
        return float(min(want, self.settings.limits.max_abs_strength))

    def check_upload(self, path: str | Path) -> Path:
        """A received upload, checked for size before anything reads it."""
        p = Path(path)
        size = p.stat().st_size
        limits = self.settings.limits
        if size > limits.max_upload_bytes:
            raise InputError(
                f"{p.name} is {size / 2**20:.1f} MB; uploads are limited to "
                f"{limits.max_upload_mb} MB. Vector files are usually well under 1 MB: "
                "is this a model checkpoint?"
            )
        return p
