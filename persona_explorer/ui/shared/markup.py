"""Everything a user supplied is shown as text, never as markup.

Names, descriptions, model ids, file names, prompts and share-link values reach the page through
Markdown components, toasts and plot labels, all of which would render HTML or Markdown in
them. :func:`md` escapes a value for Markdown (and the HTML inside it); :func:`plain` for a
toast or an error message. Every handler formats user values with these, never raw.

Imports: the standard library only.
"""

from __future__ import annotations

import html
import re

__all__ = ["md", "plain"]

# Markdown's punctuation that can start or end markup; escaped with a backslash.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_MAX_SHOWN = 200


def _short(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())  # no line breaks: they would start new Markdown blocks
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(value: object, limit: int = _MAX_SHOWN) -> str:
    """``value`` as inert HTML text (for toasts and error messages)."""
    return html.escape(_short(value, limit), quote=False)  # text, never inside an attribute


def md(value: object, limit: int = _MAX_SHOWN) -> str:
    """``value`` as inert Markdown text: no tags, links, images or emphasis survive."""
    # quote=False: an escaped quote (&#x27;) would have its "#" escaped again below.
    return _MD_SPECIAL.sub(r"\\\1", html.escape(_short(value, limit), quote=False))
