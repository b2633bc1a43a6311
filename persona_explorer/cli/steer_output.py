"""What ``steer`` reports for one prompt: the JSON record and the side-by-side text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import render

if TYPE_CHECKING:
    from ..compare import SteerOutput


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
