"""Persona and trait definitions: loading, validating and building them.

Two on-disk formats are supported, both plain JSON:

* trait files (persona_vectors format): ``{"instruction": [{"pos": str, "neg": str}, ...],
  "questions": [str, ...], "eval_prompt": str}``;
* role files (assistant-axis format): the same, but each instruction has only ``pos``. The
  contrast for a role is the default Assistant (see :data:`DEFAULT_ASSISTANT_PROMPTS`).

Everything here is stdlib only so that the UI and the tests can use it without torch.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    DEFAULT_LIMITS,
    MAX_PERSONA_FILE_BYTES,
    MAX_PERSONA_PAIRS,
    MAX_PERSONA_QUESTIONS,
)

__all__ = [
    "DEFAULT_ASSISTANT_PROMPTS",
    "EXTRACTION_QUESTION_COUNT",
    "MAX_PROMPT_CHARS",
    "PersonaDefinition",
    "PersonaError",
    "PromptPair",
    "assistant_prefixed",
    "custom_persona",
    "format_system_prompt",
    "load_persona",
    "parse_persona",
]

PersonaKind = Literal["trait", "role", "custom"]
BuiltinKind = Literal["trait", "role"]

# Same prompts, same order as the shipped assistant-axis `roles/instructions/default.json`
# (a test checks they agree). Hard-coded so that role contrasts work without the data files.
# "" means "no system prompt at all"; "{model_name}" is filled in by format_system_prompt.
DEFAULT_ASSISTANT_PROMPTS: tuple[str, ...] = (
    "",
    "You are an AI assistant.",
    "You are a large language model.",
    "You are {model_name}.",
    "Respond as yourself.",
)

# persona_vectors extracts with the first 20 of the 40 questions and evaluates on the rest.
EXTRACTION_QUESTION_COUNT = 20

# Far above anything in the shipped data (< 2 000 chars per prompt; the pair and question counts
# are core.limits' MAX_PERSONA_*), low enough that a hostile file cannot make extraction run for
# days.
MAX_PROMPT_CHARS = DEFAULT_LIMITS.max_field_chars
_MAX_EVAL_PROMPT_CHARS = 100_000
_MAX_FILE_BYTES = MAX_PERSONA_FILE_BYTES
_MAX_NAME_CHARS = 200

# Only the assistant-axis `default.json` legitimately has an empty `pos` (= no system prompt)
# and no questions of its own.
DEFAULT_NAME = "default"

_MODEL_NAME_FIELD = "{model_name}"


class PersonaError(InputError):
    """A persona definition (file, dict or custom input) is not valid."""


@dataclass(frozen=True)
class PromptPair:
    """One contrastive pair of system prompts."""

    pos: str
    """System prompt that elicits the persona ("" = no system prompt)."""
    neg: str | None
    """System prompt that suppresses it; None = contrast with the default Assistant (roles)."""


@dataclass(frozen=True)
class PersonaDefinition:
    """A validated persona: its contrastive system prompts and the questions to ask."""

    name: str
    kind: PersonaKind
    pairs: tuple[PromptPair, ...]
    questions: tuple[str, ...]
    eval_prompt: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("trait", "role", "custom"):
            raise PersonaError(f"kind must be 'trait', 'role' or 'custom', got {self.kind!r}")
        # Callers building this directly may pass lists; tuples keep the object hashable.
        if not isinstance(self.pairs, tuple):
            object.__setattr__(self, "pairs", tuple(self.pairs))
        if not isinstance(self.questions, tuple):
            object.__setattr__(self, "questions", tuple(self.questions))

    @property
    def has_neg(self) -> bool:
        """True if the pairs carry their own negative prompts (trait-like)."""
        return bool(self.pairs) and all(p.neg is not None for p in self.pairs)

    def contrast_pairs(
        self,
        default_prompts: Sequence[str] = DEFAULT_ASSISTANT_PROMPTS,
        *,
        model_name: str | None = None,
    ) -> tuple[tuple[str, str], ...]:
        """(pos, neg) system prompts for extraction, one per pair.

        Pairs without a ``neg`` (roles) take ``default_prompts[i % len(default_prompts)]``, so
        the five role prompts meet the five default-Assistant prompts one to one. With
        ``model_name`` the ``{model_name}`` field is filled in; otherwise it is left for the
        caller. An empty string means "no system prompt".
        """
        if isinstance(default_prompts, str):
            raise TypeError("default_prompts must be a sequence of strings, not one string")
        defaults = tuple(default_prompts)
        if any(p.neg is None for p in self.pairs) and not defaults:
            raise ValueError(
                f"persona {self.name!r} has no negative prompts, so default_prompts must not "
                "be empty"
            )
        out: list[tuple[str, str]] = []
        for i, pair in enumerate(self.pairs):
            neg = pair.neg if pair.neg is not None else defaults[i % len(defaults)]
            if model_name is not None:
                out.append(
                    (
                        format_system_prompt(pair.pos, model_name),
                        format_system_prompt(neg, model_name),
                    )
                )
            else:
                out.append((pair.pos, neg))
        return tuple(out)

    def extraction_questions(self, n: int | None = None) -> tuple[str, ...]:
        """The first ``n`` questions (all of them when ``n`` is None).

        persona_vectors extracts with the first :data:`EXTRACTION_QUESTION_COUNT` and keeps the
        rest for evaluation, so pass that to reproduce its split.
        """
        if n is None:
            return self.questions
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int or None, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self.questions[:n]

    def to_json(self) -> dict[str, Any]:
        """The persona_vectors / assistant-axis file format (roles: ``pos`` only)."""
        instruction: list[dict[str, str]] = []
        for pair in self.pairs:
            item = {"pos": pair.pos}
            if pair.neg is not None:
                item["neg"] = pair.neg
            instruction.append(item)
        data: dict[str, Any] = {"instruction": instruction}
        # default.json has no questions; leaving the key out keeps it loadable as it was.
        if self.questions or self.name != DEFAULT_NAME:
            data["questions"] = list(self.questions)
        if self.eval_prompt is not None:
            data["eval_prompt"] = self.eval_prompt
        return data


def format_system_prompt(text: str, model_name: str) -> str:
    """Fill in ``{model_name}``.

    Plain replacement rather than ``str.format``: prompts may contain other braces.
    """
    return text.replace(_MODEL_NAME_FIELD, model_name)


def assistant_prefixed(text: str, assistant_name: str) -> str:
    """persona_vectors' rollout prompt: ``"You are a/an {assistant_name} assistant. {text}"``.

    Their pos prompt uses the trait name ("evil"), the neg prompt "helpful" (or an antonym).
    """
    name = assistant_name.strip()
    if not name:
        return text
    article = "an" if name[0].lower() in "aeiou" else "a"
    prefix = f"You are {article} {name} assistant."
    return f"{prefix} {text}" if text else prefix


# --------------------------------------------------------------------------- validation


def _describe(value: object) -> str:
    """Short description of an offending value for error messages."""
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _check_text(
    value: object, where: str, field: str, *, allow_empty: bool = False, limit: int
) -> str:
    if not isinstance(value, str):
        raise PersonaError(f"{where}: '{field}' must be a string, got {_describe(value)}")
    if not allow_empty and not value.strip():
        raise PersonaError(f"{where}: '{field}' must be a non-empty string, got {_describe(value)}")
    if len(value) > limit:
        raise PersonaError(
            f"{where}: '{field}' is {len(value):,} characters long; the limit is {limit:,}"
        )
    return value


def _validate(
    data: object, name: str, where: str
) -> tuple[tuple[PromptPair, ...], tuple[str, ...], str | None]:
    """Check ``data`` against the file format; return its pairs, questions and eval prompt."""
    is_default = name == DEFAULT_NAME
    if not isinstance(data, Mapping):
        raise PersonaError(
            f"{where}: expected a JSON object with 'instruction' and 'questions', "
            f"got {_describe(data)}"
        )

    if "instruction" not in data:
        raise PersonaError(
            f'{where}: missing field \'instruction\' (a list of {{"pos": ..., "neg": ...}} '
            "system-prompt objects)"
        )
    instruction = data["instruction"]
    if not isinstance(instruction, list):
        raise PersonaError(
            f'{where}: \'instruction\' must be a list of {{"pos": ..., "neg": ...}} objects, '
            f"got {_describe(instruction)}"
        )
    if not instruction:
        raise PersonaError(f"{where}: 'instruction' is empty; at least one prompt is needed")
    if len(instruction) > MAX_PERSONA_PAIRS:
        raise PersonaError(
            f"{where}: 'instruction' has {len(instruction):,} entries; "
            f"the limit is {MAX_PERSONA_PAIRS}"
        )

    pairs: list[PromptPair] = []
    first_with_neg: int | None = None
    first_without_neg: int | None = None
    for i, item in enumerate(instruction):
        field = f"instruction[{i}]"
        if not isinstance(item, Mapping):
            raise PersonaError(
                f"{where}: '{field}' must be an object with a string 'pos' (and 'neg'), "
                f"got {_describe(item)}"
            )
        # A typo such as "Neg" would otherwise silently turn a trait into a role.
        unknown = sorted(str(k) for k in item if k not in ("pos", "neg"))
        if unknown:
            raise PersonaError(
                f"{where}: '{field}' has unexpected key(s) {', '.join(map(repr, unknown))}; "
                "allowed keys are 'pos' and 'neg'"
            )
        if "pos" not in item:
            raise PersonaError(f"{where}: '{field}' is missing the string 'pos'")
        pos = _check_text(
            item["pos"], where, f"{field}.pos", allow_empty=is_default, limit=MAX_PROMPT_CHARS
        )
        neg: str | None = None
        if "neg" in item:
            neg = _check_text(item["neg"], where, f"{field}.neg", limit=MAX_PROMPT_CHARS)
            first_with_neg = i if first_with_neg is None else first_with_neg
        else:
            first_without_neg = i if first_without_neg is None else first_without_neg
        if first_with_neg is not None and first_without_neg is not None:
            raise PersonaError(
                f"{where}: 'instruction[{first_with_neg}]' has a 'neg' but "
                f"'instruction[{first_without_neg}]' does not; either every entry has 'neg' "
                "(a trait) or none does (a role, contrasted with the default Assistant)"
            )
        pairs.append(PromptPair(pos=pos, neg=neg))

    if "questions" not in data:
        if not is_default:
            raise PersonaError(
                f"{where}: missing field 'questions' (a non-empty list of question strings)"
            )
        questions_raw: object = []
    else:
        questions_raw = data["questions"]
    if not isinstance(questions_raw, list):
        raise PersonaError(
            f"{where}: 'questions' must be a list of strings, got {_describe(questions_raw)}"
        )
    if not questions_raw and not is_default:
        raise PersonaError(f"{where}: 'questions' is empty; at least one question is needed")
    if len(questions_raw) > MAX_PERSONA_QUESTIONS:
        raise PersonaError(
            f"{where}: 'questions' has {len(questions_raw):,} entries; the limit is "
            f"{MAX_PERSONA_QUESTIONS:,}"
        )
    questions = tuple(
        _check_text(q, where, f"questions[{i}]", limit=MAX_PROMPT_CHARS)
        for i, q in enumerate(questions_raw)
    )

    eval_prompt = data.get("eval_prompt")
    if eval_prompt is not None:
        eval_prompt = _check_text(
            eval_prompt, where, "eval_prompt", allow_empty=True, limit=_MAX_EVAL_PROMPT_CHARS
        )
        # An empty rubric is as good as none; None keeps "no judge" unambiguous.
        eval_prompt = eval_prompt or None

    return tuple(pairs), questions, eval_prompt


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PersonaError(f"{where}: the persona name must be a non-empty string")
    if len(name) > _MAX_NAME_CHARS:
        raise PersonaError(
            f"{where}: the persona name is {len(name)} characters long; the limit is "
            f"{_MAX_NAME_CHARS}"
        )
    return name


# --------------------------------------------------------------------------- constructors


def parse_persona(data: Mapping[str, Any], name: str, source: str = "") -> PersonaDefinition:
    """Validate a decoded trait/role dict and build its definition.

    The kind is "trait" when every instruction has a ``neg`` and "role" when none has.
    Raises :class:`PersonaError` naming the source, the field and what was expected.
    """
    where = source or f"persona {name!r}"
    name = _check_name(name, where)
    pairs, questions, eval_prompt = _validate(data, name, where)
    kind: PersonaKind = "trait" if pairs[0].neg is not None else "role"
    return PersonaDefinition(
        name=name,
        kind=kind,
        pairs=pairs,
        questions=questions,
        eval_prompt=eval_prompt,
        source=source,
    )


def load_persona(path: str | os.PathLike[str]) -> PersonaDefinition:
    """Load a trait or role JSON file; the persona's name is the file stem."""
    p = Path(path)
    where = str(p)
    try:
        stat = p.stat()
    except FileNotFoundError:
        raise PersonaError(f"{where}: no such file") from None
    except OSError as exc:
        raise PersonaError(f"{where}: cannot read the file ({exc.strerror or exc})") from exc
    if not p.is_file():
        raise PersonaError(f"{where}: not a file")
    if stat.st_size > _MAX_FILE_BYTES:
        raise PersonaError(_too_large(where))
    return _load_cached(str(p.resolve()), stat.st_mtime_ns, stat.st_size, where)


def _too_large(where: str) -> str:
    return (
        f"{where}: the file is larger than {_MAX_FILE_BYTES:,} bytes, the limit for persona files"
    )


@functools.lru_cache(maxsize=1024)
def _load_cached(resolved: str, mtime_ns: int, size: int, where: str) -> PersonaDefinition:
    # Keyed on mtime and size so an edited file is re-read; the result is immutable.
    del mtime_ns, size
    try:
        with open(resolved, "rb") as fh:
            # Bounded again here: the file may have grown since load_persona's stat.
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PersonaError(f"{where}: cannot read the file ({exc.strerror or exc})") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise PersonaError(_too_large(where))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PersonaError(
            f"{where}: not valid UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PersonaError(
            f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        # A persona nests three levels deep; json.loads recurses once per level.
        raise PersonaError(
            f"{where}: the JSON is nested too deeply; a persona file is an object with lists "
            'of strings and of {"pos", "neg"} objects'
        ) from None
    return parse_persona(data, Path(where).stem, source=where)


def _as_text_list(values: object, field: str) -> list[str]:
    # A bare string would otherwise be iterated character by character.
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise PersonaError(
            f"custom persona: '{field}' must be a list of strings, got {_describe(values)}"
        )
    out: list[str] = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise PersonaError(
                f"custom persona: '{field}[{i}]' must be a string, got {_describe(v)}"
            )
        out.append(v.strip())
    return out


def custom_persona(
    name: str,
    pos_prompts: Sequence[str],
    neg_prompts: Sequence[str],
    questions: Sequence[str],
    *,
    eval_prompt: str | None = None,
) -> PersonaDefinition:
    """Build a persona from user input, with the same checks as a file.

    ``neg_prompts`` may be empty: each ``pos`` is then contrasted with the default Assistant,
    like a role. Otherwise it must have one entry per ``pos``. Surrounding whitespace is
    stripped from every prompt and question (it comes from text boxes).
    """
    where = "custom persona"
    name = _check_name(name, where).strip()
    pos = _as_text_list(pos_prompts, "pos_prompts")
    neg = _as_text_list(neg_prompts, "neg_prompts")
    qs = _as_text_list(questions, "questions")
    if not pos:
        raise PersonaError(f"{where}: at least one positive system prompt is needed")
    if neg and len(neg) != len(pos):
        raise PersonaError(
            f"{where}: got {len(pos)} positive and {len(neg)} negative prompts; give one "
            "negative prompt per positive prompt, or none to contrast with the default Assistant"
        )
    instruction = (
        [{"pos": p, "neg": n} for p, n in zip(pos, neg, strict=True)]
        if neg
        else [{"pos": p} for p in pos]
    )
    data: dict[str, Any] = {"instruction": instruction, "questions": qs}
    if eval_prompt is not None:
        data["eval_prompt"] = eval_prompt
    # Validated under a name that is never "default", so the default-only exemptions
    # (empty pos, no questions) do not apply to user input.
    pairs, q, ep = _validate(data, "custom", where)
    return PersonaDefinition(
        name=name, kind="custom", pairs=pairs, questions=q, eval_prompt=ep, source="custom"
    )
