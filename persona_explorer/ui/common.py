"""What every tab shares: the app context (model, library, settings), the catalog of vectors a
user can pick from, input checks, and the conversion of engine errors into ``gr.Error``.

Vectors are referred to by keys: ``builtin:<id>`` (shipped, read-only), ``library:<id>`` (saved
on disk, shared by all users) and ``session:<id>`` (extracted or uploaded in this browser
session, kept in ``gr.State``). The API also accepts a plain name (``"pirate"``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gradio as gr

from ..config import Settings
from ..library import Library, LibraryError, slugify
from ..model import LoadedModel, load_model
from ..personas import PersonaError
from ..steering import SteeringError
from ..vectors import PersonaVector, VectorFileError, VectorMismatchError, check_fits, save

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 2.0  # FACTS.md: ~2 makes a persona visible on this model; 1 often tone only
STRENGTH_SLIDER_MIN_RANGE = 8.0
SessionVectors = dict[str, PersonaVector]
Where = Literal["built-in", "library", "session"]

_PREFIX = {"builtin": "built-in", "library": "library", "session": "session"}
_EXPORT_MAX_AGE_S = 3600

# format key -> (label, suffix, .pt layout)
EXPORT_FORMATS: dict[str, tuple[str, str, str | None]] = {
    "safetensors": ("Persona Explorer (.safetensors)", ".safetensors", None),
    "persona_vectors": ("persona_vectors (.pt)", ".pt", "persona_vectors"),
    "assistant_axis": ("assistant-axis (.pt)", ".pt", "assistant_axis"),
    "gguf": ("llama.cpp control vector (.gguf)", ".gguf", None),
}
_PV_KIND = {"response": "response_avg", "prompt": "prompt_avg", "last": "prompt_last"}


class InputError(ValueError):
    """A widget or API value the app cannot use; the message says what to enter instead."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the engine's "you asked for something impossible" errors into ``gr.Error``.

    Only these specific exceptions: anything else is a bug and should surface as one (Gradio
    logs it and shows a generic error) rather than be dressed up as a user mistake.
    """
    try:
        yield
    except (
        InputError,
        SteeringError,
        VectorFileError,
        VectorMismatchError,
        PersonaError,
        LibraryError,
        ValueError,
    ) as exc:
        raise gr.Error(str(exc)) from exc


# --------------------------------------------------------------------------- input checks


def check_text(value: Any, what: str, max_chars: int, *, required: bool) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if required and not text.strip():
        raise InputError(f"The {what} is empty: type something for the model to answer.")
    if len(text) > max_chars:
        raise InputError(
            f"The {what} is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Shorten it and try again."
        )
    return text.strip()


def check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{what} must be a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, not {value!r}.")
    return number


def check_int(value: Any, what: str, low: int, high: int) -> int:
    number = check_number(value, what)
    if number != int(number):
        raise InputError(f"{what} must be a whole number, not {number:g}.")
    if not low <= number <= high:
        raise InputError(f"{what} must be between {low} and {high}, not {int(number)}.")
    return int(number)


# --------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class VectorItem:
    key: str
    where: Where
    vector: PersonaVector | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.vector.name if self.vector is not None else self.key.split(":", 1)[1]


@dataclass
class AppContext:
    """Shared, read-only (apart from the on-disk library) state of one running app."""

    settings: Settings
    model: LoadedModel
    library: Library
    builtins: Library
    export_dir: Path
    # session hash -> "stop" flag of that user's running extraction
    _stop_flags: dict[str, threading.Event] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, model: LoadedModel | None = None) -> AppContext:
        if model is None:
            model = load_model(settings.model or None, device=settings.device)
        # Build the (lazy) decoder now, once: two first requests racing to build it would
        # both pack the weights.
        model.decoder()
        export_dir = Path(tempfile.mkdtemp(prefix="persona-explorer-exports-"))
        return cls(
            settings=settings,
            model=model,
            library=Library(settings.library_dir),
            builtins=Library(settings.builtin_vectors_dir, read_only=True),
            export_dir=export_dir,
        )

    # ------------------------------------------------------------ listing & lookup

    def items(self, session: Mapping[str, PersonaVector] | None = None) -> list[VectorItem]:
        out = [
            VectorItem(f"builtin:{e.id}", "built-in", e.vector, e.error)
            for e in self.builtins.entries()
        ]
        out += [
            VectorItem(f"library:{e.id}", "library", e.vector, e.error)
            for e in self.library.entries()
        ]
        out += [VectorItem(k, "session", v) for k, v in (session or {}).items()]
        return out

    def resolve(self, ref: Any, session: Mapping[str, PersonaVector] | None = None) -> VectorItem:
        """The vector a dropdown key or a plain name refers to."""
        if not isinstance(ref, str) or not ref.strip():
            raise InputError(
                "No persona selected: pick one, extract one in the Extract tab or upload one "
                "in the Library tab."
            )
        ref = ref.strip()
        items = self.items(session)
        by_key = {i.key: i for i in items}
        found = by_key.get(ref)
        if found is None:
            # A plain name (API users): built-in first, then library, then this session.
            wanted = ref.lower()
            found = next(
                (i for i in items if i.key.split(":", 1)[1] == wanted or i.name.lower() == wanted),
                None,
            )
        if found is None:
            names = sorted({i.name for i in items if i.vector is not None})
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise InputError(
                f"Unknown persona {ref[:80]!r}. Available: {shown or 'none yet'}. Extract a "
                "new one in the Extract tab or upload one in the Library tab."
            )
        if found.vector is None:
            raise InputError(f"The vector file for {found.name!r} cannot be read: {found.error}")
        return found

    def fit_problem(self, vec: PersonaVector) -> str | None:
        """Why ``vec`` cannot steer the loaded model (a message naming its model), or None."""
        m = self.model
        try:
            check_fits(vec, m.n_layers, m.d_model, m.model_id)
        except VectorMismatchError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------ defaults for a vector

    def default_layer(self, vec: PersonaVector) -> int:
        n = self.model.n_layers
        for candidate in (vec.layer, vec.best_layer):
            if candidate is not None and 0 <= candidate < n:
                return int(candidate)
        return (2 * n) // 3

    def default_strength(self, vec: PersonaVector) -> float:
        return float(vec.strength) if vec.strength is not None else DEFAULT_STRENGTH

    def strength_range(self, strength: float) -> float:
        """Slider half-width: room for 4x the recommended strength, within the limit."""
        want = max(STRENGTH_SLIDER_MIN_RANGE, math.ceil(abs(4 * strength)))
        return float(min(want, self.settings.max_abs_strength))

    def check_strength(self, value: Any) -> float:
        strength = check_number(value, "Strength")
        limit = self.settings.max_abs_strength
        if abs(strength) > limit:
            raise InputError(
                f"Strength {strength:g} is too large: use a value between -{limit:g} and "
                f"{limit:g} (typical values are 1-4 times the recommended strength)."
            )
        return strength

    def check_layer(self, value: Any) -> int:
        n = self.model.n_layers
        number = check_number(value, "Layer")
        if number != int(number) or not 0 <= number < n:
            raise InputError(f"Layer {number:g} is out of range: this model has layers 0-{n - 1}.")
        return int(number)

    def check_max_new_tokens(self, value: Any) -> int:
        return check_int(value, "Max new tokens", 1, self.settings.max_new_tokens)

    def check_upload(self, path: str | os.PathLike[str]) -> Path:
        """A received upload, checked for size before anything reads it."""
        p = Path(path)
        size = p.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise InputError(
                f"{p.name} is {size / 2**20:.1f} MB; uploads are limited to "
                f"{self.settings.max_upload_mb} MB. Vector files are usually well under 1 MB: "
                "is this a model checkpoint?"
            )
        return p

    # ------------------------------------------------------------ stopping long work

    def stop_flag(self, who: str) -> threading.Event:
        """A fresh flag for ``who``'s new long-running job (set by :meth:`request_stop`)."""
        flag = threading.Event()
        self._stop_flags[who] = flag
        return flag

    def request_stop(self, who: str) -> None:
        flag = self._stop_flags.get(who)
        if flag is not None:
            flag.set()

    def release_stop_flag(self, who: str, flag: threading.Event) -> None:
        if self._stop_flags.get(who) is flag:
            del self._stop_flags[who]

    # ------------------------------------------------------------ exports

    def export(self, vec: PersonaVector, fmt: str) -> Path:
        """Write ``vec`` in ``fmt`` to a fresh file for download; returns its path."""
        if fmt not in EXPORT_FORMATS:
            raise InputError(f"Unknown format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}.")
        _, suffix, layout = EXPORT_FORMATS[fmt]
        stem = slugify(vec.name)
        if fmt == "persona_vectors" and vec.variant in _PV_KIND:
            # persona_vectors' own naming, so the file round-trips its name and variant.
            stem = f"{stem}_{_PV_KIND[vec.variant]}_diff"
        self._prune_exports()
        folder = self.export_dir / secrets.token_hex(8)
        folder.mkdir(parents=True)
        with warnings.catch_warnings():
            # GGUF cannot hold layer 0; that is documented next to the download button.
            warnings.simplefilter("ignore", UserWarning)
            return save(
                vec,
                folder / f"{stem}{suffix}",
                layout=layout,  # type: ignore[arg-type]
                **({"model_hint": self.model.architecture} if fmt == "gguf" else {}),
            )

    def _prune_exports(self) -> None:
        cutoff = time.time() - _EXPORT_MAX_AGE_S
        for folder in self.export_dir.iterdir():
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)


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


def persona_choices(ctx: AppContext, session: Mapping[str, PersonaVector] | None) -> list:
    """(label, key) pairs for the persona dropdown: readable vectors, fitting ones first."""
    fits, other = [], []
    for item in ctx.items(session):
        if item.vector is None:
            continue
        label = f"{item.name} · {item.where}"
        if ctx.fit_problem(item.vector) is None:
            fits.append((label, item.key))
        else:
            other.append((f"{label} · other model", item.key))
    return fits + other


def default_persona_key(ctx: AppContext, session: Mapping[str, PersonaVector] | None) -> str | None:
    """The configured default persona if it exists and fits, else the first one that fits."""
    choices = persona_choices(ctx, session)
    if not choices:
        return None
    wanted = ctx.settings.default_persona
    with contextlib.suppress(InputError):
        item = ctx.resolve(wanted, session)
        if ctx.fit_problem(item.vector) is None:  # type: ignore[arg-type]
            return item.key
    return choices[0][1]


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
