"""What a user may call a vector: display names cleaned of invisible characters, and the safe
file stems (slugs) derived from them. One rule for the library, downloads and session vectors.

Imports: :mod:`.errors` only.
"""

from __future__ import annotations

import re
import unicodedata

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS

__all__ = ["clean_description", "clean_name", "slugify"]

MAX_SLUG_CHARS = 64

# Cc: control characters; Cf: format characters, which include every bidi override/isolate/mark
# (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and zero-width one (U+200B-U+200D,
# U+2060, U+FEFF); Cs: lone surrogates, which cannot be written as UTF-8.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def slugify(name: str) -> str:
    """A safe file stem for ``name``: lowercase ASCII letters, digits, ``-`` and ``_``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_-]+", "-", ascii_name.lower()).strip("-_")
    return slug[:MAX_SLUG_CHARS].strip("-_") or "vector"


def strip_invisible(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` without control, format and surrogate characters; whitespace becomes a space
    (or stays a newline with ``keep_newlines``)."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) not in _INVISIBLE_CATEGORIES:
            out.append(ch)
    return "".join(out)


def clean_name(name: object) -> str:
    """A display name as typed by a user: visible characters only, single-line, whitespace
    collapsed, at most :data:`MAX_NAME_CHARS` characters; raises InputError otherwise."""
    if not isinstance(name, str):
        raise InputError("Give the vector a name.")
    # Checked before the character-by-character pass, so a huge string costs nothing.
    if len(name) > 16 * MAX_NAME_CHARS:
        raise InputError(f"Names are at most {MAX_NAME_CHARS} characters (got {len(name)}).")
    text = " ".join(strip_invisible(name).split())
    if not text:
        raise InputError("Give the vector a name (with visible characters).")
    if len(text) > MAX_NAME_CHARS:
        raise InputError(f"Names are at most {MAX_NAME_CHARS} characters (got {len(text)}).")
    return text


def clean_description(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    text = strip_invisible(text[: 16 * MAX_DESCRIPTION_CHARS], keep_newlines=True).strip()
    if len(text) > MAX_DESCRIPTION_CHARS:
        text = text[: MAX_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return text
