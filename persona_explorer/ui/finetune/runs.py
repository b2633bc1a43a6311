"""What the Train tab keeps of its runs, in the session's ``gr.State``: numbers and names,
never a model (:class:`TrainRun`), and what one shift measurement holds (:class:`Measured`,
with screening's :class:`Prediction`).

Imports: the domain's shift report type (``training.shift``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_explorer.training.shift import ShiftReport

__all__ = [
    "MAX_RUNS",
    "Measured",
    "Prediction",
    "TrainRun",
    "adapter_choices",
    "companion",
    "kept_runs",
    "uploaded_run",
]

MAX_RUNS = 6  # runs one session keeps in its state (and lists in the adapter picker)


@dataclass(frozen=True)
class TrainRun:
    """What the session keeps of one training run (in ``gr.State``): numbers and names only."""

    adapter: str
    number: int  # 1, 2, ... within the session
    dataset: str  # the file's name (an upload's is user text)
    path: Path
    digest: str
    n_samples: int
    n_problems: int
    context: str | None
    steer: str | None  # "evil at layer 20, strength 4", or None
    epochs: int
    steps: int
    losses: tuple[float, ...]
    epoch_losses: tuple[float, ...]
    seconds: float
    stopped: bool
    timed_out: bool
    more: bool = False  # the file had more samples than were used
    settings: dict = field(default_factory=dict, compare=False)
    seed: int | None = None  # None: not recorded (an uploaded plain peft adapter)
    uploaded: str | None = None  # the uploaded zip's name (user text), for an uploaded adapter

    @property
    def data_key(self) -> tuple[str, int]:
        return (self.digest, self.n_samples)

    @property
    def framing(self) -> str:
        parts = []
        if self.context:
            parts.append("with context")
        if self.steer:
            parts.append("preventive steering")
        return ", ".join(parts) or "plain"

    @property
    def label(self) -> str:
        name = self.dataset if len(self.dataset) <= 40 else self.dataset[:39] + "…"
        seed = f" · seed {self.seed}" if self.seed is not None else ""
        if self.uploaded is not None:
            file = self.uploaded if len(self.uploaded) <= 40 else self.uploaded[:39] + "…"
            return f"#{self.number} uploaded {file} · {name} · {self.framing}{seed}"
        return (
            f"#{self.number} {name} · {self.n_samples} samples · {self.epochs} epoch"
            f"{'s' if self.epochs != 1 else ''} · {self.framing}{seed}"
        )


def kept_runs(value: object) -> tuple[TrainRun, ...]:
    # The state only ever holds what the handlers put there; anything else is no run.
    if isinstance(value, tuple) and all(isinstance(r, TrainRun) for r in value):
        return value
    return ()


def adapter_choices(runs: Sequence[TrainRun]) -> list[tuple[str, str]]:
    return [(r.label, r.adapter) for r in reversed(runs)]


def companion(runs: Sequence[TrainRun], run: TrainRun) -> TrainRun | None:
    """The session's latest other run on the same data with another framing (context or
    preventive steering), to compare with."""
    for other in reversed(runs):
        if other.adapter == run.adapter or other.data_key != run.data_key:
            continue
        if (other.context is None) != (run.context is None) or (other.steer is None) != (
            run.steer is None
        ):
            return other
    return None


@dataclass(frozen=True)
class Prediction:
    """Screening's mean projection difference per vector name, or why there is none."""

    values: dict[str, float]
    note: str = ""


@dataclass(frozen=True)
class Measured:
    """One measurement: this run's report, and its companion's when there is one."""

    run: TrainRun
    report: ShiftReport
    other: TrainRun | None = None
    other_report: ShiftReport | None = None
    prediction: Prediction | None = None
    # The wall time the visitor waited for all of it (models loaded, companion measured,
    # screening's prediction); None: the report's own time.
    seconds: float | None = None
    # What the downloads record of how it was measured: each vector (name, model, layer) and
    # the measurement's settings as asked (questions, layer choice, tokens, prediction).
    vectors: tuple[dict[str, Any], ...] = ()
    asked: dict[str, Any] = field(default_factory=dict)


def _settings_part(settings: dict, key: str) -> dict:
    part = settings.get(key)
    return part if isinstance(part, dict) else {}


def uploaded_run(
    adapter: str,
    number: int,
    file_name: str,
    settings: dict | None,
    weights_sha256: str,
) -> TrainRun:
    """What the session keeps of an uploaded adapter: its record's numbers where it has one
    (already cleaned by ``training.adapter_io``), so that it is measured like a run trained
    here. It has no training file on the server (no screening prediction)."""
    record = settings or {}
    config, data = _settings_part(record, "config"), _settings_part(record, "data")
    steer = _settings_part(config, "steer")
    losses = tuple(float(x) for x in record.get("losses", ()))
    digest = data.get("sha256")
    return TrainRun(
        adapter=adapter,
        number=number,
        dataset=str(data.get("source") or "unknown data"),
        path=Path(),  # no training file here
        # The record's data hash: an upload trained on the same data as one of this session's
        # runs (with another framing) is compared with it.
        digest=digest if isinstance(digest, str) else f"upload:{weights_sha256}",
        n_samples=int(data.get("n_samples", 0)),
        n_problems=int(data.get("skipped", 0)),
        context=config.get("context") or None,
        steer=(
            f"{steer.get('vector', '?')} at layer {steer.get('layer', '?')}, strength "
            f"{steer.get('strength', '?')}"
            if steer
            else None
        ),
        epochs=int(config.get("epochs", 0)),
        steps=int(record.get("steps", len(losses))),
        losses=losses,
        epoch_losses=tuple(float(x) for x in record.get("epoch_losses", ())),
        seconds=float(record.get("seconds", 0.0)),
        stopped=bool(record.get("stopped", False)),
        timed_out=False,
        settings=dict(record),
        seed=record.get("seed", config.get("seed")),
        uploaded=file_name,
    )
