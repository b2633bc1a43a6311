"""How fast the app feels: time from "Generate" to the first streamed token and to the plot.

Starts the real app (``python app.py``, embedded model) on a free port, or uses ``--url``, and
drives the public ``/steer`` endpoint with gradio_client's streaming, the way the browser does.
Prints numbers from this one run:

    python bench/bench_app.py              # start the app, 5 runs of 48 tokens
    python bench/bench_app.py --url http://127.0.0.1:7860/ --persona pirate --runs 3
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

from persona_explorer.dev.devserver import MILD, AppServer, make_test_vectors

PROMPT = "I just adopted a puppy. What should I do in the first week?"
_ENGINE = re.compile(r"(\d+) tokens in ([\d.]+) s")


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
    first = None
    updates = 0
    final = None
    for update in job:  # one item per streamed yield
        updates += 1
        if first is None and (update[0] or update[1]):
            first = time.perf_counter() - started
        final = update
    total = time.perf_counter() - started
    final = job.result()
    match = _ENGINE.search(final[5] or "")
    engine_s = float(match[2]) if match else float("nan")
    tokens = int(match[1]) if match else 0
    return {
        "first_ms": 1000 * (first if first is not None else total),
        "plot_ms": 1000 * total,
        "engine_ms": 1000 * engine_s,
        "tokens": tokens,
        "updates": updates,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an app that is already running (else one is started)")
    parser.add_argument("--persona", default=MILD)
    parser.add_argument("--layer", type=int, default=20)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per column")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    server = None
    if args.url is None:
        root = Path(tempfile.mkdtemp(prefix="persona-explorer-bench-"))
        server = AppServer(root / "data", builtin_dir=make_test_vectors(root / "builtin"))
        t0 = time.perf_counter()
        args.url = server.start()
        print(f"app start (python app.py until it answers): {time.perf_counter() - t0:.1f} s")
    try:
        client = Client(args.url, verbose=False)
        one_run(client, args)  # warm-up: first-call costs are not what a user waits for
        runs = [one_run(client, args) for _ in range(args.runs)]
    finally:
        if server is not None:
            server.stop()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    tokens = med("tokens")
    step_ms = med("engine_ms") / max(1.0, tokens / 2)  # both columns decode in one step
    print(
        f"steer: {args.runs} runs, {args.tokens} max new tokens per column, "
        f"persona {args.persona!r}, medians"
    )
    print(f"  click -> first streamed token : {med('first_ms'):8.0f} ms")
    print(f"  click -> plot (final update)  : {med('plot_ms'):8.0f} ms")
    print(f"  engine time (server-side)     : {med('engine_ms'):8.0f} ms for {tokens:.0f} tokens")
    print(f"  streamed updates per request  : {med('updates'):8.0f}")
    print(f"  first token / one decode step : {med('first_ms') / step_ms:8.2f}x")
    print(f"  plot time / engine time       : {med('plot_ms') / med('engine_ms'):8.2f}x")
    print(
        "  (the ratios say what the web layer adds: 1.00x = nothing; the first token needs "
        "the prompt pass plus one step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
