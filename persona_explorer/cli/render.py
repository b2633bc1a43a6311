"""Everything the command line writes: results on stdout, progress, notes and warnings on stderr.

Commands call these instead of ``print`` so that stdout holds only the result (a table, the
answers, or JSON with ``--json``) and can be piped, while everything about the run goes to
stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

# How often progress may be redrawn when stderr is a log file, not a terminal: tqdm rewrites
# its line with "\r", which a log keeps as one ever-growing line, so it should rarely do it.
_LOG_INTERVAL_S = 60.0
_STEPS = 1000  # progress resolution: tqdm counts integers, the engine reports fractions


def _unicode_ok(stream: TextIO) -> bool:
    enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return enc.startswith("utf")


def sparkline(values: Sequence[float], lo: float | None = None, hi: float | None = None) -> str:
    """One character per value, scaled between lo and hi (default: the values' range)."""
    chars = "▁▂▃▄▅▆▇█" if _unicode_ok(sys.stdout) else " .:-=+*#"
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    if span <= 1e-12:
        return chars[len(chars) // 2] * len(values)
    top = len(chars) - 1
    return "".join(chars[max(0, min(top, round((v - lo) / span * top)))] for v in values)


def top(values: Sequence[float], k: int = 3) -> str:
    """The k largest values with their layers: ``L5 2.10, L4 1.90, ...``."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:k]
    return ", ".join(f"L{i} {values[i]:.2f}" for i in order)


def rows_of(values: Sequence[float], per_row: int = 10, fmt: str = "{:.3g}") -> list[str]:
    """Per-layer values, ``per_row`` to a line, each line labelled with its layer range."""
    lines = []
    for start in range(0, len(values), per_row):
        chunk = values[start : start + per_row]
        end = start + len(chunk) - 1
        label = f"L{start}-{end}"
        lines.append(f"{label:>9}: " + " ".join(fmt.format(v) for v in chunk))
    return lines


def optional(value: Any) -> str:
    """A value that may be missing, as a table shows it."""
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(rows: Iterable[tuple[str, str]]) -> list[str]:
    """Key/value rows with the values aligned."""
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def write_lines(text_lines: Iterable[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in text_lines))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def status(message: str, quiet: bool = False) -> None:
    """What the command is doing (loading a model, ...); hidden by ``--quiet``."""
    if not quiet:
        _stderr_line(message)


def note(message: str) -> None:
    """Something the user should know about the result (e.g. what a format dropped)."""
    _stderr_line(f"note: {message}")


def warning(message: str) -> None:
    """Something that may be wrong (e.g. a guessed file layout); never hidden."""
    _stderr_line(f"warning: {message}")


class Progress:
    """The engine's ``progress(fraction, message)`` callback as a tqdm bar on stderr.

    On a terminal it is one line redrawn in place; written to a log it redraws at most every
    ``_LOG_INTERVAL_S`` seconds. Use it as a context manager so the line is always finished.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        stream = sys.stderr if stream is None else stream
        tty = bool(getattr(stream, "isatty", lambda: False)())
        interval = 0.1 if tty else _LOG_INTERVAL_S
        self._bar = tqdm(
            total=_STEPS,
            file=stream,
            disable=quiet,
            mininterval=interval,
            # tqdm's monitor thread would otherwise redraw a stalled bar every 10 s.
            maxinterval=max(interval, 10.0),
            ascii=not _unicode_ok(stream),
            dynamic_ncols=tty,
            bar_format="{percentage:3.0f}%|{bar:24}| {desc} [{elapsed}<{remaining}]",
            leave=True,
        )

    def __call__(self, fraction: float, message: str) -> None:
        step = max(0, min(_STEPS, round(float(fraction) * _STEPS)))
        self._bar.set_description_str(message, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
