"""What the Sweep and Extract tabs share of a layer x strength sweep: the operator's optional
judge and the small sweep after an extraction.

* :func:`optional_judge` — the judge configured by environment variables, or None;
* :func:`sweep_after_extraction` — :func:`persona_explorer.evaluate.sweep.quick_sweep` on the
  loaded model, and a Markdown line saying what it found (the Extract tab's "sweep" option).

A sweep in the web app generates at most ``core.limits.APP_SWEEP_MAX_ANSWERS`` answers.

Imports: ``core``, ``evaluate`` (the sweep and the judge), ``plots.sweep`` (a strength's
label), and this package's context and markup; never a tab.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import APP_SWEEP_MAX_ANSWERS
from persona_explorer.evaluate.sweep import quick_sweep
from persona_explorer.plots.sweep import strength_label
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.markup import md

if TYPE_CHECKING:
    from persona_explorer.evaluate.judge import Judge
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = ["optional_judge", "sweep_after_extraction"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def optional_judge() -> Iterator[Judge | None]:
    """The judge the operator configured (by environment variables), or None: without one, or
    with a misconfigured one (the info line says why), a sweep runs on its two measures."""
    try:
        from persona_explorer.evaluate.judge import Judge, JudgeConfig
    except ImportError:
        yield None
        return
    try:
        cfg = JudgeConfig.from_env()
    except InputError as exc:
        log.warning("judge off: %s", exc)
        cfg = None
    if cfg is None:
        yield None
        return
    with Judge(cfg) as judge:
        yield judge


def sweep_after_extraction(
    ctx: AppContext,
    vec: PersonaVector,
    should_stop: Callable[[], bool],
    progress: Callable[[int, int, str], None] | None,
) -> tuple[PersonaVector, str]:
    """``vec`` with a quick sweep's recommendation recorded, and a Markdown line saying what
    the sweep found (the vector unchanged when it found nothing or was stopped)."""
    with optional_judge() as judge:
        tuned, result = quick_sweep(
            ctx.model,
            vec,
            checkpoint_dir=ctx.settings.cache_dir / "sweeps",
            max_prompt_tokens=ctx.settings.limits.max_prompt_tokens,
            progress=progress,
            should_stop=should_stop,
            max_rows=APP_SWEEP_MAX_ANSWERS,
            judge=judge,
            persona_data_dir=ctx.settings.persona_data_dir,
        )
    cfg = result.config
    grid = (
        f"{len(result.prompts)} prompts, layers {', '.join(map(str, cfg.layers))}, strengths "
        f"{', '.join(strength_label(s) for s in cfg.strengths if s)}"
    )
    if result.stopped:
        return vec, (
            f"The sweep ({grid}) stopped before it finished: the vector keeps the extraction's "
            "layer and strength. Sweep it in the **Sweep** tab."
        )
    rec = result.recommended
    if rec is None:
        return vec, (
            f"**Sweep** ({grid}): no recommendation, so the extraction's layer and strength "
            "stay.  \n" + "  \n".join(md(line, 400) for line in result.reason.splitlines()[:40])
        )
    return tuned, (
        f"**Sweep** ({grid}): recommended **layer {rec.layer}, strength "
        f"{strength_label(rec.strength)}** (trait rise {rec.trait or 0:+.2f}, coherence "
        f"{rec.coherence or 0:.2f}); recorded in the vector, so Try it in Steer starts there."
    )
