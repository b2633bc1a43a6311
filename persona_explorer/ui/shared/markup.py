"""Everything a user supplied is shown as text, never as markup.

Names, descriptions, model ids, file names, prompts and share-link values reach the page through
Markdown components, toasts and plot labels, all of which would render HTML or Markdown in
them. :func:`md` escapes a value for Markdown (and the HTML inside it); :func:`plain` for a
toast or an error message; :func:`chat_text` for a chat message (lines kept). Every handler
formats user values with these, never raw. All of them drop the bidirectional-text controls
(a right-to-left override would make a status line read backwards).

An error message reaches the page, which renders it as HTML, and API clients, which read it as
text: :func:`plain` puts an invisible word joiner after each ``<`` and ``&`` instead of
escaping them, so no tag or entity can start there, and a client reads ``<b>`` rather than
``&lt;b&gt;``.

Imports: the standard library only.
"""

from __future__ import annotations

import html
import re

__all__ = ["chat_text", "md", "plain"]

# Markdown's punctuation that can start or end markup; escaped with a backslash.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_MAX_SHOWN = 200
# Bidirectional controls: embeddings, overrides, isolates and marks (and Arabic's letter mark).
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JOINER = "\u2060"  # WORD JOINER: invisible, and no tag or entity starts with it
_TAG_OR_ENTITY = re.compile("([<&])")


def _short(value: object, limit: int) -> str:
    text = _BIDI.sub("", value if isinstance(value, str) else str(value))
    text = " ".join(text.split())  # no line breaks: they would start new Markdown blocks
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(value: object, limit: int = _MAX_SHOWN) -> str:
    """``value`` as text that stays text when rendered as HTML (toasts, error messages) and
    reads the same to an API client: see the module docstring."""
    return _TAG_OR_ENTITY.sub(r"\1" + _JOINER, _short(value, limit))


def chat_text(value: object) -> str:
    """A chat message as inert Markdown, its lines kept (a chatbot renders Markdown and HTML)."""
    text = _BIDI.sub("", value if isinstance(value, str) else str(value))
    escaped = _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    # A line's leading spaces would start a code block, where the escapes would show.
    return "\n".join(line.lstrip(" \t") for line in escaped.split("\n"))


def md(value: object, limit: int = _MAX_SHOWN) -> str:
    """``value`` as inert Markdown text: no tags, links, images or emphasis survive."""
    # quote=False: an escaped quote (&#x27;) would have its "#" escaped again below.
    return _MD_SPECIAL.sub(r"\\\1", html.escape(_short(value, limit), quote=False))
