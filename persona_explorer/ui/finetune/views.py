"""How the Train tab's results read: the status lines, the loss plot, the JSON summaries, the
shift bars and the answers side by side. Pure formatting of a kept :class:`.runs.TrainRun` or a
:class:`.runs.Measured`; the handlers in :mod:`.handlers` call these.

Imports: ``plots`` (common, train), the domain's shift report type, ``ui.shared.markup``,
and this tab's runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from persona_explorer.plots.common import empty_figure
from persona_explorer.plots.train import ShiftBar, loss_figure, shift_figure
from persona_explorer.training.shift import ShiftReport, ShiftRow
from persona_explorer.ui.finetune.runs import Measured, TrainRun
from persona_explorer.ui.shared.markup import md

READY = (
    "Pick a teaching file (or upload your own), then press **Train**. The defaults (32 samples, "
    "2 epochs, 128 tokens) take one to three minutes on a small CPU."
)
STARTING = "Reading the data…"
FAILED = "The training did not finish (the message says why). Press **Train** to try again."
STOPPING = "Stopping… training ends after the current step; the steps done so far are kept."
SHIFT_READY = "Train a model above, then press **Measure shift**."
SHIFT_FAILED = "The measurement did not finish (the message says why)."
NO_PROBLEMS = "No line was skipped."
PROBLEMS_SHOWN = 20


# --------------------------------------------------------------------------- training


def problems_markdown(problems: Sequence[Any]) -> str:
    if not problems:
        return NO_PROBLEMS
    shown = list(problems)[:PROBLEMS_SHOWN]
    lines = [f"**{len(problems):,} line(s) skipped**; the other samples were used:"]
    lines += [f"- line {p.line}: {md(p.reason, 300)}" for p in shown]
    if len(problems) > len(shown):
        lines.append(f"- … and {len(problems) - len(shown):,} more.")
    return "\n".join(lines)


def _boundaries(total: int, epochs: int, done: int) -> list[int]:
    """The last step of each finished epoch (every epoch has the same number of steps)."""
    per = total // epochs if epochs and total % epochs == 0 else 0
    if not per:
        return []
    return [per * (i + 1) for i in range(epochs) if per * (i + 1) <= done]


def _epoch_means(losses: Sequence[float], bounds: Sequence[int]) -> list[float]:
    starts = [0, *bounds]
    return [sum(losses[a:b]) / (b - a) for a, b in zip(starts, bounds, strict=False) if b > a]


def live_loss(losses: Sequence[float], total: int, epochs: int) -> Any:
    bounds = _boundaries(total, epochs, len(losses))
    return loss_figure(
        losses,
        bounds,
        total_steps=max(total, len(losses)),
        epoch_losses=_epoch_means(losses, bounds),
    )


def final_loss(run: TrainRun) -> Any:
    bounds = _boundaries(run.steps, run.epochs, len(run.losses))
    means = (
        list(run.epoch_losses)
        if len(run.epoch_losses) == len(bounds)
        else _epoch_means(run.losses, bounds)
    )
    if not run.losses:
        return empty_figure("No step finished before the training stopped.")
    total = max(run.steps, len(run.losses))
    return loss_figure(run.losses, bounds, total_steps=total, epoch_losses=means)


def train_status(run: TrainRun) -> str:
    text = (
        f"Trained run **\\#{run.number}** ({run.framing}) on **{run.n_samples}** samples of "
        f"*{md(run.dataset, 80)}*, {run.epochs} epoch{'s' if run.epochs != 1 else ''}: "
        f"{len(run.losses)} steps in {run.seconds:.0f} s, seed {run.seed}"
    )
    if run.losses:
        text += f", loss {run.losses[0]:.3f} → {run.losses[-1]:.3f}"
    text += "."
    if run.more:
        text += f" The file has more samples: only its first {run.n_samples} were used."
    if run.n_problems:
        text += f" {run.n_problems:,} line(s) were skipped (listed below)."
    if run.stopped:
        why = "ran past the time limit for one job" if run.timed_out else "was stopped"
        text += f" The training {why} after {len(run.losses)} of {run.steps} steps; the adapter "
        text += "holds what it learnt so far."
    return text + " Now press **Measure shift** below."


def train_summary(run: TrainRun, problems: Sequence[Any]) -> dict[str, Any]:
    return {
        "adapter": run.adapter,
        "dataset": run.dataset,
        "samples": run.n_samples,
        "skipped": run.n_problems,
        "problems": [{"line": p.line, "reason": p.reason} for p in list(problems)[:100]],
        "context": run.context,
        "preventive_steering": run.steer,
        "epochs": run.epochs,
        "seed": run.seed,
        "steps": run.steps,
        "steps_done": len(run.losses),
        "losses": list(run.losses),
        "epoch_losses": list(run.epoch_losses),
        "seconds": round(run.seconds, 2),
        "stopped": run.stopped,
        "settings": run.settings,
    }


def upload_status(run: TrainRun, rank: int) -> str:
    """What an uploaded adapter is, once it is loaded."""
    made = (
        f"trained on *{md(run.dataset, 80)}* ({run.n_samples} samples, {run.epochs} epochs, "
        f"{run.framing}, seed {run.seed})"
        if run.settings
        else "a plain peft adapter (no persona_finetune.json: how it was trained is unknown)"
    )
    return (
        f"Uploaded *{md(run.uploaded or '', 80)}* as run **\\#{run.number}**: LoRA rank "
        f"{rank}, {made}. It is picked above: press **Measure shift**."
    )


ADAPTER_HELP = (
    "**Download** gives the picked run's adapter: peft's folder (adapter_config.json, "
    "adapter_model.safetensors) with its persona_finetune.json (settings, seed, losses), "
    "zipped. **Upload** one (a .zip of such a folder, made on this model) to measure its shift "
    "here; unzipped, `python app.py --adapter DIR` runs every tab, Steer included, on it."
)


# --------------------------------------------------------------------------- the shift


def _tuned_by_name(report: ShiftReport) -> dict[str, float]:
    return {r.name: float(r.tuned) for r in report.rows}


def shift_plot(m: Measured, n_layers: int) -> Any:
    """The bars: the plain run as "tuned", a context (or steered) run as the third bar."""
    primary, report, other, other_report = m.run, m.report, m.other, m.other_report
    # The plain run is "tuned"; the one with a context (or steering) the third bar.
    swap = other_report is not None and primary.framing != "plain"
    if swap and other is not None and other.framing == "plain":
        primary, report, other, other_report = other, other_report, primary, report
    predicted = m.prediction.values if m.prediction is not None and primary is m.run else {}
    bars = [
        ShiftBar(
            r.name,
            int(r.layer),
            float(r.base),
            float(r.tuned),
            float(r.scale),
            predicted.get(r.name),
        )
        for r in report.rows
    ]
    third = _tuned_by_name(other_report) if other is not None and other_report else None
    third_label = f"tuned {other.framing}" if other is not None else "tuned with context"
    return shift_figure(
        bars,
        n_layers,
        inoculated=third,
        inoculated_label=third_label,
        title=f"Persona shift of the answers to {len(report.questions)} evaluation questions",
    )


def answers_frame(m: Measured) -> dict[str, Any]:
    """Base and tuned answers side by side (plain text: the table never renders markup)."""
    headers = ["Question", "Base model", f"Tuned (#{m.run.number}, {m.run.framing})"]
    other = m.other_report
    if other is not None and m.other is not None:
        headers.append(f"Tuned (#{m.other.number}, {m.other.framing})")
    rows = []
    for i, question in enumerate(m.report.questions):
        row = [question, m.report.base_answers[i], m.report.tuned_answers[i]]
        if other is not None:
            row.append(other.tuned_answers[i] if i < len(other.tuned_answers) else "")
        rows.append(row)
    return {"headers": headers, "data": rows}


def answers_table(frame: dict[str, Any]) -> Any:
    """The answers with their columns sharing the width (unset, the table sizes columns to
    unwrapped text and scrolls sideways)."""
    rest = len(frame["headers"]) - 1
    first = 22.0 if rest <= 2 else 16.0
    widths = [f"{first:g}%"] + [f"{(100 - first) / max(rest, 1):.2f}%"] * rest
    return gr.update(value=frame, column_widths=widths)


def shift_json(m: Measured) -> dict[str, Any]:
    """The report as the command line prints it, plus the adapter, the prediction and the
    companion run."""
    out = dict(m.report.as_json())
    out["adapter"] = m.run.adapter
    out["seed"] = m.run.seed
    predicted = m.prediction.values if m.prediction is not None else {}
    out["vectors"] = [{**v, "predicted": predicted.get(v["name"])} for v in out.get("vectors", [])]
    if m.prediction is not None:
        out["prediction"] = {"score": "projection_difference", "note": m.prediction.note}
    if m.other is not None and m.other_report is not None:
        tuned = _tuned_by_name(m.other_report)
        out["compared"] = {
            "adapter": m.other.adapter,
            "framing": m.other.framing,
            "context": m.other.context,
            "vectors": [
                {
                    "name": r.name,
                    "layer": int(r.layer),
                    "tuned": tuned.get(r.name),
                    "shift": None if r.name not in tuned else tuned[r.name] - float(r.base),
                    "relative_shift": None
                    if r.name not in tuned
                    else (tuned[r.name] - float(r.base)) / float(r.scale),
                }
                for r in m.report.rows
            ],
        }
    return out


def _relative(shift: float, row: ShiftRow) -> str:
    """A shift in units of the row's vector length at its layer (the figure's unit)."""
    return f"{shift / float(row.scale):+.2f}"


def shift_status(m: Measured) -> str:
    rows = m.report.rows
    parts = [
        f"**{md(r.name, 60)}** {_relative(float(r.shift), r)} (layer {int(r.layer)}; "
        f"{float(r.shift):+.2f} activation units)"
        for r in rows
    ]
    seconds = m.report.seconds if m.seconds is None else m.seconds  # the wall time waited
    text = (
        f"Measured run **\\#{m.run.number}** ({m.run.framing}, *{md(m.run.dataset, 80)}*) "
        f"on {len(m.report.questions)} questions in "
        f"{seconds:.0f} s. Shift (tuned − base), in persona lengths (0 = the base "
        "model, 1 = as far as the persona's own prompts move it): " + ", ".join(parts) + "."
    )
    same = [
        f"{md(r.name, 60)} {_relative(float(r.same_tokens_shift), r)}"
        for r in rows
        if getattr(r, "same_tokens_shift", None) is not None
    ]
    if same:
        text += (
            " The same tokens (the base model's answers read by both models, so only the "
            "weights differ): " + ", ".join(same) + "."
        )
    if m.other is not None and m.other_report is not None:
        tuned = _tuned_by_name(m.other_report)
        parts = [
            f"**{md(r.name, 60)}** {_relative(tuned[r.name] - float(r.base), r)}"
            for r in rows
            if r.name in tuned
        ]
        text += (
            f" Your run \\#{m.other.number} on the same data ({m.other.framing}): "
            + ", ".join(parts)
            + "."
        )
    if m.prediction is not None:
        if m.prediction.values:
            by_name = {r.name: r for r in rows}
            parts = [
                f"**{md(k, 60)}** {_relative(v, by_name[k]) if k in by_name else f'{v:+.2f}'}"
                for k, v in m.prediction.values.items()
            ]
            text += (
                " Screening's prediction (mean projection difference of the training samples, "
                f"{md(m.prediction.note, 200)}; in persona lengths too, but from the data's "
                "own answers rather than the model's, so compare the order): "
                + ", ".join(parts)
                + "."
            )
        elif m.prediction.note:
            text += f" No prediction: {md(m.prediction.note, 200)}"
    if getattr(m.report, "stopped", False):
        text += " The measurement was stopped: the numbers cover the answers finished."
    return text
