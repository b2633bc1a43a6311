"""Conversations to replay: the shipped transcripts and uploaded files, parsed and checked.

The format is the one of the Assistant Axis transcripts (``assets/transcripts``): a JSON object
with ``conversation: [{"role": ..., "content": ...}, ...]`` and optional metadata (``model``,
``domain``, ``steering``, ...); a bare list of messages is accepted too. Uploads are hostile:
the size is checked before a byte is read, the structure strictly (roles ``user``,
``assistant`` and ``system`` only, string contents, caps on messages and characters), and
every refusal says what is wrong.

The caps are ``core.limits``' (``MAX_CONVERSATION_*``, ``MAX_MESSAGE_CHARS``).

Imports: the standard library, ``core`` (errors, limits) and ``engine.model`` (for
:class:`ChatMessage`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    MAX_CONVERSATION_BYTES,
    MAX_CONVERSATION_CHARS,
    MAX_CONVERSATION_MESSAGES,
    MAX_MESSAGE_CHARS,
)
from persona_explorer.engine.model import ChatMessage

__all__ = [
    "TRANSCRIPTS_DIR",
    "Conversation",
    "ConversationError",
    "load_conversation",
    "parse_conversation",
    "shipped_transcript",
    "shipped_transcripts",
]

TRANSCRIPTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "transcripts"

_MAX_META_CHARS = 200
ROLES = ("system", "user", "assistant")
# Metadata shown beside a conversation; anything else in the file is ignored.
_META_KEYS = ("model", "domain", "steering", "topic", "persona")

# Friendly names of the shipped files: a drift conversation per domain, and the case studies.
_MODEL_NAMES = {
    "meta-llama/Llama-3.3-70B-Instruct": "Llama 3.3 70B",
    "google/gemma-2-27b-it": "Gemma 2 27B",
    "Qwen/Qwen3-32B": "Qwen 3 32B",
}
_CASE_FOLDERS = {"llama-3.3-70b": "Llama 3.3 70B", "qwen-3-32b": "Qwen 3 32B"}


class ConversationError(InputError):
    """A conversation file or value that cannot be replayed; the message says why."""


@dataclass(frozen=True)
class Conversation:
    """Checked messages (an optional system message first, then user and assistant turns)."""

    messages: tuple[ChatMessage, ...]
    label: str = "conversation"
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def assistant_indices(self) -> tuple[int, ...]:
        """Positions of the assistant messages: the turns a replay measures."""
        return tuple(i for i, m in enumerate(self.messages) if m.role == "assistant")

    @property
    def n_assistant_turns(self) -> int:
        return len(self.assistant_indices)


def _check_message(raw: object, i: int) -> ChatMessage:
    where = f"Message {i + 1}"
    if not isinstance(raw, dict):
        raise ConversationError(f"{where} must be an object with role and content.")
    role = raw.get("role")
    content = raw.get("content")
    if role not in ROLES:
        shown = repr(role)[:40]
        raise ConversationError(f"{where} has role {shown}; use user, assistant or system.")
    if not isinstance(content, str):
        raise ConversationError(f"{where} ({role}) needs its content as a string.")
    if not content.strip():
        raise ConversationError(f"{where} ({role}) is empty.")
    if len(content) > MAX_MESSAGE_CHARS:
        raise ConversationError(
            f"{where} ({role}) has {len(content):,} characters; the limit is {MAX_MESSAGE_CHARS:,}."
        )
    if role == "system" and i != 0:
        raise ConversationError(f"{where} is a system message; only the first one may be.")
    return ChatMessage(role=role, content=content)


def parse_conversation(data: object, label: str = "conversation") -> Conversation:
    """A conversation from decoded JSON: ``{"conversation": [...], ...}`` or a bare list."""
    meta: dict[str, str] = {}
    if isinstance(data, dict):
        messages = data.get("conversation")
        if messages is None:
            raise ConversationError(
                'A conversation file needs a "conversation" list of {"role", "content"} messages.'
            )
        for key in _META_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                meta[key] = value.strip()[:_MAX_META_CHARS]
    else:
        messages = data
    if not isinstance(messages, list):
        raise ConversationError("The conversation must be a list of messages.")
    if len(messages) > MAX_CONVERSATION_MESSAGES:
        raise ConversationError(
            f"The conversation has {len(messages)} messages; the limit is "
            f"{MAX_CONVERSATION_MESSAGES}."
        )
    checked = tuple(_check_message(m, i) for i, m in enumerate(messages))
    total = sum(len(m.content) for m in checked)
    if total > MAX_CONVERSATION_CHARS:
        raise ConversationError(
            f"The conversation has {total:,} characters; the limit is {MAX_CONVERSATION_CHARS:,}."
        )
    conv = Conversation(messages=checked, label=label, meta=meta)
    if conv.n_assistant_turns == 0:
        raise ConversationError("The conversation has no assistant message to measure.")
    first = conv.assistant_indices[0]
    if first == 0 or checked[first - 1].role != "user":
        raise ConversationError("The first assistant message must answer a user message.")
    return conv


def load_conversation(
    path: str | Path, label: str | None = None, max_bytes: int = MAX_CONVERSATION_BYTES
) -> Conversation:
    """Read and check a conversation file; its size is checked before it is read."""
    p = Path(path)
    size = p.stat().st_size  # FileNotFoundError reaches the caller (the CLI prints it)
    if size > max_bytes:
        raise ConversationError(
            f"{p.name} is {size / 1024:,.0f} KB; a conversation file may be at most "
            f"{max_bytes / 1024:,.0f} KB."
        )
    raw = p.read_bytes()
    try:
        data: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConversationError(f"{p.name} is not UTF-8 text: upload a JSON file.") from None
    except json.JSONDecodeError as exc:
        raise ConversationError(
            f"{p.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    except RecursionError:  # a file of nothing but nested brackets
        raise ConversationError(f"{p.name} is nested too deeply to be a conversation.") from None
    return parse_conversation(data, label or p.stem)


# --------------------------------------------------------------------------- shipped files


def _shipped_label(rel: Path, conv: Conversation) -> str:
    model = conv.meta.get("model", "")
    turns = conv.n_assistant_turns
    if rel.parts[0] == "persona_drift":
        name = _MODEL_NAMES.get(model, model or "unknown model")
        return f"Drift: {rel.stem} ({name}, {turns} turns)"
    scenario, _, steering = rel.stem.partition("_")
    scenario = {"selfharm": "self-harm"}.get(scenario, scenario)
    name = _CASE_FOLDERS.get(rel.parts[1], rel.parts[1]) if len(rel.parts) > 2 else model
    return f"Case study: {scenario}, {steering or 'unsteered'} ({name}, {turns} turns)"


def _shipped_files() -> list[Path]:
    if not TRANSCRIPTS_DIR.is_dir():
        return []
    drift = sorted((TRANSCRIPTS_DIR / "persona_drift").glob("*.json"))
    cases = sorted((TRANSCRIPTS_DIR / "case_studies").glob("*/*.json"))
    return drift + cases


def shipped_transcripts() -> list[tuple[str, str]]:
    """(label, key) of every shipped transcript, the drift conversations first; the key is the
    path under ``assets/transcripts`` without ``.json`` (``persona_drift/therapy``)."""
    return list(_shipped_index())


@functools.cache
def _shipped_index() -> tuple[tuple[str, str], ...]:
    # Read once per process: the files are read-only assets, and the Drift tab lists them on
    # every page load.
    out = []
    for path in _shipped_files():
        rel = path.relative_to(TRANSCRIPTS_DIR).with_suffix("")
        conv = load_conversation(path)
        out.append((_shipped_label(rel, conv), rel.as_posix()))
    return tuple(out)


def shipped_transcript(key: str) -> Conversation:
    """One shipped transcript by its key (see :func:`shipped_transcripts`)."""
    known = {k: label for label, k in shipped_transcripts()}
    if not isinstance(key, str) or key not in known:
        names = ", ".join(sorted(known)) or "none are installed"
        raise ConversationError(f"No shipped transcript {str(key)[:80]!r}; choose from {names}.")
    return load_conversation(TRANSCRIPTS_DIR / f"{key}.json", known[key])
