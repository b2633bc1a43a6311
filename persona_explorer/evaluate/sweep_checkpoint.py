"""Sweep checkpoints: the finished answers of a sweep, kept so a stopped one resumes.

Each finished batch of rows is appended to a JSON-lines file in ``cache_dir/sweeps`` (the
caller's folder) whose first line is the key: everything that decides the outputs (the model's
identity and weights, the vector, the prompts, the decoding settings). A sweep run again with the
same inputs reads back the rows it has and runs only the rest; a finished one returns at once.
At most :data:`MAX_CHECKPOINTS` files are kept, the least recently used going first.

Imports: the standard library, ``core.fileio``, ``engine.identity`` (the model's identity and
weight digest), :mod:`.sweep_config` and :mod:`.sweep_result`; ``engine.model`` and ``vectors``
for types only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.core.fileio import is_temp_name
from persona_explorer.engine.identity import model_identity, weights_digest
from persona_explorer.evaluate.sweep_config import SweepConfig
from persona_explorer.evaluate.sweep_result import RowResult

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = ["CHECKPOINT_FORMAT", "MAX_CHECKPOINTS", "SweepCheckpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "persona-explorer-sweep/1"
MAX_CHECKPOINTS = 100


class SweepCheckpoint:
    """Finished rows of one sweep, appended as JSON lines; read back only if the header (the
    full key) matches. A damaged line ends the read: what follows it is run again."""

    def __init__(self, path: Path | None, key: dict[str, Any], vocab: int) -> None:
        self.path = path
        self.key = key
        self.vocab = vocab

    @staticmethod
    def key_for(
        model: LoadedModel, vec: PersonaVector, prompts: Sequence[str], cfg: SweepConfig
    ) -> dict[str, Any]:
        v = hashlib.sha256(vec.vectors.numpy().tobytes()).hexdigest()
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model_identity(model),
            "weights": weights_digest(model),
            "dtype": str(model.dtype),
            "vector": v,
            "prompts": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(),
            "system": cfg.system,
            "positions": cfg.positions,
            "max_new_tokens": cfg.max_new_tokens,
            "read_layer": cfg.read_layer,
            "temperature": cfg.temperature,
            "frequency_penalty": cfg.frequency_penalty,
            "seed": cfg.seed,
        }

    @classmethod
    def open(
        cls,
        directory: Path | None,
        model: LoadedModel,
        vec: PersonaVector,
        prompts: Sequence[str],
        *,
        cfg: SweepConfig,
    ) -> SweepCheckpoint:
        """The checkpoint of this sweep in ``directory`` (None: no file, nothing resumed)."""
        key = cls.key_for(model, vec, prompts, cfg)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        vocab = int(model.hf_model.config.vocab_size)
        return cls(None if directory is None else directory / f"{name}.jsonl", key, vocab)

    def load(self) -> list[RowResult]:
        if self.path is None or not self.path.is_file():
            return []
        rows: list[RowResult] = []
        try:
            with self.path.open("rb") as fh:
                header = json.loads(fh.readline())
                if header != self.key:
                    return []
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # a write cut short by a crash
                    rows.append(RowResult.from_json(json.loads(line), self.vocab))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("sweep checkpoint %s: read %d rows, then %s", self.path, len(rows), exc)
        os.utime(self.path)  # recently used: the last to be evicted
        return rows

    def start(self, rows: Sequence[RowResult]) -> None:
        """Rewrite the file with the header and the rows kept (drops a damaged tail)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._evict()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.key) + "\n")
            for r in rows:
                fh.write(json.dumps(r.as_json()) + "\n")
        os.replace(tmp, self.path)

    def append(self, rows: Sequence[RowResult]) -> None:
        if self.path is None or not rows:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r.as_json()) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())

    def _evict(self) -> None:
        assert self.path is not None
        files = [
            p
            for p in self.path.parent.glob("*.jsonl")
            if p != self.path and not is_temp_name(p.name)
        ]
        if len(files) < MAX_CHECKPOINTS:
            return
        files.sort(key=lambda p: p.stat().st_mtime)
        for p in files[: len(files) - MAX_CHECKPOINTS + 1]:
            p.unlink(missing_ok=True)
