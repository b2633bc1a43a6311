"""The Drift tab's series as download files, JSON and CSV (issue 26; the format is
:mod:`persona_explorer.ui.shared.downloads`): the chat's turns and the kept replays' turns.

One CSV line per conversation, turn, layer and series: ``series`` is ``axis`` (the raw
``projection`` onto the Assistant Axis and its ``normalised`` value, 0 = the roles' mean,
1 = the default Assistant) or a persona vector's name (its raw projection; ``normalised``
empty). Every layer is written, not only the one plotted (``settings.plot_layer``), so any
layer's figure can be made again. ``windowed``: the turn was read through a window of the most
recent turns. The JSON adds the chat's conversation (``"conversation"``) or each replay's
details (``"replays"``).

The chat's numbers are the ones the tab's history holds (checked as ``/chat`` checks them); the
replays' are the ones the session keeps (a ``gr.State``, never sent by the browser).

Imports: ``axis`` (the capping defaults), ``ui.shared`` (context, downloads) and this tab's
handlers (the history's checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from persona_explorer.axis.assistant_axis import DEFAULT_CAP_PERCENTILE, default_cap_layers
from persona_explorer.core.errors import InputError
from persona_explorer.ui.drift.handlers import (
    _check_record,
    _history_messages,
    _kept,
    plot_layer,
)
from persona_explorer.ui.shared.context import AppContext, user_errors
from persona_explorer.ui.shared.downloads import provenance, write_pair

__all__ = ["CHAT_STEM", "COLUMNS", "REPLAY_STEM", "chat_downloads", "replay_downloads"]

CHAT_STEM = "persona-drift-chat"
REPLAY_STEM = "persona-drift-replays"
COLUMNS = (
    "conversation",
    "turn",
    "layer",
    "series",
    "projection",
    "normalised",
    "windowed",
    "preview",
    "turn_settings",
)
CAPPED = " · capped here"  # what run_replay adds to a capped replay's label


def _at(values: Sequence[float], layer: int) -> float | None:
    return values[layer] if layer < len(values) else None


def _series_rows(
    conversation: str,
    turn: int,
    projection: Sequence[float],
    normalised: Sequence[float],
    personas: dict[str, Sequence[float]],
    windowed: bool,
    preview: str,
    turn_settings: str,
    n_layers: int,
) -> Iterable[list[Any]]:
    head = [conversation, turn]
    tail = [windowed, preview, turn_settings]
    for layer in range(n_layers):
        if projection or normalised:
            yield [
                *head, layer, "axis", _at(projection, layer), _at(normalised, layer), *tail,
            ]  # fmt: skip
        for name, values in personas.items():
            if values:
                yield [*head, layer, name, _at(values, layer), None, *tail]


def _vectors(names: Iterable[str]) -> list[dict[str, str]]:
    return [{"name": n, "role": "projected onto"} for n in dict.fromkeys(names)]


def write_chat(ctx: AppContext, history: object, layer: object) -> tuple[Path, Path] | None:
    """The chat's turns as ``persona-drift-chat.json`` and ``.csv``; None before any answer."""
    n = ctx.model.n_layers
    at = plot_layer(ctx, layer)
    messages, raw = _history_messages(history)
    records = [_check_record(r, n) for r in raw]
    if not records:
        return None
    rows = [
        row
        for r in records
        for row in _series_rows(
            "chat",
            r["turn"],
            r["projection"],
            r["normalised"],
            r["personas"],
            r["windowed"],
            r["preview"],
            r["settings"],
            n,
        )
    ]
    settings = {
        "plot_layer": at,
        "source": "chat (each answer generated here, read at every layer)",
        "turn_settings": {str(r["turn"]): r["settings"] for r in records},
    }
    prov = provenance(
        "drift-chat",
        model_id=ctx.model.model_id,
        layers=range(n),
        vectors=_vectors(name for r in records for name in r["personas"]),
        settings=settings,
    )
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    return write_pair(ctx.exports, CHAT_STEM, prov, COLUMNS, rows, {"conversation": conversation})


def write_replays(ctx: AppContext, kept: object, layer: object) -> tuple[Path, Path] | None:
    """The kept replays' turns as ``persona-drift-replays.json`` and ``.csv``; None without."""
    n = ctx.model.n_layers
    at = plot_layer(ctx, layer)
    replays = [r for r in _kept(kept) if r.get("turns")]
    if not replays:
        return None
    rows = [
        row
        for r in replays
        for t in r["turns"]
        for row in _series_rows(
            r["label"],
            t["turn"],
            t["projection_by_layer"],
            t["normalised_by_layer"],
            t["personas_by_layer"],
            t["windowed"],
            t["preview"],
            str(r.get("source", "")),
            n,
        )
    ]
    details = [
        {
            "label": r["label"],
            "capped": str(r["label"]).endswith(CAPPED),
            **{
                k: r.get(k)
                for k in ("window_tokens", "total_turns", "stopped", "source", "notes", "meta")
            },
        }
        for r in replays
    ]
    settings = {
        "plot_layer": at,
        "source": "replay (teacher-forced transcripts, read at every layer)",
        "replays": details,
        "capping_when_on": {
            "percentile": DEFAULT_CAP_PERCENTILE,
            "layers": list(default_cap_layers(n)),
        },
    }
    prov = provenance(
        "drift-replays",
        model_id=ctx.model.model_id,
        layers=range(n),
        vectors=_vectors(
            name for r in replays for t in r["turns"] for name in t["personas_by_layer"]
        ),
        settings=settings,
    )
    return write_pair(ctx.exports, REPLAY_STEM, prov, COLUMNS, rows, {"replays": details})


def _paths(written: tuple[Path, Path] | None) -> tuple[str | None, str | None]:
    return (None, None) if written is None else (str(written[0]), str(written[1]))


def chat_downloads(ctx: AppContext, history: object, layer: object) -> tuple[str | None, ...]:
    """The chat's two download buttons' files (none before the first answer)."""
    with user_errors():
        try:
            return _paths(write_chat(ctx, history, layer))
        except InputError:
            return None, None  # a history edited by hand: the chat itself says what is wrong


def replay_downloads(ctx: AppContext, kept: object, layer: object) -> tuple[str | None, ...]:
    """The replays' two download buttons' files (none before the first replay)."""
    with user_errors():
        return _paths(write_replays(ctx, kept, layer))
