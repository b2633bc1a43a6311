"""``axis build``: role rollouts -> the Assistant Axis file for a model. The ``axis project``
and ``axis replays`` subcommands live in :mod:`.axis_project` (registered here)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from persona_explorer.cli import axis_project, render
from persona_explorer.cli.models import get_model
from persona_explorer.cli.options import Parents, arg_type, limited
from persona_explorer.core.limits import check_int, check_max_new_tokens

if TYPE_CHECKING:
    from persona_explorer.cli.options import Subparsers

# A few layers spread through the stack for the summary; the full curve is in the file.
_SUMMARY_FRACTIONS = (0.2, 0.4, 0.5, 0.6, 0.8)


def register(subparsers: Subparsers, parents: Parents) -> None:
    p = subparsers.add_parser(
        "axis",
        help="the Assistant Axis (role vectors and the default Assistant)",
        description="Build the Assistant Axis: mean activation of the default Assistant minus "
        "the mean of role vectors, at every layer.",
    )
    sub = p.add_subparsers(dest="axis_command", metavar="COMMAND", required=True)
    b = sub.add_parser(
        "build",
        parents=[parents.model(), parents.output("the summary")],
        help="run the role rollouts and save the axis file",
        description="Run every curated role and the default Assistant on shared questions and "
        "save role vectors, the axis and the default's per-token projection quantiles.",
    )
    b.add_argument(
        "--out",
        default=None,
        help="output .safetensors (default: assets/axis/smollm2-135m-instruct.safetensors for "
        "the embedded model, else the cache)",
    )
    b.add_argument(
        "--roles",
        type=arg_type(check_int, "Roles", 2),
        default=None,
        metavar="N",
        help="use the first N curated roles (default: all)",
    )
    b.add_argument(
        "--questions",
        type=arg_type(check_int, "Questions", 1, 240),
        default=6,
        metavar="N",
        help="shared questions per system prompt (default: %(default)s)",
    )
    b.add_argument(
        "--max-new-tokens",
        type=limited(check_max_new_tokens, parents.limits, "MAX_NEW_TOKENS"),
        default=40,
        metavar="N",
        help="tokens per answer (default: %(default)s)",
    )
    b.set_defaults(func=run)
    axis_project.register(sub, parents)


def run(args: argparse.Namespace) -> int:
    from persona_explorer.axis.assistant_axis import pc1_axis_cosine, pc1_variance
    from persona_explorer.axis.build import CURATED_ROLES, axis_path, build_axis, shipped_axis_path
    from persona_explorer.engine.model import EMBEDDED_MODEL_ID

    model = get_model(args)
    roles = CURATED_ROLES[: args.roles] if args.roles else CURATED_ROLES
    started = time.perf_counter()
    with render.Progress(args.quiet) as progress:
        data = build_axis(
            model,
            roles,
            n_questions=args.questions,
            max_new_tokens=args.max_new_tokens,
            progress=progress,
            data_dir=args.settings.persona_data_dir,
        )
    seconds = time.perf_counter() - started
    # The embedded model's axis is shipped in assets/ (this command regenerates it); any other
    # model's goes to the cache, where the app looks for it.
    default = (
        shipped_axis_path(model.model_id)
        if model.model_id == EMBEDDED_MODEL_ID
        else axis_path(model.model_id, args.settings.cache_dir)
    )
    target = Path(args.out) if args.out else default
    target.parent.mkdir(parents=True, exist_ok=True)
    out = data.save(target)
    cosines = pc1_axis_cosine(data.role_vectors, data.axis).tolist()
    variance = pc1_variance(data.role_vectors).tolist()
    layers = sorted({min(data.n_layers - 1, round(f * data.n_layers)) for f in _SUMMARY_FRACTIONS})
    summary = {
        "out": str(out),
        "roles": len(data.roles),
        "layers": data.n_layers,
        "seconds": round(seconds, 1),
        "pc1_axis_cosine": {str(i): round(cosines[i], 3) for i in layers},
        "pc1_variance": {str(i): round(variance[i], 3) for i in layers},
    }
    if args.json:
        render.print_json(summary)
        return 0
    lines = render.table(
        [
            ("saved", str(out)),
            ("roles", f"{len(data.roles)} ({data.metadata['counts']['role_rollouts']} rollouts)"),
            ("layers", str(data.n_layers)),
            ("build time", f"{seconds:.1f} s"),
        ]
        + [
            (f"layer {i}", f"|cos(PC1, axis)| {cosines[i]:.3f}, PC1 variance {variance[i]:.1%}")
            for i in layers
        ]
    )
    render.write_lines(lines)
    return 0
