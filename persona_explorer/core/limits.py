"""Every limit on input, and every rule that checks a number, a layer or a text: written once.

:class:`Limits` holds the values (a deployment overrides them with ``PERSONA_EXPLORER_*``
variables, read by :mod:`.config`; ``Settings.limits`` is the instance in force). The ``check_*``
functions hold the rules. Who enforces what:

* the engine (:mod:`.steering`, :mod:`.generation`, :mod:`.compare`, :mod:`.extract`) refuses
  what would make a computation wrong or meaningless: a layer outside the model, a non-finite
  number, a temperature below 0, a strength that overflows the model's dtype;
* the web app and the command line refuse what a deployment does not allow (how long a prompt,
  how many tokens, how strong), from ``Settings.limits``;

and both do it with the functions below, so a rule and its message exist in one place. The UI
and the CLI only convert their widgets' and arguments' values and call these.

Imports: :mod:`.errors` only (no torch, so the CLI's parser and the settings stay light).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from persona_explorer.core.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_BATCH_SIZE",
    "MAX_PERSONA_FILE_BYTES",
    "MAX_PERSONA_PAIRS",
    "MAX_PERSONA_QUESTIONS",
    "MAX_SAMPLES",
    "MAX_SEED",
    "PROMPT_TOKENS_SETTING",
    "Limits",
    "check_finite",
    "check_int",
    "check_layer",
    "check_max_new_tokens",
    "check_prompt_tokens",
    "check_seed",
    "check_strength",
    "check_temperature",
    "check_text",
    "check_top_p",
    "parse_layers",
]

MAX_SEED = 2**31 - 1
MAX_SAMPLES = 64  # rollouts per prompt in one extraction
MAX_BATCH_SIZE = 1024  # rows of one generation batch
# What a persona definition file may declare (personas.py); bounds for hostile files.
MAX_PERSONA_PAIRS = 200
MAX_PERSONA_QUESTIONS = 2000
# The shipped ones are under 20 KB; 1 MiB holds the limits above many times over.
MAX_PERSONA_FILE_BYTES = 1024 * 1024
# The variable that sets ``Limits.max_prompt_tokens``, named in the message that enforces it.
PROMPT_TOKENS_SETTING = "PERSONA_EXPLORER_MAX_PROMPT_TOKENS"
# Hard ceilings of the limits themselves: a setting beyond these is a typo, not a deployment.
_CEILINGS: dict[str, tuple[float, float]] = {
    "max_prompt_chars": (1, 1_000_000),
    "max_new_tokens": (1, 4096),
    "max_upload_mb": (1, 1024),
    "max_abs_strength": (1e-6, 1000.0),
    "max_temperature": (0.0, 10.0),
    "max_extract_questions": (1, 2000),
    "max_extract_rollouts": (2, 100_000),
    "max_extract_tokens": (1, 4096),
    "max_field_chars": (1, 1_000_000),
    "max_prompt_tokens": (16, 1_000_000),
    "max_vector_mb": (1, 1024),
    "library_max_vectors": (0, 1_000_000),
    "library_max_per_owner": (0, 100_000),
    "library_max_total_mb": (1, 1_000_000),
    "max_session_vectors": (1, 1000),
    "max_pending_per_visitor": (1, 1000),
    "job_timeout_s": (1, 86_400),
    "max_heatmap_vectors": (2, 200),
}


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for. Defaults suit a public server on a small CPU."""

    max_prompt_chars: int = 4000  # a prompt or system prompt typed by a user
    max_new_tokens: int = 256  # tokens one generation may produce
    max_upload_mb: int = 64  # a vector file received by the app
    max_abs_strength: float = 100.0  # |strength| of a steering vector
    max_temperature: float = 2.0
    max_extract_questions: int = 20  # questions one extraction in the app may use
    max_extract_rollouts: int = 200  # answers one extraction in the app may generate
    max_extract_tokens: int = 128  # new tokens per extraction answer in the app
    max_field_chars: int = 20_000  # one field of a persona definition (prompts, questions)
    max_prompt_tokens: int = 2048  # one templated prompt (system + user + template), in tokens
    max_vector_mb: int = 16  # one vector's tensors, in a file or in the library
    library_max_vectors: int = 500  # vectors saved in the shared library
    library_max_per_owner: int = 50  # vectors one visitor (browser) may save there
    library_max_total_mb: int = 512  # bytes of all saved vectors together
    max_session_vectors: int = 24  # vectors kept in one browser session (gr.State)
    max_pending_per_visitor: int = 3  # queued or running jobs of one visitor
    job_timeout_s: int = 600  # a job running longer is stopped
    max_heatmap_vectors: int = 24  # vectors in one similarity heat map

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = _CEILINGS[f.name]
            is_int = f.type in ("int", int)
            ok_type = not isinstance(value, bool) and (
                isinstance(value, int) if is_int else isinstance(value, (int, float))
            )
            if not ok_type or not (math.isfinite(value) and low <= value <= high):
                kind = "an integer" if is_int else "a number"
                raise ConfigError(f"{f.name} must be {kind} in [{low:g}, {high:g}], not {value!r}")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_vector_bytes(self) -> int:
        return self.max_vector_mb * 1024 * 1024

    @property
    def library_max_total_bytes(self) -> int:
        return self.library_max_total_mb * 1024 * 1024


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- numbers


def check_finite(value: Any, what: str) -> float:
    """``value`` as a finite float (widget values arrive as int, float, str or None)."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"{what} must be a number.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a number, not {str(value)[:40]!r}.") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, not {str(value)[:40]!r}.")
    return number


def check_int(value: Any, what: str, low: int, high: int | None = None) -> int:
    """A whole number in ``[low, high]`` (``high=None``: no upper bound)."""
    number = check_finite(value, what)
    if number != int(number):
        raise InputError(f"{what} must be a whole number, not {number:g}.")
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{what} must be {bound}, not {int(number)}.")
    return int(number)


def check_layer(value: Any, n_layers: int, what: str = "Layer") -> int:
    """A layer index of a model with ``n_layers`` blocks (the layer convention: vectors.py)."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, not {value!r}.")
    try:
        layer = operator.index(value)
    except TypeError:
        number = check_finite(value, what)
        if number != int(number):
            raise InputError(f"{what} must be a whole number, not {number:g}.") from None
        layer = int(number)
    if not 0 <= layer < n_layers:
        raise InputError(f"{what} {layer} is out of range: this model has layers 0-{n_layers - 1}.")
    return layer


def parse_layers(text: str | Sequence[Any], n_layers: int) -> tuple[int, ...]:
    """ "20", "18,20", "18-22" or a list -> sorted unique layers, checked against the model."""
    if isinstance(text, str):
        raw: list[int] = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                else:
                    lo = hi = int(part)
            except ValueError:
                raise InputError(
                    f"Cannot read layers {text[:40]!r}: use e.g. 20, 18,20 or 18-22."
                ) from None
            # Both ends are checked before the range is built: "0-999999999" allocates nothing.
            raw.extend(range(check_layer(lo, n_layers), check_layer(hi, n_layers) + 1))
        layers = [check_layer(x, n_layers) for x in raw]
    else:
        layers = [check_layer(x, n_layers) for x in text]
    if not layers:
        raise InputError("Pick at least one layer to steer.")
    return tuple(sorted(set(layers)))


def check_strength(value: Any, limits: Limits | None = None) -> float:
    """A finite strength; with ``limits``, also within ``±limits.max_abs_strength``."""
    strength = check_finite(value, "Strength")
    if limits is not None and abs(strength) > limits.max_abs_strength:
        limit = limits.max_abs_strength
        raise InputError(
            f"Strength {strength:g} is too large: use a value between -{limit:g} and {limit:g} "
            "(typical values are 1-4 times the vector's recommended strength)."
        )
    return strength


def check_temperature(value: Any, limits: Limits | None = None) -> float:
    temp = check_finite(value, "Temperature")
    high = limits.max_temperature if limits is not None else _CEILINGS["max_temperature"][1]
    if not 0.0 <= temp <= high:
        raise InputError(f"Temperature must be between 0 and {high:g}, not {temp:g}.")
    return temp


def check_top_p(value: Any) -> float:
    top_p = check_finite(value, "top_p")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], not {top_p:g}.")
    return top_p


def check_max_new_tokens(value: Any, limits: Limits | None = None) -> int:
    high = limits.max_new_tokens if limits is not None else int(_CEILINGS["max_new_tokens"][1])
    return check_int(value, "Max new tokens", 1, high)


def check_seed(value: Any) -> int:
    return check_int(value, "Seed", 0, MAX_SEED)


def check_prompt_tokens(
    n_tokens: int,
    max_new_tokens: int,
    context_length: int | None,
    limit: int | None,
    what: str = "prompt",
) -> None:
    """Refuse a templated prompt of ``n_tokens`` tokens that is over the policy ``limit``
    (``Limits.max_prompt_tokens``; None: no policy) or that leaves no room in the model's
    ``context_length`` (None: unknown) for ``max_new_tokens``.

    Characters are checked where text is typed (:func:`check_text`), but only tokens say what a
    prompt costs: the system prompt, the chat template and a persona's fields all add to them.
    """
    if limit is not None and n_tokens > limit:
        raise InputError(
            f"The {what} is {n_tokens:,} tokens; the limit is {limit:,} "
            f"({PROMPT_TOKENS_SETTING}). Shorten it and try again."
        )
    # Every generated token is fed back (the last one too, to read its residuals), so the last
    # sits at position n_tokens + max_new_tokens - 1, which must be inside the context.
    if context_length is not None and n_tokens + max_new_tokens > context_length:
        room = context_length - max_new_tokens
        fix = (
            f"shorten it to at most {room:,} tokens or ask for fewer new tokens"
            if room > 0
            else "ask for fewer new tokens"
        )
        raise InputError(
            f"The {what} is {n_tokens:,} tokens and {max_new_tokens:,} new tokens are asked for; "
            f"the model reads at most {context_length:,} tokens (its context length): {fix}."
        )


# --------------------------------------------------------------------------- text


def check_text(value: Any, what: str, max_chars: int, *, required: bool) -> str:
    """A stripped text of at most ``max_chars`` characters (``required``: not empty)."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if required and not text.strip():
        raise InputError(f"The {what} is empty: type something for the model to answer.")
    if len(text) > max_chars:
        raise InputError(
            f"The {what} is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Shorten it and try again."
        )
    return text.strip()
