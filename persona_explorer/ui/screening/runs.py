"""What the Screen data tab keeps of a run (in ``gr.State``): the checked settings and the
results. Filtering, sorting, re-scoring with another context and the downloads all start from
a kept :class:`ScreenRun`; :mod:`.handlers` makes it, :mod:`.views` words it.

Imports: the domain's screening results (:mod:`persona_explorer.training.screening_scores`),
the ``PersonaVector`` type, and :mod:`persona_explorer.ui.shared.data_files`.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_explorer.training.screening_scores import ScreenResult, column_names
from persona_explorer.ui.shared.data_files import Source
from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = ["RunSettings", "ScreenRun", "kept_run"]


@dataclass(frozen=True)
class RunSettings:
    """A run's checked settings, kept with its result so a re-score reads the same samples."""

    source: Source
    vectors: tuple[PersonaVector, ...]
    layer: int
    own: bool
    max_new_tokens: int
    max_samples: int

    @property
    def names(self) -> tuple[str, ...]:
        return column_names(self.vectors)


@dataclass
class ScreenRun:
    """What the tab keeps of a run (in ``gr.State``): everything shown is made from it."""

    settings: RunSettings
    base: ScreenResult
    more: bool  # the file had samples beyond the cap
    timed_out: bool = False
    context: str | None = None
    inoculated: ScreenResult | None = None

    @property
    def key(self) -> str:
        return self.base.score_key


def kept_run(value: object) -> ScreenRun | None:
    """The run in the tab's state; the state only ever holds what the handlers put there, so
    anything else (a forged API value) is no run."""
    return value if isinstance(value, ScreenRun) else None
