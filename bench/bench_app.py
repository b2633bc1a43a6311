"""How fast the app feels: time from "Generate" to the first streamed token and to the plot.

Starts the real app (``python app.py``, embedded model) on a free port, or uses ``--url``, and
drives the public ``/steer`` endpoint with gradio_client's streaming, the way the browser does.
Prints numbers from this one run:

    python bench/bench_app.py              # start the app, 5 runs of 48 tokens
    python bench/bench_app.py --url http://127.0.0.1:7860/ --persona pirate --runs 3
    python bench/bench_app.py --url A --url B --engine   # A and B in turns; the engine alone

With several ``--url`` the runs alternate between the apps (A, B, A, B, ...), so that a noisy
machine slows both alike, and each app's medians are printed with their ratio to the first.
``--engine`` also times the same request in this process, with no web layer at all (the
engine's own time per step, the app idle meanwhile): "per step, client / engine" is then how
much slower one visitor receives tokens than the engine makes them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradio_client import Client

from persona_explorer.dev.devserver import AppServer, make_test_vectors

PROMPT = "I just adopted a puppy. What should I do in the first week?"
_ENGINE = re.compile(r"(\d+) tokens in ([\d.\\]+) s")  # the status is Markdown: "1\.2"


def one_run(client: Client, args: argparse.Namespace) -> dict[str, float]:
    started = time.perf_counter()
    job = client.submit(
        prompt=PROMPT,
        persona=args.persona,
        layer=args.layer,
        strength=args.strength,
        max_new_tokens=args.tokens,
        system_prompt="",
        api_name="/steer",
    )
    # Polled every 5 ms rather than iterated: gradio_client's iterator polls every millisecond,
    # on the cores the server decodes on.
    first = None
    while not job.done():
        if first is None and any(u[0] or u[1] for u in job.outputs()):
            first = time.perf_counter() - started
        time.sleep(0.005)
    total = time.perf_counter() - started
    final = job.result()
    updates = len(job.outputs())  # one item per streamed yield
    match = _ENGINE.search(final[5] or "")
    engine_s = float(match[2].replace("\\", "")) if match else float("nan")
    tokens = int(match[1]) if match else 0
    return {
        "first_ms": 1000 * (first if first is not None else total),
        "plot_ms": 1000 * total,
        "engine_ms": 1000 * engine_s,
        "tokens": tokens,
        "updates": updates,
    }


def engine_ms_per_step(args: argparse.Namespace, builtin: Path) -> float:
    """The same request run in this process by the engine alone: median ms per decoding step
    (prompt pass included, as in the app's own count)."""
    import os

    from persona_explorer.core.config import load_settings
    from persona_explorer.evaluate.compare import steer
    from persona_explorer.ui.shared.context import AppContext
    from persona_explorer.ui.steer.handlers import SteerForm

    env = {**os.environ, "PERSONA_EXPLORER_BUILTIN_VECTORS": str(builtin)}
    # The engine on this (the loading) thread, with no engine thread beside it: its own speed.
    env["PERSONA_EXPLORER_SHARED_BATCH"] = "0"
    env["PERSONA_EXPLORER_DATA"] = tempfile.mkdtemp(prefix="persona-explorer-bench-engine-")
    ctx = AppContext.create(load_settings(env=env))
    form = SteerForm(PROMPT, args.persona, args.layer, args.strength, args.tokens)
    req = form.request(ctx, None)
    steer(ctx.model, req)  # warm-up
    per_step = []
    for _ in range(args.runs):
        out = steer(ctx.model, req)
        per_step.append(1000 * out.seconds / max(1, out.new_tokens // 2))
    return statistics.median(per_step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        action="append",
        help="an app already running (else one is started); repeat to compare apps, run in turns",
    )
    parser.add_argument("--persona", default="pirate")
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per column")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--engine", action="store_true", help="also time the engine alone")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="persona-explorer-bench-"))
    builtin = make_test_vectors(root / "builtin")  # the shipped vectors too (pirate, ...)
    server = None
    urls = args.url or []
    if not urls:
        server = AppServer(root / "data", builtin_dir=builtin)
        t0 = time.perf_counter()
        urls = [server.start()]
        print(f"app start (python app.py until it answers): {time.perf_counter() - t0:.1f} s")
    runs: dict[str, list[dict[str, float]]] = {url: [] for url in urls}
    try:
        clients = {url: Client(url, verbose=False) for url in urls}
        for client in clients.values():
            one_run(client, args)  # warm-up: first-call costs are not what a user waits for
        for _ in range(args.runs):
            for url, client in clients.items():
                runs[url].append(one_run(client, args))
    finally:
        if server is not None:
            server.stop()
    engine_step = engine_ms_per_step(args, builtin) if args.engine else None

    def med(url: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[url])

    print(
        f"steer: {args.runs} runs per app, {args.tokens} max new tokens per column, "
        f"persona {args.persona!r}, medians"
    )
    if engine_step is not None:
        print(f"  engine alone, in this process  : {engine_step:8.1f} ms per step")
    first = urls[0]
    for url in urls:
        steps = max(1.0, med(url, "tokens") / 2)  # both columns decode in one step
        step_ms = med(url, "engine_ms") / steps
        print(f"{url}")
        print(f"  click -> first streamed token : {med(url, 'first_ms'):8.0f} ms")
        print(f"  click -> plot (final update)  : {med(url, 'plot_ms'):8.0f} ms")
        print(
            f"  engine time (server-side)     : {med(url, 'engine_ms'):8.0f} ms for "
            f"{med(url, 'tokens'):.0f} tokens ({step_ms:.1f} ms per step)"
        )
        print(f"  streamed updates per request  : {med(url, 'updates'):8.0f}")
        print(f"  first token / one decode step : {med(url, 'first_ms') / step_ms:8.2f}x")
        print(
            f"  plot time / engine time       : {med(url, 'plot_ms') / med(url, 'engine_ms'):8.2f}x"
        )
        if engine_step is not None:
            client_step = med(url, "plot_ms") / steps
            print(
                f"  per step, client / engine     : {client_step / engine_step:8.2f}x "
                f"({client_step:.1f} ms / {engine_step:.1f} ms)"
            )
        if url != first:
            print(
                f"  click -> plot, vs the first   : "
                f"{med(url, 'plot_ms') / med(first, 'plot_ms'):8.2f}x"
            )
    print(
        "  (the ratios say what the web layer adds: 1.00x = nothing; the first token needs "
        "the prompt pass plus one step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
