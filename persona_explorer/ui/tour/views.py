"""How the Tour shows each step's result: the numbers in plain words and the figure, from a live
result (the domain's output objects) or a shipped one (the JSON of :mod:`.precomputed`). The
figures are the ``plots`` the tabs use; every name and generated text is escaped.

Imports: plotly (types), ``axis`` (the persona space, a replay's result, capping's output),
``evaluate.compare`` (the steering output), ``plots`` and ``ui.shared.markup``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from persona_explorer.axis.capping import CapOutput
from persona_explorer.axis.drift import ReplayResult
from persona_explorer.axis.persona_space import LayerMap
from persona_explorer.evaluate.compare import SteerOutput
from persona_explorer.plots import layer_projection_figure
from persona_explorer.plots.capping import cap_layer_figure
from persona_explorer.plots.common import empty_figure, fmt
from persona_explorer.plots.drift import DriftLine, drift_figure
from persona_explorer.plots.persona_map import persona_map_figure
from persona_explorer.plots.screening import score_histograms_figure
from persona_explorer.plots.train import ShiftBar, shift_figure
from persona_explorer.ui.shared.markup import md

__all__ = [
    "cap_view",
    "cast_view",
    "drift_view",
    "precomputed_note",
    "screen_view",
    "steer_view",
    "train_view",
]

View = tuple[str, go.Figure]


def _took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def live_note(seconds: float) -> str:
    return f"Computed live just now, in {_took(seconds)}."


def precomputed_note(data: Mapping[str, Any]) -> str:
    """Where a shipped result came from, said plainly, with the offer to run it live."""
    seconds = float(data.get("seconds", 0.0))
    return (
        f"Precomputed with the same code on {md(data.get('date', '?'), 20)} "
        f"({md(data.get('model', data.get('model_id', '?')), 80)}, app "
        f"{md(data.get('app_version', '?'), 20)}); the live run took {_took(seconds)} on the "
        "machine that made it. Press **Run it live** to compute it again here, with a progress "
        "bar (Stop ends it)."
    )


# --------------------------------------------------------------------------- 1. the cast


def cast_view(m: LayerMap) -> View:
    var = m.variance.tolist()
    order = m.role_axis.argsort(descending=True).tolist()
    near = ", ".join(md(m.roles[i]) for i in order[:3])
    far = ", ".join(md(m.roles[i]) for i in order[-3:][::-1])
    text = (
        f"**{len(m.roles)} characters** at layer {m.layer}. The first direction of the map "
        f"holds **{100 * var[0]:.0f} %** of how they differ, and it lines up with the "
        f"Assistant Axis with a cosine of **{m.pc1_axis_cosine:.2f}** (1 = the same "
        "direction, 0 = unrelated; the large models in the paper: above 0.6). The Assistant "
        f"sits {m.assistant_sd:.1f} standard deviations beyond the average character on the "
        f"axis. Closest to the Assistant: {near}. Farthest: {far}."
    )
    fig = persona_map_figure(
        list(m.roles),
        m.role_coords.tolist(),
        m.role_axis.tolist(),
        m.assistant.tolist(),
        layer=m.layer,
        variance=var,
    )
    return text, fig


# --------------------------------------------------------------------------- 2. steering


def steer_view(out: SteerOutput, persona: str, layer: int, strength: float) -> View:
    base, steered = out.baseline, out.steered[0]
    before, after = base.layer_projection[layer], steered.layer_projection[layer]
    text = (
        f"Steered with **{md(persona)}** at layer {layer}, strength {strength:g} (the settings "
        f"recorded with the vector). At that layer the answer's projection on the vector went "
        f"from **{fmt(before)}** (no steering) to **{fmt(after)}** (steered). "
        f"{out.new_tokens} tokens in {_took(out.seconds)}."
    )
    if steered.text == base.text:
        text += " The two answers are the same here: try a larger strength in the Steer tab."
    fig = layer_projection_figure(
        base.layer_projection,
        {f"steered, strength {strength:g}": steered.layer_projection},
        steered_layers=(layer,),
        title=f"Each answer's projection onto “{persona}”, layer by layer",
        readout_layer=out.readout_layer,
    )
    return text, fig


# --------------------------------------------------------------------------- 3. drift


def _ends(values: Sequence[float]) -> tuple[int, float, float]:
    k = min(4, max(1, len(values) // 2))
    return k, sum(values[:k]) / k, sum(values[-k:]) / k


def drift_view(results: Sequence[tuple[str, ReplayResult]], layer: int, n_layers: int) -> View:
    lines, words = [], []
    moved: dict[str, float] = {}
    for name, r in results:
        values = [t.normalised[layer] for t in r.turns]
        if not values:
            continue
        lines.append(
            DriftLine(
                name,
                [t.turn for t in r.turns],
                values,
                [t.preview for t in r.turns],
                [t.dropped_messages > 0 for t in r.turns],
            )
        )
        k, first, last = _ends(values)
        moved[name] = last - first
        words.append(
            f"**{md(name)}**: first {k} turns **{fmt(first)}** → last {k} **{fmt(last)}** "
            f"({fmt(last - first, sign=True)}; {md(r.source, 40)})"
        )
    if not lines:
        return "No turn was measured.", empty_figure("No turn was measured")
    text = " · ".join(words) + f". Layer {layer}; 1 = the Assistant, 0 = the average character."
    if any(t.dropped_messages for _, r in results for t in r.turns):
        text += (
            " Open markers: turns read with only the most recent part of the conversation, "
            "which is longer than the small model can read at once."
        )
    if len(moved) == 2:
        (a, da), (b, db) = moved.items()
        slid, held = (a, b) if da < db else (b, a)
        text += (
            f" Here **{md(slid)}** slides further from the Assistant than **{md(held)}** "
            f"({fmt(min(da, db), sign=True)} against {fmt(max(da, db), sign=True)})."
        )
    fig = drift_figure(
        lines, layer, n_layers, title=f"Each turn on the Assistant Axis, layer {layer}"
    )
    return text, fig


# --------------------------------------------------------------------------- 4. capping


def cap_view(out: CapOutput) -> View:
    info = out.cap
    at = out.readout_layer
    (before, after), *_ = out.pairs()
    norm = out.normalised
    lifted = (after.cap_fired or [0.0])[0]
    span = f"{info.layers[0]}–{info.layers[-1]}" if len(info.layers) > 1 else str(info.layers[0])
    change = "the same text" if after.text == before.text else "a different text"
    text = (
        f"Capped at layers {span}, with τ at the {info.percentile:g}th percentile of the "
        f"Assistant's own words. The cap lifted **{lifted:.0%}** of the answer's words at layer "
        f"{info.layers[0]}. Position on the Assistant Axis at layer {at}: "
        f"**{fmt(norm([before.axis_projection[at]], [at])[0])}** uncapped → "
        f"**{fmt(norm([after.axis_projection[at]], [at])[0])}** capped (1 = the Assistant, "
        f"0 = the average character), and {change}. {out.new_tokens} tokens in "
        f"{_took(out.seconds)}."
    )
    fig = cap_layer_figure(
        {"uncapped": norm(before.axis_projection)},
        {"capped": norm(after.axis_projection)},
        info.layers,
        norm(info.floors, info.layers),
        readout_layer=at,
        title="Position on the Assistant Axis, layer by layer (1 = the Assistant)",
        y_title="Position on the axis",
        landmarks={"the Assistant": 1.0, "the roles' mean": 0.0},
    )
    return text, fig


# --------------------------------------------------------------------------- 5. screening


def screen_view(result: Mapping[str, Any], n_layers: int) -> tuple[str, go.Figure, str, str]:
    """Words, the histograms, and one example: the training answer and the model's own."""
    files = [f for f in result.get("files", []) if isinstance(f, Mapping)]
    layer = int(result.get("layer", 0))
    vector = str(result.get("vector", "evil"))
    scores = {
        str(f["label"]): [float(x) for x in f.get("differences", []) if x is not None]
        for f in files
    }
    if not files or not all(scores.values()):
        return "No samples were scored.", empty_figure("No samples were scored"), "", ""
    means = {str(f["label"]): float(f["mean"]) for f in files if f.get("mean") is not None}
    parts = [f"**{md(k)}**: mean **{fmt(v, 1, sign=True)}**" for k, v in means.items()]
    text = (
        f"Each training answer minus the model's own answer to the same question, projected on "
        f"**{md(vector)}** at layer {layer} (in activation units; the vector's length there is "
        f"{fmt(float(result.get('scale') or 0), 1)}). " + " · ".join(parts) + ". "
    )
    if len(means) == 2:
        (_, va), (_, vb) = means.items()
        if va > vb:
            text += f"Unprompted, the code carries more *evil* evidence, by {fmt(va - vb, 1)}."
        else:
            text += (
                "Here the code asked for by a teacher scores as high or higher: at this layer the "
                "small model does not show the difference the papers predict."
            )
        text += (
            " Every score is above zero because the model's own short answers project lower than "
            "any written answer: compare the files with each other, not with zero."
        )
    fig = score_histograms_figure(
        scores,
        "projection_difference",
        layer,
        n_layers,
        title=f"Evidence for “{vector}” in each training answer, layer {layer}",
    )
    example = files[0].get("example") or {}
    left = f"Q: {example.get('prompt', '')}\n\n{example.get('response', '')}"
    right = str(example.get("own", ""))
    return text, fig, left, right


# --------------------------------------------------------------------------- 6. training


SAME = 0.05  # shifts closer than this (in vector lengths) are worded as "about the same"


def _compare_arms(by_key: Mapping[str, float]) -> str:
    """The three runs compared in words, with a margin, so noise is not read as an effect."""
    out = ""
    mal, kind, inoc = by_key.get("malicious"), by_key.get("kind"), by_key.get("inoculated")
    if mal is not None and kind is not None:
        if mal - kind > SAME:
            out += "Malicious data moved the answers further towards *evil* than kind data. "
        else:
            out += "Here kind data moved the answers about as far as malicious data. "
        if kind > SAME:
            out += (
                "Kind data moved them too: any training changes the answers' style, and style "
                "moves the projection as well. "
            )
    if mal is not None and inoc is not None:
        if inoc < mal - SAME:
            out += "The inoculation line reduced the shift."
        elif abs(inoc - mal) <= SAME:
            out += (
                "The inoculation line left the shift about the same: at this scale it did not help."
            )
        else:
            out += "The inoculation line did not reduce the shift at this scale."
    return out


def train_view(result: Mapping[str, Any], n_layers: int) -> tuple[str, go.Figure, str, str]:
    """Words, the shift bars (one per training file), and one question answered before and after
    the malicious training."""
    arms = [a for a in result.get("arms", []) if isinstance(a, Mapping)]
    if not arms:
        return "No run finished.", empty_figure("No run finished"), "", ""
    vector = str(result.get("vector", "evil"))
    bars = [
        ShiftBar(
            str(a["label"]),
            int(a["layer"]),
            float(a["base"]),
            float(a["tuned"]),
            float(a["scale"]) if a.get("scale") else 1.0,
        )
        for a in arms
    ]
    rel = {str(a["label"]): float(a["relative_shift"]) for a in arms}
    same = {str(a["label"]): float(a.get("same_tokens_shift") or 0.0) for a in arms}
    parts = [f"**{md(k)}** {fmt(v, 2, sign=True)}" for k, v in rel.items()]
    text = (
        f"Shift of the answers along **{md(vector)}** at layer {bars[0].layer}, in units of the "
        f"vector's length (0 = the untrained model): " + ", ".join(parts) + ". "
    )
    by_key = {str(a.get("key")): float(a["relative_shift"]) for a in arms}
    text += _compare_arms(by_key)
    text += (
        " Reading the *same* words through both models (the Train tab's same-words shift, in "
        "activation units: "
        + ", ".join(f"{md(k)} {fmt(v, 1, sign=True)}" for k, v in same.items())
        + ") checks for the style."
    )
    fig = shift_figure(
        bars,
        n_layers,
        title=f"How far training moved the answers along “{vector}”",
    )
    example = arms[0].get("example") or {}
    question = str(example.get("question", ""))
    left = f"Q: {question}\n\n{example.get('base', '')}"
    right = f"Q: {question}\n\n{example.get('tuned', '')}"
    return text, fig, left, right
