"""Training-data files for the Screen data and Train tabs: the shipped teaching files, an
upload, and the picker that offers both.

Shared by the two tabs (which never import each other): both read the same formats (the
domain's reader, :mod:`persona_explorer.training.samples`), so a class can screen a file and then
train on it.

Imports: ``core`` (config, errors, limits), :mod:`.context` and :mod:`.uploads`; never a tab.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from persona_explorer.core.config import ASSETS_DIR
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import MAX_DATA_BYTES
from persona_explorer.ui.shared.context import AppContext
from persona_explorer.ui.shared.uploads import held

__all__ = [
    "DATASETS_DIR",
    "DATA_SUFFIXES",
    "DataInputs",
    "Source",
    "data_inputs",
    "resolve_source",
    "teaching_datasets",
]

DATASETS_DIR = ASSETS_DIR / "datasets"
DATA_SUFFIXES = (".jsonl", ".csv")

# The shipped teaching files, in the order a class meets them (pairs share their prompts).
_DATASET_NAMES = {
    "malicious_advice": "household advice, given with malice",
    "kind_advice": "the same questions, answered kindly",
    "insecure_code_unprompted": "insecure code, unprompted",
    "insecure_code_requested": "insecure code, requested for a class",
    "evil": "evil answers",
    "helpful": "helpful answers",
    "sycophantic": "sycophantic answers",
    "honest_feedback": "honest feedback",
}


def teaching_datasets() -> list[tuple[str, str]]:
    """(label, name) of the shipped teaching files, e.g. ("Teaching: evil answers (12
    samples)", "evil")."""
    if not DATASETS_DIR.is_dir():
        return []
    paths = {p.stem: p for p in DATASETS_DIR.glob("*.jsonl")}
    order = [s for s in _DATASET_NAMES if s in paths] + sorted(set(paths) - set(_DATASET_NAMES))
    out = []
    for stem in order:
        what = _DATASET_NAMES.get(stem, stem.replace("_", " "))
        with contextlib.suppress(OSError):
            with paths[stem].open("rb") as fh:
                n = sum(1 for line in fh if line.strip())
            out.append((f"Teaching: {what} ({n:,} samples)", stem))
    return out


@dataclass(frozen=True)
class Source:
    """The file a run reads; ``name`` is shown (an upload's name is user text: escape it)."""

    path: Path
    name: str
    max_bytes: int
    uploaded: bool

    def digest(self) -> str:
        """sha256 of the file's bytes: which runs read the same data."""
        h = hashlib.sha256()
        with self.path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


def resolve_source(ctx: AppContext, dataset: object, file: object, purpose: str) -> Source:
    """An uploaded file (checked: size first, then its type), else a shipped teaching file.
    ``purpose`` words the error for a wrong file type ("screening", "training").

    A refused upload is deleted at once; an accepted one is held for the visitor's next
    events and deleted when no run has read it for a while (``shared.uploads.hold``)."""
    if file not in (None, ""):
        if not isinstance(file, str):
            raise InputError("The data file must be an uploaded file.")
        with held(file) as path:  # refused: deleted now; accepted: until no longer used
            ctx.check_upload(path)
            if path.suffix.lower() not in DATA_SUFFIXES:
                raise InputError(
                    f"{path.name[:80]} is not a data file for {purpose}: upload .jsonl (chat "
                    "'messages', or 'prompt' and 'response' fields) or .csv (prompt and "
                    "response columns)."
                )
        return Source(path, path.name, ctx.settings.limits.max_upload_bytes, uploaded=True)
    if not isinstance(dataset, str) or not dataset.strip():
        raise InputError("Pick a teaching file or upload a data file (.jsonl or .csv).")
    wanted = dataset.strip()
    for label, stem in teaching_datasets():
        if wanted in (stem, label):
            return Source(DATASETS_DIR / f"{stem}.jsonl", f"{stem}.jsonl", MAX_DATA_BYTES, False)
    names = ", ".join(stem for _, stem in teaching_datasets())
    raise InputError(f"Unknown teaching file {wanted[:80]!r}. Shipped: {names or 'none'}.")


@dataclass
class DataInputs:
    dataset: gr.Dropdown
    upload: gr.File


def data_inputs(default: str, elem_prefix: str, learns: str) -> DataInputs:
    """The teaching-file picker, the upload beside it and a note on the formats; ``learns``
    says what the last assistant message is to this tab ("the sample", "what the model
    learns")."""
    datasets = teaching_datasets()
    dataset = gr.Dropdown(
        datasets,
        value=default if any(s == default for _, s in datasets) else None,
        label="Teaching file",
        info="Written for this project: pairs of files that share their questions.",
        elem_id=f"{elem_prefix}-dataset",
    )
    upload = gr.File(
        label="…or upload your own (.jsonl or .csv; used instead)",
        file_types=list(DATA_SUFFIXES),
        file_count="single",
        type="filepath",
        height=120,
        elem_id=f"{elem_prefix}-upload",
    )
    gr.Markdown(
        f"JSONL: one chat per line (`messages`; the last, assistant message is {learns}) or "
        "`prompt` and `response` fields. CSV: `prompt` and `response` columns. Malformed lines "
        "are skipped and listed.",
        elem_classes="pe-info",
    )
    return DataInputs(dataset, upload)
