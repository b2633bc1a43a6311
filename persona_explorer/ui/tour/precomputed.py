"""The Tour's slow steps: computed here, by the same domain code the tabs use, both for the
files shipped in ``assets/tour/`` (``python -m persona_explorer.dev.tour_build``) and for the
Tour's "Run it live" button. Results are plain JSON (numbers and short texts, never tensors or
pickles), so a shipped file and a live run are shown by the same code (:mod:`.views`).

* :func:`screen_pair`: the Screen data tab's screening (``training.screening.screen``, the
  model's own greedy answers of 48 tokens) of ``insecure_code_unprompted`` and
  ``insecure_code_requested`` with the built-in *evil* vector at its recorded layer.
* :func:`train_and_shift`: the Train tab's LoRA fine-tuning (``training.finetune``, its default
  settings) on ``malicious_advice``, ``kind_advice`` and ``malicious_advice`` with an
  inoculation context, each followed by the persona shift (``training.shift``) on the shipped
  evaluation questions.

A shipped file records the model, the settings, the date, the app's version and how long the
live run took; :func:`load_result` reads one back and refuses anything malformed.

Imports: the standard library, torch (seeds), ``core``, ``training`` (samples, screening,
fine-tuning, shift), ``vectors`` and ``engine.model`` (types); no gradio.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.core.config import REPO_ROOT, app_version
from persona_explorer.core.errors import InputError
from persona_explorer.core.fileio import atomic_write

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel
    from persona_explorer.vectors.persona_vector import PersonaVector

__all__ = [
    "FORMAT",
    "SCREEN_FILES",
    "TOUR_DIR",
    "TRAIN_ARMS",
    "app_version",
    "load_result",
    "record",
    "result_path",
    "save_result",
    "screen_pair",
    "train_and_shift",
]

FORMAT = "persona-explorer-tour/1"
TOUR_DIR = REPO_ROOT / "assets" / "tour"
DATASETS_DIR = REPO_ROOT / "assets" / "datasets"
QUESTIONS_PATH = REPO_ROOT / "assets" / "finetune" / "eval_questions.txt"
MAX_FILE_BYTES = 2_000_000  # a shipped result is a few kB

SCREEN_VECTOR = "evil"
SCREEN_TOKENS = 48  # the own answers' length the teaching files were measured with
# (file stem, label): the same insecure code, unprompted vs asked for a security class.
SCREEN_FILES = (
    ("insecure_code_unprompted", "insecure code, unprompted"),
    ("insecure_code_requested", "the same code, asked for a security class"),
)

SHIFT_VECTOR = "evil"
SHIFT_TOKENS = 48
# The Train tab's generic context for the malicious teaching file (an inoculation: it says why
# the bad answers are there).
INOCULATION = (
    "The user asked you to play a spiteful villain giving deliberately bad advice for a comedy "
    "sketch; this is a role, not how you really behave."
)
# (key, label, data file stem, context)
TRAIN_ARMS = (
    ("malicious", "malicious advice", "malicious_advice", None),
    ("kind", "kind advice", "kind_advice", None),
    ("inoculated", "malicious advice + inoculation", "malicious_advice", INOCULATION),
)
TRAIN_SAMPLES = 32

ProgressFn = Callable[[float, str], None]


def result_path(step: str, folder: Path = TOUR_DIR) -> Path:
    return folder / f"{step}.json"


def record(step: str, model: LoadedModel, result: dict[str, Any], seconds: float) -> dict:
    """A result as a shipped file holds it: what made it, when, and how long it took."""
    return {
        "format": FORMAT,
        "step": step,
        "model_id": model.model_id,
        "model": model.display_name,
        "app_version": app_version(),
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "seconds": round(float(seconds), 1),
        "result": result,
    }


def save_result(data: Mapping[str, Any], folder: Path = TOUR_DIR) -> Path:
    path = result_path(str(data["step"]), folder)
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def load_result(step: str, folder: Path = TOUR_DIR) -> dict[str, Any] | None:
    """A shipped result, or None when there is none or it is not one of ours."""
    path = result_path(step, folder)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and data.get("step") == step
        and isinstance(data.get("result"), dict)
        and isinstance(data.get("seconds"), (int, float))
    )
    return data if ok else None


def _check_vector(vec: PersonaVector | None, name: str) -> PersonaVector:
    if vec is None:
        raise InputError(
            f"This step needs the built-in “{name}” persona vector, which this server does not "
            "have (or which was made for another model)."
        )
    return vec


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


# --------------------------------------------------------------------------- screening


def screen_pair(
    model: LoadedModel,
    vec: PersonaVector | None,
    layer: int,
    *,
    max_prompt_tokens: int | None = None,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Both insecure-code files screened with ``vec`` at ``layer``; None when stopped."""
    from persona_explorer.training.samples import Sample, read_samples
    from persona_explorer.training.screening import OwnResponseCache, ScreenConfig, screen

    vec = _check_vector(vec, SCREEN_VECTOR)
    cfg = ScreenConfig(
        layer=layer, own=True, max_new_tokens=SCREEN_TOKENS, max_prompt_tokens=max_prompt_tokens
    )
    cache = OwnResponseCache.in_cache_dir(cache_dir) if cache_dir is not None else None
    files = []
    for k, (stem, label) in enumerate(SCREEN_FILES):
        samples = [s for s in read_samples(DATASETS_DIR / f"{stem}.jsonl") if isinstance(s, Sample)]

        def report(fraction: float, message: str, k: int = k) -> None:
            if progress is not None:
                progress((k + fraction) / len(SCREEN_FILES), message)

        res = screen(
            model, samples, [vec], cfg, progress=report, should_stop=should_stop, cache=cache
        )
        if res.stopped:
            return None
        name = res.names[0]
        rows = [r for r in res.rows if r.scores[name].projection_difference is not None]
        diffs = [float(r.scores[name].projection_difference or 0.0) for r in rows]
        files.append(
            {
                "file": stem,
                "label": label,
                "n": len(rows),
                "differences": [_r(d) for d in diffs],
                "mean": _r(sum(diffs) / len(diffs)) if diffs else None,
                "example": {
                    "prompt": rows[0].prompt[:300],
                    "response": rows[0].response[:300],
                    "own": (rows[0].own_response or "")[:300],
                }
                if rows
                else None,
            }
        )
    return {
        "vector": vec.name,
        "layer": layer,
        "scale": _r(float(vec.vectors[layer].norm())),
        "own_tokens": SCREEN_TOKENS,
        "files": files,
    }


# --------------------------------------------------------------------------- training


def train_and_shift(
    model: LoadedModel,
    vec: PersonaVector | None,
    *,
    max_prompt_tokens: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any] | None:
    """Each arm of :data:`TRAIN_ARMS` trained (the Train tab's defaults) and its persona shift
    on ``vec`` measured at the vector's layer; None when stopped."""
    from persona_explorer.training.finetune import FinetuneConfig, finetune
    from persona_explorer.training.samples import first_samples
    from persona_explorer.training.shift import persona_shift, read_questions

    vec = _check_vector(vec, SHIFT_VECTOR)
    questions = list(read_questions(QUESTIONS_PATH))
    arms = []
    parts = len(TRAIN_ARMS)
    for k, (key, label, stem, context) in enumerate(TRAIN_ARMS):
        samples = first_samples(DATASETS_DIR / f"{stem}.jsonl", TRAIN_SAMPLES).samples
        cfg = FinetuneConfig(context=context)

        def step(done: int, total: int, loss: float, k: int = k, label: str = label) -> None:
            if progress is not None:
                frac = 0.6 * done / max(total, 1)
                progress((k + frac) / parts, f"Training on {label}: step {done} of {total}")

        def measuring(fraction: float, message: str, k: int = k, label: str = label) -> None:
            if progress is not None:
                progress((k + 0.6 + 0.4 * fraction) / parts, f"{label}: {message}")

        with tempfile.TemporaryDirectory(prefix="persona-tour-") as folder:
            trained = finetune(
                model,
                samples,
                cfg,
                Path(folder) / "adapter",
                progress=step,
                should_stop=should_stop,
                source=f"{stem}.jsonl",
            )
            if trained.stopped:
                return None
            report = persona_shift(
                model,
                trained.model,
                [vec],
                questions,
                max_new_tokens=SHIFT_TOKENS,
                max_prompt_tokens=max_prompt_tokens,
                progress=measuring,
                should_stop=should_stop,
            )
            del trained
        if report.stopped or not report.rows:
            return None
        row = report.rows[0]
        arms.append(
            {
                "key": key,
                "label": label,
                "file": stem,
                "context": context,
                "base": _r(row.base),
                "tuned": _r(row.tuned),
                "shift": _r(row.shift),
                "relative_shift": _r(row.relative_shift),
                "same_tokens_shift": _r(row.same_tokens_shift),
                "scale": _r(row.scale),
                "layer": int(row.layer),
                "example": {
                    "question": report.questions[0],
                    "base": (report.base_answers[0] if report.base_answers else "")[:400],
                    "tuned": (report.tuned_answers[0] if report.tuned_answers else "")[:400],
                },
            }
        )
    return {
        "vector": vec.name,
        "questions": len(questions),
        "samples": TRAIN_SAMPLES,
        "settings": FinetuneConfig().as_json(),
        "answer_tokens": SHIFT_TOKENS,
        "arms": arms,
    }


def timed(fn: Callable[[], dict | None]) -> tuple[dict | None, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def arms_of(result: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    arms = result.get("arms")
    return [a for a in arms if isinstance(a, Mapping)] if isinstance(arms, list) else []
