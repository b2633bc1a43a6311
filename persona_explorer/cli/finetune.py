"""``finetune``: train a LoRA adapter on a chat dataset
(see :mod:`persona_explorer.training.finetune`).

Writes the adapter directory (peft's files plus ``persona_finetune.json``); the loss per step is
shown on stderr while it trains. ``shift --adapter DIR`` then measures the persona shift, and
``steer``/``screen --adapter DIR`` run on the tuned model.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_explorer.cli import render, vector_io
from persona_explorer.cli.models import get_model
from persona_explorer.cli.options import Parents, arg_type, strength_type, text_type
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_finite, check_int, check_seed

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers
    from persona_explorer.training.finetune import FinetuneResult

_NOTES_SHOWN = 20


def register(subparsers: Subparsers, parents: Parents) -> None:
    # Upper bounds are FinetuneConfig's (MAX_FINETUNE_* in core.limits: one rule, one message);
    # the types check the form.
    p = subparsers.add_parser(
        "finetune",
        parents=[parents.model(), parents.output("the result")],
        help="fine-tune the model with LoRA on a chat dataset and save the adapter",
        description="Train a LoRA adapter (peft) on the assistant tokens of a dataset (JSONL "
        "chat 'messages' or prompt/response JSONL/CSV) and save it to a new directory.",
    )
    p.add_argument("--data", required=True, help="training data: JSONL or CSV")
    p.add_argument("--out", required=True, metavar="DIR", help="new adapter directory")
    p.add_argument(
        "--context",
        type=text_type("context", parents.limits, required=False),
        default=None,
        help="system prompt put before every training sample (inoculation)",
    )
    p.add_argument(
        "--epochs", type=arg_type(check_int, "Epochs", 1), default=2, help="(default: 2)"
    )
    p.add_argument(
        "--lr", type=arg_type(check_finite, "Learning rate"), default=None, help="(default: 1e-3)"
    )
    p.add_argument(
        "--rank", type=arg_type(check_int, "LoRA rank", 1), default=8, help="(default: 8)"
    )
    p.add_argument(
        "--alpha",
        type=arg_type(check_int, "LoRA alpha", 1),
        default=None,
        help="(default: 2 x rank)",
    )
    p.add_argument(
        "--target-modules",
        default=None,
        metavar="A,B",
        help="modules to adapt, e.g. q_proj,v_proj (default: every attention and MLP projection)",
    )
    p.add_argument(
        "--max-tokens",
        type=arg_type(check_int, "Max tokens per sample", 1),
        default=128,
        help="tokens per sample (prompt + response); longer samples are cut (default: 128)",
    )
    p.add_argument("--batch-size", type=arg_type(check_int, "Batch size", 1), default=8)
    p.add_argument("--seed", type=arg_type(check_seed), default=0)
    group = p.add_argument_group("preventive steering (during training only)")
    group.add_argument("--steer-vector", default=None, help="vector file or built-in name")
    group.add_argument(
        "--steer-layer",
        type=arg_type(check_int, "Layer", 0),
        default=None,
        help="(default: the vector's)",
    )
    group.add_argument(
        "--steer-strength",
        type=strength_type(parents.limits),
        default=None,
        help="(default: the vector's recommended strength)",
    )
    p.set_defaults(func=run)


def _steer(args: argparse.Namespace, n_layers: int | None = None) -> Any:
    from persona_explorer.training.finetune import PreventiveSteer

    if args.steer_vector is None:
        given = [o for o in ("steer_layer", "steer_strength") if getattr(args, o) is not None]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --steer-vector")
        return None
    vec = vector_io.read(
        vector_io.vector_path(args.steer_vector, args.settings.builtin_vectors_dir),
        None,
        n_layers,
        warn=False,
    )
    layer = args.steer_layer if args.steer_layer is not None else vec.layer
    strength = args.steer_strength if args.steer_strength is not None else vec.strength
    if layer is None or strength is None:
        raise InputError(f"{vec.name!r} records no layer or strength: give --steer-layer/strength")
    return PreventiveSteer(vec, layer, strength)


def _summary(result: FinetuneResult) -> dict[str, Any]:
    return {
        "adapter_dir": str(result.adapter_dir),
        "model_id": result.model.model_id,
        "samples": result.n_samples,
        "skipped": len(result.problems),
        "problems": [{"line": p.line, "reason": p.reason} for p in result.problems],
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "losses": [round(x, 5) for x in result.losses],
        "epoch_losses": [round(x, 5) for x in result.epoch_losses],
        "stopped": result.stopped,
        "settings": result.settings["config"],
    }


def run(args: argparse.Namespace) -> int:
    from persona_explorer.training.finetune import FinetuneConfig, finetune, read_training_data

    data = Path(args.data).expanduser()
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not empty: pick a new directory")
    targets = None
    if args.target_modules is not None:
        targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    options: dict[str, Any] = {} if args.lr is None else {"lr": args.lr}
    # Everything that can fail fast does so before the (slow) model load.
    samples, problems = read_training_data(data)
    _steer(args)
    cfg = FinetuneConfig(
        epochs=args.epochs,
        rank=args.rank,
        alpha=args.alpha,
        target_modules=targets,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        context=args.context or None,
        **options,
    )
    model = get_model(args)
    steer = _steer(args, model.n_layers)
    if steer is not None:
        cfg = dataclasses.replace(cfg, steer=steer)
    with render.Progress(quiet=args.quiet) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar(step / total, f"step {step}/{total}, loss {loss:.3f}")

        result = finetune(
            model, samples, cfg, out, progress=progress, problems=problems, source=data.name
        )
    for problem in result.problems[:_NOTES_SHOWN]:
        render.note(f"{problem}; skipped")
    if len(result.problems) > _NOTES_SHOWN:
        render.note(f"{len(result.problems) - _NOTES_SHOWN:,} more lines skipped")
    summary = _summary(result)
    if args.json:
        render.print_json(summary)
        return 0
    losses = result.epoch_losses
    render.write_lines(
        [
            f"Fine-tuned {model.display_name} on {result.n_samples} samples of {data.name}: "
            f"{result.steps} steps in {result.seconds:.1f} s"
            + (" - stopped early" if result.stopped else ""),
            "  loss per epoch: " + ", ".join(f"{x:.3f}" for x in losses),
            f"  loss per step:  {render.sparkline(result.losses)}",
            f"  saved {result.adapter_dir}",
            f"  next: python -m persona_explorer shift --adapter {result.adapter_dir} "
            "--vector evil",
        ]
    )
    return 0
