"""How the Drift tab shows its numbers: the chat's and the replays' turns on the axis at one
layer (figures), a replay's summary in words, a chat turn's status line, and the replays as the
``/replay`` API returns them. Everything is made from what the tab keeps (plain numbers, no
tensors), so moving the layer re-draws without computing anything again.

Imports: plotly, ``core.limits``, ``axis`` (a replay's and a chat turn's results), ``plots``
and this package's markup.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from persona_explorer.axis.drift import ReplayResult
from persona_explorer.axis.drift_chat import ChatTurn
from persona_explorer.axis.replays import SOURCE_READ
from persona_explorer.core.limits import APP_DRIFT_MAX_PROJECTED
from persona_explorer.plots.common import empty_figure, fmt
from persona_explorer.plots.drift import DriftLine, drift_figure
from persona_explorer.ui.shared.markup import md

__all__ = [
    "NO_CHAT",
    "NO_REPLAY",
    "chat_figure",
    "public_replays",
    "replay_figure",
    "replay_record",
    "replay_summary",
    "turn_status",
]

NO_CHAT = "Send a message: each answer is placed on the Assistant Axis, turn by turn."
NO_REPLAY = "Choose transcripts (or upload one) and press Replay."


def chat_figure(records: Sequence[dict], layer: int, n_layers: int) -> go.Figure:
    """The chat's answers so far on the axis (and persona projections) at ``layer``."""
    done = [r for r in records if r["normalised"]]
    if not done:
        return empty_figure(NO_CHAT)
    line = DriftLine(
        "this chat",
        [r["turn"] for r in done],
        [r["normalised"][layer] for r in done],
        [f"{r['settings']} · {r['preview']}" if r["settings"] else r["preview"] for r in done],
        [r["windowed"] for r in done],
    )
    names = list(dict.fromkeys(n for r in done for n in r["personas"]))
    personas = []
    for name in names:
        have = [r for r in done if r["personas"].get(name)]
        personas.append(
            DriftLine(
                name,
                [r["turn"] for r in have],
                [r["personas"][name][layer] for r in have],
                [r["preview"] for r in have],
            )
        )
    return drift_figure(
        [line], layer, n_layers, personas=personas, title=f"This chat on the axis, layer {layer}"
    )


def replay_figure(replays: Sequence[dict], layer: int, n_layers: int) -> go.Figure:
    """Every kept replay side by side at ``layer`` (persona projections underneath)."""
    shown = [r for r in replays if r["turns"]]
    if not shown:
        return empty_figure(NO_REPLAY)
    lines = [
        DriftLine(
            r["label"],
            [t["turn"] for t in r["turns"]],
            [t["normalised_by_layer"][layer] for t in r["turns"]],
            [t["preview"] for t in r["turns"]],
            [t["windowed"] for t in r["turns"]],
        )
        for r in shown
    ]
    personas = []
    for r in shown:
        for name in dict.fromkeys(n for t in r["turns"] for n in t["personas_by_layer"]):
            personas.append(
                DriftLine(
                    f"{name} · {r['label']}",
                    [t["turn"] for t in r["turns"]],
                    [t["personas_by_layer"][name][layer] for t in r["turns"]],
                    [t["preview"] for t in r["turns"]],
                )
            )
    return drift_figure(lines, layer, n_layers, personas=personas[: 2 * APP_DRIFT_MAX_PROJECTED])


def replay_record(result: ReplayResult, layer: int) -> dict:
    """What the session keeps of a replay: every layer's numbers, no tensors."""
    out = result.as_json(layer)
    for t, turn in zip(out["turns"], result.turns, strict=True):
        t["personas_by_layer"] = turn.personas
    return out


def replay_summary(records: Sequence[dict], layer: int) -> str:
    """First vs last turns on the normalised scale, per replay, and what to know about each."""
    lines = []
    for r in records:
        values = [t["normalised_by_layer"][layer] for t in r["turns"]]
        if not values:
            lines.append(f"**{md(r['label'])}**: no turn was measured (stopped at once).")
            continue
        k = min(4, max(1, len(values) // 2))
        first, last = sum(values[:k]) / k, sum(values[-k:]) / k
        seconds = float(r["seconds"])
        took = f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
        source = str(r.get("source", SOURCE_READ))
        line = (
            f"**{md(r['label'])}**: first {k} turns **{fmt(first)}** → last {k} "
            f"**{fmt(last)}** ({fmt(last - first, sign=True)}) · {len(values)} turns "
            f"{md(source, 40)} in {took}"
        )
        if r["notes"]:
            line += " · " + "; ".join(md(n, 300) for n in r["notes"])
        lines.append(line)
    lines.append(
        f"Layer {layer}. 1 = the default Assistant, 0 = the roles' mean. Open markers: turns read "
        "through a window of the most recent turns (earlier ones dropped whole)."
    )
    return "\n\n".join(lines)


def turn_status(turn: ChatTurn, layer: int, settings: str, timed_out: bool) -> str:
    if not turn.normalised:
        head = "The model gave an empty answer: nothing to place on the axis."
    else:
        head = (
            f"This answer sits at **{fmt(turn.normalised[layer])}** on the axis at layer "
            f"{layer} (1 = the default Assistant, 0 = the roles' mean)"
        )
        extra = [f"{md(k)} {fmt(v[layer], 1)}" for k, v in turn.personas.items() if v]
        if extra:
            head += " · persona projections: " + ", ".join(extra)
    bits = [head, f"{turn.response_tokens} tokens in {turn.seconds:.1f} s"]
    if settings:
        bits.append(md(settings, 300))
    if turn.dropped_messages:
        bits.append(
            f"the history was too long: the {turn.dropped_messages} earliest messages were left "
            f"out (the model read the most recent turns that fit, {turn.prompt_tokens} tokens)"
        )
    if timed_out:
        bits.append("stopped at the time limit for one job")
    elif turn.stopped:
        bits.append("stopped")
    return " · ".join(bits) + "."


def public_replays(records: Sequence[dict], layer: int) -> dict:
    """The replays as the API returns them: every turn at ``layer`` (and all layers)."""
    out = []
    for r in records:
        turns = [{k: v for k, v in t.items() if k != "personas_by_layer"} for t in r["turns"]]
        for t, full in zip(turns, r["turns"], strict=True):
            t["projection"] = full["projection_by_layer"][layer]
            t["normalised"] = full["normalised_by_layer"][layer]
            t["personas"] = {k: v[layer] for k, v in full["personas_by_layer"].items()}
            t["layer"] = layer
        out.append({**{k: v for k, v in r.items() if k != "turns"}, "layer": layer, "turns": turns})
    return {"layer": layer, "replays": out}
