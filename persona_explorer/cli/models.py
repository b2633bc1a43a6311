"""The model a command runs on, loaded once per process.

Several :func:`~persona_explorer.cli.main` calls in one process (tests, notebooks) share
:data:`_MODELS`, so the model loads once. A command that offers ``--adapter DIR``
(:func:`add_adapter_option`) gets the base model with that LoRA adapter merged
(:func:`persona_explorer.training.adapters.load_tuned`), cached in :data:`_TUNED` the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render

if TYPE_CHECKING:
    from persona_explorer.engine.model import LoadedModel

# Keyed by (resolved model spec, device, dtype).
_MODELS: dict[tuple[str, str, str], LoadedModel] = {}
# Tuned models, keyed by (base model id, adapter directory, its weights' mtime).
_TUNED: dict[tuple[str, str, int], LoadedModel] = {}


def looks_like_path(spec: str) -> bool:
    """Whether a name given by the user is meant as a file or directory, not an id or name."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """Hide transformers' own progress bars ("Loading weights") under --quiet."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def add_adapter_option(parser: argparse.ArgumentParser) -> None:
    """``--adapter DIR``: run the command on the base model with a saved LoRA adapter merged."""
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="a LoRA adapter directory written by finetune: run on the tuned model",
    )


def get_model(args: argparse.Namespace) -> LoadedModel:
    """The model for ``--model --device --dtype`` (and ``--adapter``, where the command has
    it), loaded once per process."""
    base = get_base_model(args)
    adapter = getattr(args, "adapter", None)
    return base if adapter is None else get_tuned(base, adapter, args.quiet)


def get_tuned(base: LoadedModel, adapter: str, quiet: bool) -> LoadedModel:
    """``base`` with the adapter in ``adapter`` merged, built once per process and directory."""
    from persona_explorer.training.adapters import ADAPTER_WEIGHTS, load_tuned

    path = Path(adapter).expanduser().resolve()
    weights = path / ADAPTER_WEIGHTS
    # Keyed by the weights' mtime too: an adapter directory may be trained again.
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    key = (base.model_id, str(path), stamp)
    if key not in _TUNED:
        started = time.perf_counter()
        render.status(f"Loading the adapter {path.name} ...", quiet)
        _TUNED[key] = load_tuned(base, path)
        render.status(
            f"Merged {path.name} into {base.display_name} in {time.perf_counter() - started:.1f} s",
            quiet,
        )
    return _TUNED[key]


def get_base_model(args: argparse.Namespace) -> LoadedModel:
    """The model for the ``--model --device --dtype`` options, loaded once per process."""
    from persona_explorer.engine.model import ModelLoadError, load_model, resolve_model_spec

    settings = args.settings
    spec = resolve_model_spec(args.model, settings.model)
    if (
        args.model
        and looks_like_path(spec)
        and os.sep == "/"
        and not Path(spec).expanduser().exists()
    ):
        raise ModelLoadError(
            f"no such model directory: {spec} (give a local checkpoint directory or an HF id)"
        )
    key = (spec, args.device, args.dtype)
    if key not in _MODELS:
        started = time.perf_counter()

        def progress(_fraction: float, message: str) -> None:
            if not message.startswith("Loaded "):
                render.status(message + " ...", args.quiet)

        with _quiet_transformers(args.quiet):
            model = load_model(
                spec, device=args.device, dtype=args.dtype, progress=progress, settings=settings
            )
        render.status(
            f"Loaded {model.display_name} ({model.n_layers} layers, d_model {model.d_model}, "
            f"{model.device}, {str(model.dtype).removeprefix('torch.')}) "
            f"in {time.perf_counter() - started:.1f} s",
            args.quiet,
        )
        _MODELS[key] = model
    return _MODELS[key]
