"""``axis project``: a conversation's assistant turns, teacher-forced, projected onto the axis.
``axis replays``: recompute the shipped replays of the ``persona_drift`` transcripts (the span
means the Drift tab and ``axis project`` read instead of running the model again).

Both are registered by :func:`.axis.register` (one ``axis`` command, several subcommands)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import render
from persona_explorer.cli.models import get_model
from persona_explorer.cli.options import Parents, arg_type
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import check_int

if TYPE_CHECKING:
    from persona_explorer.axis.conversation import Conversation
    from persona_explorer.cli.options import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    from persona_explorer.axis.windows import DEFAULT_WINDOW_TOKENS
    from persona_explorer.core.limits import MAX_WINDOW_TOKENS, MIN_WINDOW_TOKENS

    window = arg_type(check_int, "Window", MIN_WINDOW_TOKENS, MAX_WINDOW_TOKENS)
    p = sub.add_parser(
        "project",
        parents=[parents.model(), parents.output("every turn")],
        help="project each assistant turn of a conversation onto the axis",
        description="Feed a conversation through the model teacher-forced and print, per "
        "assistant turn, the mean activation's projection onto the Assistant Axis (raw, and "
        "normalised: 0 = the roles' mean, 1 = the default Assistant). A shipped replay or a "
        "cached one is used when it fits (the first line says which).",
    )
    p.add_argument(
        "--transcript",
        required=True,
        metavar="FILE",
        help='a conversation JSON file ({"conversation": [{"role", "content"}, ...]} or a '
        "list of messages), or a shipped transcript such as persona_drift/therapy",
    )
    p.add_argument(
        "--layer",
        type=arg_type(check_int, "Layer", 0),
        default=None,
        metavar="L",
        help="the layer reported (default: the middle of the stack)",
    )
    p.add_argument(
        "--window-tokens",
        type=window,
        default=DEFAULT_WINDOW_TOKENS,
        metavar="N",
        help="read each turn with the most recent turns that fit in N tokens "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="read the conversation now: neither the shipped replays nor the cache are used "
        "or written",
    )
    p.set_defaults(func=run_project)
    r = sub.add_parser(
        "replays",
        parents=[parents.model(), parents.output("what was written")],
        help="recompute the shipped replays of the persona_drift transcripts",
        description="Replay every persona_drift transcript through the embedded model "
        "(minutes on a CPU) and write its per-turn span means to assets/transcripts/replays, "
        "where the Drift tab and 'axis project' find them.",
    )
    r.add_argument("--out", default=None, metavar="DIR", help="another folder to write to")
    r.add_argument(
        "--window-tokens",
        type=window,
        default=DEFAULT_WINDOW_TOKENS,
        metavar="N",
        help="the window the replays are read at (default: %(default)s)",
    )
    r.set_defaults(func=run_replays)


def _transcript(spec: str) -> Conversation:
    from persona_explorer.axis.conversation import (
        load_conversation,
        shipped_transcript,
        shipped_transcripts,
    )

    path = Path(spec)
    if not path.exists() and spec.removesuffix(".json") in {k for _, k in shipped_transcripts()}:
        return shipped_transcript(spec.removesuffix(".json"))
    return load_conversation(path)


def run_project(args: argparse.Namespace) -> int:
    from persona_explorer.axis.assistant_axis import default_axis_layer
    from persona_explorer.axis.build import axis_for
    from persona_explorer.axis.drift import replay
    from persona_explorer.axis.replays import ReplayStore
    from persona_explorer.core.limits import check_layer

    conv = _transcript(args.transcript)  # a bad file fails before the model loads
    model = get_model(args)
    layer = (
        default_axis_layer(model.n_layers)
        if args.layer is None
        else check_layer(args.layer, model.n_layers)
    )
    cache_dir = args.settings.cache_dir
    store = None if args.no_cache else ReplayStore(cache_dir / "replays")
    with render.Progress(args.quiet) as progress:
        axis = axis_for(model, cache_dir, progress)
        result = replay(
            model, axis, conv, window_tokens=args.window_tokens, progress=progress, store=store
        )
    for note in result.notes():
        render.note(note)
    if args.json:
        out = result.as_json(layer)
        out["model_id"] = model.model_id
        render.print_json(out)
        return 0
    lines = [
        f"{result.label}: {len(result.turns)} assistant turns at layer {layer} "
        f"({result.source}, {result.seconds:.1f} s; normalised: 0 = roles' mean, "
        "1 = default Assistant)",
        f"{'turn':>4}  {'projection':>10}  {'normalised':>10}  {'tokens':>6}  first words",
    ]
    for t in result.turns:
        mark = "*" if t.dropped_messages else " "
        lines.append(
            f"{t.turn:>4}{mark} {t.projection[layer]:>10.2f}  {t.normalised[layer]:>10.3f}  "
            f"{t.response_tokens:>6}  {t.preview[:50]}"
        )
    if result.windowed:
        lines.append("* read through a window of the most recent turns")
    render.write_lines(lines)
    return 0


def run_replays(args: argparse.Namespace) -> int:
    from persona_explorer.axis.conversation import shipped_transcript, shipped_transcripts
    from persona_explorer.axis.drift import shipped_replay
    from persona_explorer.axis.replays import SHIPPED_REPLAYS_DIR, write_replay
    from persona_explorer.engine.model import EMBEDDED_MODEL_ID

    model = get_model(args)
    if model.model_id != EMBEDDED_MODEL_ID:
        raise InputError(
            "Shipped replays are for the embedded model; other models' replays are cached on "
            "first use (axis project, or the Drift tab)."
        )
    target = Path(args.out) if args.out else SHIPPED_REPLAYS_DIR
    keys = [k for _, k in shipped_transcripts() if k.startswith("persona_drift/")]
    written = []
    with render.Progress(args.quiet) as progress:
        for i, key in enumerate(keys):

            def report(fraction: float, message: str, i: int = i) -> None:
                progress((i + fraction) / len(keys), message)

            started = time.perf_counter()
            stored = shipped_replay(model, shipped_transcript(key), args.window_tokens, report)
            path = write_replay(target / f"{key.rpartition('/')[2]}.safetensors", stored)
            seconds = time.perf_counter() - started
            written.append(
                {
                    "transcript": key,
                    "file": str(path),
                    "turns": len(stored.turns),
                    "seconds": round(seconds, 1),
                }
            )
    if args.json:
        render.print_json({"window_tokens": args.window_tokens, "replays": written})
        return 0
    render.write_lines(
        f"{w['transcript']}: {w['turns']} turns in {w['seconds']} s -> {w['file']}" for w in written
    )
    return 0
