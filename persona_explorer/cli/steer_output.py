"""What ``steer`` reports for one prompt: the JSON record and the side-by-side text, and with
``--cap-axis`` the capping pass (:class:`Capping`) and what it adds to both."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona_explorer.cli import render
from persona_explorer.core.limits import parse_layers

if TYPE_CHECKING:
    from persona_explorer.axis.assistant_axis import AxisData
    from persona_explorer.axis.capping import CapOutput
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.evaluate.compare import SteerOutput
    from persona_explorer.steering.generation import SamplingConfig
    from persona_explorer.vectors.persona_vector import PersonaVector


def record(prompt: str, out: SteerOutput, strengths: tuple[float, ...]) -> dict[str, Any]:
    base, first = out.baseline, out.steered[0]
    return {
        "prompt": prompt,
        "baseline": base.text,
        "steered": first.text,
        "steered_all": [
            {
                "strength": row.strength,
                "text": row.text,
                "finished": row.finished,
                "projections": row.layer_projection,
                "token_projections": row.token_projection,
                # The added vector's direct part of those projections (compare.py).
                "injected": row.layer_injected,
                "token_injected": row.token_injected,
            }
            for row in out.steered
        ],
        "layers": list(out.layers),
        "strength": strengths[0],
        "strengths": list(strengths),
        "projections": {"baseline": base.layer_projection, "steered": first.layer_projection},
        "token_projections": {"baseline": base.token_projection, "steered": first.token_projection},
        "projection_layer": out.readout_layer,
        "readout_layer": out.readout_layer,
        "stopped": out.stopped,
        "tokens_per_second": out.tokens_per_second,
        "new_tokens": out.new_tokens,
        "seconds": out.seconds,
        "decoder": out.decoder,
        "finished": {"baseline": base.finished, "steered": first.finished},
    }


def text(index: int, total: int, prompt: str, out: SteerOutput) -> list[str]:
    layers = ",".join(str(x) for x in out.layers)
    rule = "=" * 72
    lines = [rule, f"prompt {index}/{total}: {prompt}", rule, "[baseline]"]
    lines.append(out.baseline.text.strip() or "(empty)")
    for row in out.steered:
        s = "s" if len(out.layers) > 1 else ""
        lines += ["", f"[steered x{row.strength:g} at layer{s} {layers}]"]
        lines.append(row.text.strip() or "(empty)")
    lines.append("")
    rows = out.rows
    values = [v for row in rows for v in row.layer_projection]
    lo, hi = min(values), max(values)
    pl = out.readout_layer
    lines.append(
        f"projection on the vector (response mean, L0-L{len(rows[0].layer_projection) - 1}, "
        f"shared scale; read at L{pl}):"
    )
    base_at = rows[0].layer_projection[pl]
    for row in rows:
        label = "baseline" if row is rows[0] else f"x{row.strength:g}"
        at = row.layer_projection[pl]
        delta = (
            ""
            if row is rows[0]
            else f" (delta {at - base_at:+.2f}, added directly {row.layer_injected[pl]:+.2f})"
        )
        spark = render.sparkline(row.layer_projection, lo, hi)
        lines.append(f"  {label:>9} {spark}  L{pl}: {at:.2f}{delta}")
    lines.append(
        f"  {out.new_tokens} new tokens in {out.seconds:.2f} s "
        f"({out.tokens_per_second:.1f} tok/s, decoder {out.decoder})"
    )
    return lines


# --------------------------------------------------------------------------- --cap-axis


@dataclass(frozen=True)
class Capping:
    """The axis and the cap settings, read once for every prompt."""

    axis: AxisData
    layers: tuple[int, ...] | None  # None: the default window
    percentile: float

    @classmethod
    def prepare(cls, args: argparse.Namespace, model: LoadedModel) -> Capping:
        from persona_explorer.axis.assistant_axis import DEFAULT_CAP_PERCENTILE
        from persona_explorer.axis.build import axis_for

        layers = None if args.cap_layers is None else parse_layers(args.cap_layers, model.n_layers)
        # Shipped for the embedded model; built (minutes, with progress) and cached otherwise.
        with render.Progress(args.quiet) as progress:
            axis = axis_for(model, args.settings.cache_dir, progress)
        percentile = args.cap_percentile
        return cls(axis, layers, DEFAULT_CAP_PERCENTILE if percentile is None else percentile)

    def run(
        self,
        model: LoadedModel,
        prompt: str,
        system: str | None,
        steering: tuple[PersonaVector, tuple[int, ...], float] | None,
        sampling: SamplingConfig,
        positions: str,
    ) -> CapOutput:
        from persona_explorer.axis.capping import CapRequest, cap

        vec, layers, strength = steering if steering is not None else (None, (), 0.0)
        req = CapRequest(
            prompt=prompt,
            system=system or None,
            vector=vec,
            layers=layers,
            strength=strength,
            cap_layers=self.layers,
            percentile=self.percentile,
            positions=positions,  # type: ignore[arg-type]  # argparse's choices
            sampling=sampling,
        )
        return cap(model, self.axis, req)


def cap_record(record: dict[str, Any], out: CapOutput) -> dict[str, Any]:
    """``record`` (the Steer keys, or just the prompt) with the capping keys added; keys it
    already has keep their values."""
    rec = dict(record)
    base = out.row("baseline")
    rec.setdefault("baseline", base.text)
    rec["capped"] = out.row("capped").text
    if out.combined:
        rec["steered_capped"] = out.row("steered_capped").text
    rec["cap"] = out.cap.as_dict()
    # Response means at every layer, read after the cap (the capture sees edited residuals).
    rec["axis_projections"] = {r.key: r.axis_projection for r in out.rows}
    rec["axis_token_projections"] = {r.key: r.token_projection for r in out.rows}
    rec["axis_readout_layer"] = out.readout_layer
    rec["cap_fired"] = {r.key: r.cap_fired for r in out.rows if r.cap_fired is not None}
    for key, value in (
        ("stopped", out.stopped),
        ("new_tokens", out.new_tokens),
        ("seconds", out.seconds),
        ("decoder", out.decoder),
    ):
        rec.setdefault(key, value)
    return rec


def cap_text(index: int, total: int, prompt: str, out: CapOutput, lines: list[str]) -> list[str]:
    """The steer text (or a header and the baseline, without a vector) and the capped answers,
    with a line of numbers per pair."""
    lines = list(lines)
    if not lines:
        rule = "=" * 72
        lines = [rule, f"prompt {index}/{total}: {prompt}", rule, "[baseline]"]
        lines.append(out.row("baseline").text.strip() or "(empty)")
    info = out.cap
    where = (
        f"L{info.layers[0]}-L{info.layers[-1]}" if len(info.layers) > 1 else f"L{info.layers[0]}"
    )
    for before, after in out.pairs():
        head = "capped" if before.key == "baseline" else f"steered x{out.strength:g} + capped"
        lines += ["", f"[{head} at {where}, floor = p{info.percentile:g}]"]
        lines.append(after.text.strip() or "(empty)")
    lines += ["", f"projection on the Assistant Axis (response mean) at L{out.readout_layer}:"]
    at = out.readout_layer
    for before, after in out.pairs():
        fired = ", ".join(f"{share:.0%}" for share in after.cap_fired or [])
        lines.append(
            f"  {before.label:>8} {before.axis_projection[at]:8.2f} -> {after.label} "
            f"{after.axis_projection[at]:.2f} (floor {info.floors[-1]:.2f}; cap lifted {fired} "
            f"of the tokens at {where})"
        )
    return lines
