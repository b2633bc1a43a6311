"""How a screening run reads: its numbers, the ranked table, the wording, the figures and the
downloads. Pure formatting of a kept :class:`.runs.ScreenRun`; the handlers in
:mod:`.handlers` call these.

Imports: the domain's screening results (``training.screening_scores``), ``core`` (limits,
names), ``plots``, ``ui.shared`` (context, markup), and this tab's runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from persona_explorer.core.limits import (
    APP_SCREENING_MAX_FILTER_CHARS,
    APP_SCREENING_MAX_SAMPLES_OWN,
    APP_SCREENING_MAX_SAMPLES_RAW,
    check_text,
)
from persona_explorer.core.names import slugify
from persona_explorer.plots.common import empty_figure, fmt
from persona_explorer.plots.screening import (
    SCORE_LABELS,
    inoculation_figure,
    score_histograms_figure,
)
from persona_explorer.training.screening_scores import ScoredSample, ScreenResult, write_scores
from persona_explorer.ui.screening.runs import ScreenRun
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.markup import md

TOP_N = 5
PROBLEMS_SHOWN = 50
TABLE_EXCERPT = 200
OWN_TABLE_EXCERPT = 160
SORT_LINE = "line"
NO_INOCULATION = (
    "Write a context and press **Re-score with this context**: the same samples are scored "
    "again with it put before each one (as a system prompt), and the change is shown here."
)


def sample_cap(own: bool) -> int:
    """Samples one run may score: fewer when the model's own answers are generated."""
    return APP_SCREENING_MAX_SAMPLES_OWN if own else APP_SCREENING_MAX_SAMPLES_RAW


# --------------------------------------------------------------------------- numbers


def scores_by_vector(result: ScreenResult) -> dict[str, list[float]]:
    """Each vector's scores (the run's score key), skipping samples without one."""
    key = result.score_key
    return {
        name: [v for row in result.rows if (v := getattr(row.scores[name], key)) is not None]
        for name in result.names
    }


@dataclass(frozen=True)
class Change:
    """How one vector's scores moved with the context, over the samples scored both ways."""

    count: int
    mean_before: float
    mean_after: float
    fell: int  # samples whose score is lower with the context

    @property
    def mean_change(self) -> float:
        return self.mean_after - self.mean_before

    @property
    def share_fell(self) -> float:
        return self.fell / self.count if self.count else 0.0


def per_sample_changes(base: ScreenResult, other: ScreenResult) -> dict[int, dict[str, float]]:
    """By line: each vector's score with the context minus without, where both exist."""
    key = base.score_key
    after = {row.line: row for row in other.rows}
    out: dict[int, dict[str, float]] = {}
    for row in base.rows:
        match = after.get(row.line)
        if match is None:
            continue
        changes = {}
        for name in base.names:
            a, b = getattr(row.scores[name], key), getattr(match.scores[name], key)
            if a is not None and b is not None:
                changes[name] = b - a
        out[row.line] = changes
    return out


def inoculation_changes(base: ScreenResult, other: ScreenResult) -> dict[str, Change]:
    """Per vector: the mean score without and with the context and how many samples fell."""
    key = base.score_key
    before = {row.line: row for row in base.rows}
    out: dict[str, Change] = {}
    for name in base.names:
        pairs = [
            (a, b)
            for row in other.rows
            if row.line in before
            and (a := getattr(before[row.line].scores[name], key)) is not None
            and (b := getattr(row.scores[name], key)) is not None
        ]
        n = len(pairs)
        out[name] = Change(
            count=n,
            mean_before=sum(a for a, _ in pairs) / n if n else math.nan,
            mean_after=sum(b for _, b in pairs) / n if n else math.nan,
            fell=sum(b < a for a, b in pairs),
        )
    return out


# --------------------------------------------------------------------------- the table


def sort_choices(run: ScreenRun) -> list[tuple[str, str]]:
    out = [(f"score: {name}", f"score:{name}") for name in run.base.names]
    if run.inoculated is not None:
        out += [(f"change with context: {name}", f"change:{name}") for name in run.base.names]
    return [*out, ("file order (line)", SORT_LINE)]


def check_sort(run: ScreenRun, sort_by: object) -> str:
    keys = [k for _, k in sort_choices(run)]
    if sort_by in keys:
        return str(sort_by)
    return keys[0]  # a stale choice (another run's vector) falls back to the first score


def ordered_rows(run: ScreenRun, sort_by: str) -> list[ScoredSample]:
    """The run's samples in ``sort_by`` order: scores highest first, changes most fallen
    first, lines in file order; samples without the value last."""
    rows = list(run.base.rows)
    if sort_by == SORT_LINE:
        return sorted(rows, key=lambda r: r.line)
    kind, name = sort_by.split(":", 1)
    if kind == "change" and run.inoculated is not None:
        changes = per_sample_changes(run.base, run.inoculated)

        def change_key(r: ScoredSample) -> tuple[bool, float]:
            c = changes.get(r.line, {}).get(name)
            return (c is None, c if c is not None else 0.0)

        return sorted(rows, key=change_key)

    def score_key(r: ScoredSample) -> tuple[bool, float]:
        v = getattr(r.scores[name], run.key)
        return (v is None, -v if v is not None else 0.0)

    return sorted(rows, key=score_key)


def _short(value: str | None, limit: int) -> str:
    text = " ".join((value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _matches(row: ScoredSample, needle: str) -> bool:
    if not needle:
        return True
    if needle.isdigit() and int(needle) == row.line:
        return True
    hay = " ".join((row.prompt, row.response, row.own_response or "")).lower()
    return needle in hay


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def table_frame(run: ScreenRun, filter_text: object, sort_by: object) -> pd.DataFrame:
    """The ranked table: rank (in the chosen order, before filtering), line, a score per
    vector (with a context run, also the score with it and the change), then the excerpts.
    Numbers first: on a narrow screen the long excerpts scroll, the scores stay in view."""
    needle = check_text(
        filter_text, "filter", APP_SCREENING_MAX_FILTER_CHARS, required=False
    ).lower()
    order = check_sort(run, sort_by)
    names = run.base.names
    inoc = run.inoculated
    after = {r.line: r for r in inoc.rows} if inoc is not None else {}
    changes = per_sample_changes(run.base, inoc) if inoc is not None else {}
    headers = ["Rank", "Line", *names]
    if inoc is not None:
        for name in names:
            headers += [f"{name} with context", f"change {name}"]
    headers += ["Prompt", "Response"]
    if run.base.own:
        headers.append("Model's own answer")
    data = []
    for rank, row in enumerate(ordered_rows(run, order), 1):
        if not _matches(row, needle):
            continue
        cells: list[Any] = [rank, row.line]
        cells += [_round(getattr(row.scores[n], run.key)) for n in names]
        if inoc is not None:
            match = after.get(row.line)
            for n in names:
                value = getattr(match.scores[n], run.key) if match is not None else None
                cells += [_round(value), _round(changes.get(row.line, {}).get(n))]
        cells += [_short(row.prompt, TABLE_EXCERPT), _short(row.response, TABLE_EXCERPT)]
        if run.base.own:
            cells.append(_short(row.own_response, OWN_TABLE_EXCERPT))
        data.append(cells)
    return pd.DataFrame(data, columns=headers)


# --------------------------------------------------------------------------- wording


def _what(run: ScreenRun) -> str:
    return SCORE_LABELS[run.key]


def top_markdown(run: ScreenRun, sort_by: object) -> str:
    """The :data:`TOP_N` highest-scoring samples for the sort vector, excerpts escaped."""
    order = check_sort(run, sort_by)
    name = order.split(":", 1)[1] if ":" in order else run.base.names[0]
    rows = ordered_rows(run, f"score:{name}")[:TOP_N]
    rows = [r for r in rows if getattr(r.scores[name], run.key) is not None]
    if not rows:
        return f"No scores for **{md(name)}**: nothing to rank."
    lines = [f"**Top {len(rows)} for {md(name)}** ({md(_what(run))}, layer {run.base.layer}):"]
    for i, row in enumerate(rows, 1):
        value = getattr(row.scores[name], run.key)
        lines.append(
            f"{i}. **line {row.line}** · **{fmt(value, 2, sign=True)}** · *{md(row.prompt, 120)}* "
            f"→ {md(row.response, 220)}"
        )
    return "\n".join(lines)


def problems_markdown(result: ScreenResult) -> str:
    if not result.n_problems:
        return "No line was skipped."
    shown = result.problems[:PROBLEMS_SHOWN]
    lines = [f"**{result.n_problems:,} line(s) skipped**, the rest was scored:"]
    lines += [f"- line {p.line}: {md(p.reason, 300)}" for p in shown]
    if result.n_problems > len(shown):
        lines.append(f"- … and {result.n_problems - len(shown):,} more.")
    return "\n".join(lines)


def _own_text(result: ScreenResult) -> str:
    if not result.own:
        return "raw projections, no own answers"
    return f"own answers: {result.generated:,} generated, {result.cached:,} cached"


def status_text(run: ScreenRun) -> str:
    s, base = run.settings, run.base
    text = (
        f"Scored **{len(base.rows):,}** samples of *{md(s.source.name, 80)}* at layer "
        f"**{base.layer}** in {base.seconds:.1f} s ({_own_text(base)}; "
        f"{base.n_problems:,} line(s) skipped)."
    )
    if run.more:
        text += (
            f" The file has more: only its first {s.max_samples:,} samples were read (*Max "
            f"samples*; a run scores at most {sample_cap(s.own):,} "
            f"{'with' if s.own else 'without'} own answers). The command line "
            "(`python -m persona_explorer screen`) screens whole files."
        )
    if base.stopped or (run.inoculated is not None and run.inoculated.stopped):
        why = "at the time limit for one job" if run.timed_out else "by Stop"
        text += f" **Stopped {why}**: the results cover the samples finished before that."
    if not base.rows:
        text += " Nothing could be scored: see the skipped lines."
    return text


def inoculation_markdown(run: ScreenRun) -> str:
    inoc = run.inoculated
    if inoc is None or run.context is None:
        return NO_INOCULATION
    changes = inoculation_changes(run.base, inoc)
    lines = [
        f"**With the context** *“{md(run.context, 300)}”* ({len(inoc.rows):,} samples, "
        f"{_own_text(inoc)}, {inoc.seconds:.1f} s):"
    ]
    for name, c in changes.items():
        if not c.count:
            lines.append(f"- **{md(name)}**: no sample scored both ways.")
            continue
        lines.append(
            f"- **{md(name)}**: mean {fmt(c.mean_before, 2, sign=True)} → "
            f"{fmt(c.mean_after, 2, sign=True)} (change **{fmt(c.mean_change, 2, sign=True)}**); "
            f"the score fell for {c.fell} of {c.count} samples ({100 * c.share_fell:.0f} %)."
        )
    fell = [md(n) for n, c in changes.items() if c.count and c.mean_change < 0]
    verdict = (
        f"Here the mean score fell for {', '.join(fell)}."
        if fell
        else "Here the mean score did not fall for any vector."
    )
    closing = (
        "The Persona Selection Model predicts that explicit framing lowers the persona "
        f"evidence. {verdict}"
    )
    return "\n\n".join([lines[0], "\n".join(lines[1:]), closing])


def summary_json(run: ScreenRun) -> dict[str, Any]:
    """Every number of the run (and of the context run), for the JSON view and the API."""
    base, s = run.base, run.settings
    out: dict[str, Any] = {
        "source": s.source.name,
        "layer": base.layer,
        "score": base.score_key,
        "own_answers": base.own,
        "max_new_tokens": s.max_new_tokens if base.own else None,
        "samples": len(base.rows),
        "skipped": base.n_problems,
        "problems": [{"line": p.line, "reason": p.reason} for p in base.problems[:PROBLEMS_SHOWN]],
        "more_samples_in_file": run.more,
        "max_samples": s.max_samples,
        "stopped": base.stopped,
        "seconds": round(base.seconds, 2),
        "own_generated": base.generated,
        "own_cached": base.cached,
        "vectors": base.summary(TOP_N),
        # Each vector's length at the layer: divide a score by it for the plots' unit.
        "scales": {name: round(value, 4) for name, value in base.scales.items()},
    }
    if run.inoculated is not None:
        changes = inoculation_changes(base, run.inoculated)
        out["inoculation"] = {
            "context": run.context,
            "samples": len(run.inoculated.rows),
            "stopped": run.inoculated.stopped,
            "vectors": {
                name: {
                    "count": c.count,
                    "mean_before": None if not c.count else c.mean_before,
                    "mean_after": None if not c.count else c.mean_after,
                    "mean_change": None if not c.count else c.mean_change,
                    "fell": c.fell,
                    "share_fell": c.share_fell,
                }
                for name, c in changes.items()
            },
        }
    return out


def histogram(run: ScreenRun, n_layers: int) -> go.Figure:
    base = run.base
    return score_histograms_figure(
        scores_by_vector(base), base.score_key, base.layer, n_layers, scales=base.scales or None
    )


def inoculation_plot(run: ScreenRun, n_layers: int) -> go.Figure:
    if run.inoculated is None:
        return empty_figure("Re-score with a context to compare the distributions")
    # Only the samples scored both ways: a partial context run compares like with like.
    lines = {r.line for r in run.inoculated.rows}
    matched = ScreenResult(
        names=run.base.names,
        layer=run.base.layer,
        own=run.base.own,
        context=None,
        rows=[r for r in run.base.rows if r.line in lines],
        scales=run.base.scales,
    )
    return inoculation_figure(
        scores_by_vector(matched),
        scores_by_vector(run.inoculated),
        run.key,
        run.base.layer,
        n_layers=n_layers,
        scales=run.base.scales or None,
    )


# --------------------------------------------------------------------------- exports


def export_result(run: ScreenRun) -> tuple[ScreenResult, str | None]:
    """The result to write: with a complete context run, its scores join each row as
    ``<vector>_with_context`` columns; otherwise the run alone, and why."""
    inoc = run.inoculated
    if inoc is None:
        return run.base, None
    after = {r.line: r for r in inoc.rows}
    if any(r.line not in after for r in run.base.rows):
        return run.base, "The context run did not score every sample: only the run is written."
    names = run.base.names
    rows = [
        ScoredSample(
            line=r.line,
            prompt=r.prompt,
            response=r.response,
            own_response=r.own_response,
            response_tokens=r.response_tokens,
            scores={
                **r.scores,
                **{f"{n}_with_context": after[r.line].scores[n] for n in names},
            },
        )
        for r in run.base.rows
    ]
    merged = ScreenResult(
        names=(*names, *(f"{n}_with_context" for n in names)),
        layer=run.base.layer,
        own=run.base.own,
        context=None,
        rows=rows,
    )
    return merged, None


def write_exports(ctx: AppContext, run: ScreenRun) -> tuple[Path, Path, list[str]]:
    """The scored file as CSV and JSONL in a fresh download folder, and notes for the user."""
    result, note = export_result(run)
    notes = [note] if note else []
    src = run.settings.source
    source: Path | None = src.path if src.path.is_file() else None
    if source is None:
        notes.append("The uploaded file is gone from the server: the excerpts are written.")
    stem = slugify(src.path.stem)
    folder = ctx.exports.fresh_folder()  # pruned with the other downloads (age and count)
    paths = []
    for suffix in (".csv", ".jsonl"):
        out = folder / f"{stem}-scores{suffix}"
        paths.append(write_scores(out, result, source=source, max_bytes=src.max_bytes))
    return paths[0], paths[1], notes
