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
    "APP_ADAPTER_MAX_RANK",
    "APP_DRIFT_MAX_PROJECTED",
    "APP_DRIFT_MAX_REPLAYS",
    "APP_FINETUNE_MAX_EPOCHS",
    "APP_FINETUNE_MAX_LR",
    "APP_FINETUNE_MAX_RANK",
    "APP_FINETUNE_MAX_SAMPLES",
    "APP_FINETUNE_MAX_TOKENS",
    "APP_FINETUNE_MIN_TOKENS",
    "APP_MAP_MAX_PERSONAS",
    "APP_MAP_MAX_TOKENS",
    "APP_SCREENING_MAX_FILTER_CHARS",
    "APP_SCREENING_MAX_OWN_TOKENS",
    "APP_SCREENING_MAX_SAMPLES_OWN",
    "APP_SCREENING_MAX_SAMPLES_RAW",
    "APP_SCREENING_MAX_VECTORS",
    "APP_SHIFT_MAX_QUESTIONS",
    "APP_SHIFT_MAX_TOKENS",
    "APP_SHIFT_MAX_VECTORS",
    "APP_SWEEP_MAX_ANSWERS",
    "APP_SWEEP_MAX_LAYERS",
    "APP_SWEEP_MAX_PROMPTS",
    "APP_SWEEP_MAX_STRENGTHS",
    "APP_SWEEP_MAX_TOKENS",
    "DEFAULT_FREQUENCY_PENALTY",
    "DEFAULT_LIMITS",
    "DEFAULT_TEMPERATURE",
    "MAX_ADAPTER_BYTES",
    "MAX_ADAPTER_JSON_BYTES",
    "MAX_BATCH_SIZE",
    "MAX_CONVERSATION_BYTES",
    "MAX_CONVERSATION_CHARS",
    "MAX_CONVERSATION_MESSAGES",
    "MAX_DATA_BYTES",
    "MAX_DATA_LINE_BYTES",
    "MAX_DATA_ROWS",
    "MAX_FINETUNE_BATCH",
    "MAX_FINETUNE_CONTEXT_CHARS",
    "MAX_FINETUNE_EPOCHS",
    "MAX_FINETUNE_LR",
    "MAX_FINETUNE_RANK",
    "MAX_FINETUNE_SAMPLES",
    "MAX_FINETUNE_TOKENS",
    "MAX_MESSAGE_CHARS",
    "MAX_META_JSON_BYTES",
    "MAX_PENALTY",
    "MAX_PERSONA_FILE_BYTES",
    "MAX_PERSONA_PAIRS",
    "MAX_PERSONA_QUESTIONS",
    "MAX_REPLAY_TURNS",
    "MAX_RESPONSE_TOKENS",
    "MAX_SAMPLES",
    "MAX_SAMPLE_CHARS",
    "MAX_SAMPLE_MESSAGES",
    "MAX_SEED",
    "MAX_SHIFT_QUESTIONS",
    "MAX_SHIFT_QUESTIONS_BYTES",
    "MAX_SHIFT_QUESTION_CHARS",
    "MAX_SWEEP_GRID_AXIS",
    "MAX_SWEEP_PROMPTS",
    "MAX_SWEEP_PROMPTS_FILE_BYTES",
    "MAX_SWEEP_PROMPT_CHARS",
    "MAX_SWEEP_ROWS",
    "MAX_VECTOR_FILE_BYTES",
    "MAX_WINDOW_TOKENS",
    "MIN_WINDOW_TOKENS",
    "PROMPT_TOKENS_SETTING",
    "Limits",
    "check_bool",
    "check_finite",
    "check_int",
    "check_int_in",
    "check_layer",
    "check_learning_rate",
    "check_lines",
    "check_max_new_tokens",
    "check_penalty",
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
# A vector file, whatever its format (the app's upload limit, max_vector_mb, is lower), and the
# JSON of our fields inside one: ours are a few KB (separation scores, counts, settings); anything
# near this is not ours, and json.loads of a multi-megabyte string is memory an upload should
# not get.
MAX_VECTOR_FILE_BYTES = 256 * 1024 * 1024
MAX_META_JSON_BYTES = 1024 * 1024
# Training data files (training.samples), for screening and fine-tuning: bounds for hostile files.
MAX_DATA_BYTES = 256 * 1024 * 1024  # a whole data file; the app passes its upload limit
MAX_DATA_LINE_BYTES = 1024 * 1024  # one JSONL line or one physical CSV line
MAX_DATA_ROWS = 200_000  # samples read from one file; the rest is reported and left unread
MAX_SAMPLE_CHARS = 20_000  # system + prompt turns + response of one sample
MAX_SAMPLE_MESSAGES = 64  # turns of one chat sample
MAX_RESPONSE_TOKENS = 1024  # a sample's response, in tokens (screening)
# One fine-tuning run (training.finetune, the finetune command; the Train tab allows less).
MAX_FINETUNE_EPOCHS = 20
MAX_FINETUNE_RANK = 256
MAX_FINETUNE_TOKENS = 2048  # tokens per sample
MAX_FINETUNE_BATCH = 256
MAX_FINETUNE_LR = 1.0
MAX_FINETUNE_SAMPLES = 100_000  # samples of one data file
MAX_FINETUNE_CONTEXT_CHARS = 20_000  # the inoculation context
# A saved LoRA adapter folder (hostile input): its JSON files (losses inside) and its weights.
MAX_ADAPTER_JSON_BYTES = 4 * 1024 * 1024
MAX_ADAPTER_BYTES = 2 * 1024**3  # rank 256 on every projection of a 1B model is ~1 GB
# Evaluation questions of a persona shift (training.shift): a file or a list.
MAX_SHIFT_QUESTIONS = 64
MAX_SHIFT_QUESTION_CHARS = 2000
MAX_SHIFT_QUESTIONS_BYTES = 256 * 1024
# The web app's Screen data tab: one screening run. Generating the model's own answers is ~8x
# slower than reading, so a run with them scores fewer samples.
APP_SCREENING_MAX_VECTORS = 4
APP_SCREENING_MAX_OWN_TOKENS = 128
APP_SCREENING_MAX_SAMPLES_OWN = 200
APP_SCREENING_MAX_SAMPLES_RAW = 2000
APP_SCREENING_MAX_FILTER_CHARS = 200
# The web app's Train tab: one training run and one shift measurement (the command line
# allows more: MAX_FINETUNE_*, MAX_SHIFT_*).
APP_FINETUNE_MAX_SAMPLES = 64
APP_FINETUNE_MAX_EPOCHS = 4
APP_FINETUNE_MAX_RANK = 32
APP_FINETUNE_MAX_TOKENS = 256
APP_FINETUNE_MIN_TOKENS = 64  # the chat template alone takes about 30 tokens of the embedded model
APP_FINETUNE_MAX_LR = 1e-2
# An uploaded adapter's LoRA rank (the app trains up to APP_FINETUNE_MAX_RANK; the command line
# more). The upload's size limit binds first on most models: rank 16 of the embedded model's
# seven projections is about 20 MB.
APP_ADAPTER_MAX_RANK = 64
APP_SHIFT_MAX_VECTORS = 4
APP_SHIFT_MAX_QUESTIONS = 16
APP_SHIFT_MAX_TOKENS = 96
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
    "max_pending_per_address": (1, 10_000),
    "upload_quota_mb": (1, 100_000),
    "upload_total_mb": (1, 1_000_000),
    "job_timeout_s": (1, 86_400),
    "max_heatmap_vectors": (2, 200),
}

# Vectors from example texts: a shipped file is about 20 kB; these leave room for far larger sets
# and still bound the work (every pair costs two teacher-forced rows).
MAX_EXAMPLE_FILE_BYTES = 2 * 1024 * 1024
MAX_EXAMPLE_PAIRS = 500

# A vector's name and description, as a user types them (library, uploads, extraction).
MAX_NAME_CHARS = 80
MAX_DESCRIPTION_CHARS = 500

# Compare: personas (or layers, or strengths) beside the baseline in one batch.
MAX_COMPARE_ROWS = 3

# Conversations to replay or chat on (axis.conversation): uploads are hostile. The largest
# shipped transcript is ~100 KB with 46 messages of at most ~7,000 characters; the caps hold
# several of those, and bound what one upload can make the server tokenize.
MAX_CONVERSATION_BYTES = 2 * 1024 * 1024
MAX_CONVERSATION_MESSAGES = 400
MAX_MESSAGE_CHARS = 50_000
MAX_CONVERSATION_CHARS = 1_000_000
# The window a conversation is read through (axis.windows), in tokens.
MIN_WINDOW_TOKENS = 128
MAX_WINDOW_TOKENS = 32_768
# Assistant turns one replay measures (the first ones; the result says when more were left).
# Every turn past the window costs one pass over up to the whole window: the therapy transcript
# (15 turns) reads 23.6k tokens in 13 passes at 2,048 tokens, the longest shipped one (31 turns)
# 42k. 40 turns bound one request to about twice that; the app's job time limit still applies.
MAX_REPLAY_TURNS = 40

# A layer x strength sweep (evaluate.sweep, the sweep command; the Sweep tab allows less).
MAX_SWEEP_PROMPTS = 256
MAX_SWEEP_PROMPT_CHARS = 2000
MAX_SWEEP_PROMPTS_FILE_BYTES = 1 << 20
MAX_SWEEP_GRID_AXIS = 32  # layers or strengths in one sweep
MAX_SWEEP_ROWS = 4096  # prompts x (layers x non-zero strengths + 1)

# The web app's Sweep tab (and the sweep after an extraction): one sweep.
APP_SWEEP_MAX_PROMPTS = 12
APP_SWEEP_MAX_LAYERS = 6
APP_SWEEP_MAX_STRENGTHS = 8
APP_SWEEP_MAX_TOKENS = 96
APP_SWEEP_MAX_ANSWERS = 300  # prompts x (layers x non-zero strengths + 1): ~5 min on a small CPU
# The web app's Drift tab: persona vectors projected at once (more lines tangle the plot), and
# conversations one replay request runs (each read now takes up to a few minutes on a CPU).
APP_DRIFT_MAX_PROJECTED = 4
APP_DRIFT_MAX_REPLAYS = 4
# The web app's Persona space tab: arrows on one map (more tangle it), and the placed answer's
# length (a short answer places well; the map is not for reading long ones).
APP_MAP_MAX_PERSONAS = 6
APP_MAP_MAX_TOKENS = 64


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for. Defaults suit a public server on a small CPU."""

    max_prompt_chars: int = 4000  # a prompt or system prompt typed by a user
    max_new_tokens: int = 256  # tokens one generation may produce
    # The largest file the app receives: a vector of max_vector_mb with its metadata (1 MB at
    # most) is the largest legitimate one; transcripts and data files are far smaller.
    max_upload_mb: int = 20
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
    max_pending_per_address: int = 48  # of everybody behind one network address (a class)
    upload_quota_mb: int = 200  # bytes one address may upload in an hour
    upload_total_mb: int = 2048  # the upload folder (uploads are kept an hour at most)
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
    def upload_quota_bytes(self) -> int:
        return self.upload_quota_mb * 1024 * 1024

    @property
    def upload_total_bytes(self) -> int:
        return self.upload_total_mb * 1024 * 1024

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


MAX_PENALTY = 2.0  # OpenAI's and llama.cpp's range for frequency/presence penalties
# What the app, the CLI and sweeps decode with unless told otherwise (SamplingConfig's own
# defaults stay plain: greedy, no penalty). Chosen by measurement on the built-ins: README,
# "Decoding defaults".
DEFAULT_TEMPERATURE = 0.0
DEFAULT_FREQUENCY_PENALTY = 1.0


def check_penalty(value: Any, what: str = "Frequency penalty") -> float:
    """A repetition penalty in [0, MAX_PENALTY] (negative values would reward loops)."""
    penalty = check_finite(value, what)
    if not 0.0 <= penalty <= MAX_PENALTY:
        raise InputError(f"{what} must be between 0 and {MAX_PENALTY:g}, not {penalty:g}.")
    return penalty


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


def check_bool(value: Any, what: str) -> bool:
    """A checkbox's value: true or false, nothing else (an API caller may send anything)."""
    if not isinstance(value, bool):
        raise InputError(f"{what} must be true or false.")
    return value


def check_int_in(value: Any, what: str, low: int, high: int, *, where: str = "here") -> int:
    """:func:`check_int` for a form whose range is tighter than the command line's, worded with
    the range and where it holds: "Epochs must be a whole number from 1 to 4 here (got 5)."."""
    try:
        return check_int(value, what, low, high)
    except InputError:
        raise InputError(
            f"{what} must be a whole number from {low:,} to {high:,} {where} "
            f"(got {str(value)[:20]})."
        ) from None


def check_learning_rate(value: Any, high: float) -> float:
    """A learning rate above 0 and at most ``high``."""
    lr = check_finite(value, "Learning rate")
    if not 0.0 < lr <= high:
        raise InputError(f"Learning rate must be above 0 and at most {high:g}, not {lr:g}.")
    return lr


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


def check_lines(
    value: Any, noun: str, most: int, max_chars: int, *, holder: str, first: str | None = None
) -> tuple[str, ...]:
    """A field of one ``noun`` per line (prompts, questions): its non-empty lines, stripped, 1 to
    ``most`` of them, each of at most ``max_chars`` characters. The whole field is bounded
    before it is split (a script may send megabytes). ``holder`` names what takes them ("a
    sweep"); ``first`` the item in the message for an empty field (default ``noun``)."""
    body = check_text(value, f"{noun} list", most * max_chars, required=False)
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"Write at least one {first or noun} (one per line).")
    if len(lines) > most:
        raise InputError(f"{len(lines)} {noun}s: {holder} here takes at most {most}.")
    for i, line in enumerate(lines, start=1):
        check_text(line, f"{noun} {i}", max_chars, required=True)
    return tuple(lines)
