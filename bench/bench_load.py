"""A class at once: 1, 8 and 30 visitors from one address press Generate together.

Starts the real app in public mode (``python app.py``, embedded model) once with the shared
decoding batch and once without it (``PERSONA_EXPLORER_SHARED_BATCH=0`` with the old two
generations at a time), one after the other, and drives ``/steer`` with one gradio_client per
visitor, all from 127.0.0.1 (one school network behind one address). Prints, per app and
number of visitors:

* aggregate token pairs/s: baseline + steered tokens come in pairs (one decoding step each),
  summed over visitors, over the wall time from the first click to the last answer;
* median and slowest wait, click to final answer;
* median first update, click to the first streamed text.

    python bench/bench_load.py                      # 1, 8, 30 visitors, 48 tokens, both apps
    python bench/bench_load.py --visitors 1 30 --only shared

Numbers come from this one run on this machine; compare the two apps' rows, not runs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradio_client import Client

from persona_explorer.dev.devserver import AppServer, make_test_vectors

PROMPTS = (
    "I just adopted a puppy. What should I do in the first week?",
    "How do I make a good cup of tea?",
    "What should I pack for a weekend in the mountains?",
    "Give me three tips for learning to play the guitar.",
    "Why is the sky blue?",
)
_TOKENS = re.compile(r"(\d+) tokens in")
APPS = {
    "shared": {"PERSONA_EXPLORER_SHARED_BATCH": "1"},
    "turns": {"PERSONA_EXPLORER_SHARED_BATCH": "0", "PERSONA_EXPLORER_STEER_CONCURRENCY": "2"},
}


def steer_request(args: argparse.Namespace, prompt: str) -> dict:
    return {
        "prompt": prompt,
        "persona": args.persona,
        "layer": args.layer,
        "strength": args.strength,
        "max_new_tokens": args.tokens,
        "system_prompt": "",
        "api_name": "/steer",
    }


def visitor(url: str, i: int, args: argparse.Namespace, start: threading.Barrier) -> dict:
    client = Client(url, verbose=False)
    start.wait()
    clicked = time.perf_counter()
    job = client.submit(**steer_request(args, PROMPTS[i % len(PROMPTS)]))
    first = None
    for update in job:
        if first is None and (update[0] or update[1]):
            first = time.perf_counter() - clicked
    final = job.result()
    done = time.perf_counter()
    match = _TOKENS.search(final[5] or "")  # the status line: "N tokens in S s"
    return {
        "wait": done - clicked,
        "first": first if first is not None else done - clicked,
        "clicked": clicked,
        "done": done,
        "pairs": int(match[1]) / 2 if match else float("nan"),  # both columns: one step
    }


def warm_up(url: str, args: argparse.Namespace) -> None:
    Client(url, verbose=False).predict(**steer_request(args, PROMPTS[0]))


def load(url: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    start = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        results = [
            f.result(timeout=900)
            for f in [pool.submit(visitor, url, i, args, start) for i in range(n)]
        ]
    wall = max(r["done"] for r in results) - min(r["clicked"] for r in results)
    waits = sorted(r["wait"] for r in results)
    return {
        "rate": sum(r["pairs"] for r in results) / wall,
        "median": statistics.median(waits),
        "slowest": waits[-1],
        "first": statistics.median(r["first"] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 8, 30])
    parser.add_argument("--only", choices=sorted(APPS), action="append")
    parser.add_argument("--persona", default="pirate")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--strength", type=float, default=5.06)
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per column")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="persona-explorer-bench-load-"))
    builtin = make_test_vectors(root / "builtin")
    rows: list[tuple[str, int, dict[str, float]]] = []
    for name in args.only or ["turns", "shared"]:
        env = {"PERSONA_EXPLORER_PUBLIC": "1", **APPS[name]}
        server = AppServer(root / f"data-{name}", builtin_dir=builtin, env=env)
        url = server.start()
        try:
            warm_up(url, args)
            for n in args.visitors:
                rows.append((name, n, load(url, n, args)))
                print(f"  {name:6} {n:3} visitors done", flush=True)
        finally:
            server.stop()

    print(
        f"\n/steer, {args.tokens} max new tokens per column, persona {args.persona!r} "
        f"(layer {args.layer}, strength {args.strength}), greedy, public mode, one address"
    )
    print("| app | visitors | aggregate token pairs/s | median wait | slowest | first update |")
    print("|---|---|---|---|---|---|")
    for name, n, r in rows:
        print(
            f"| {name} | {n} | {r['rate']:.1f} | {r['median']:.1f} s | {r['slowest']:.1f} s "
            f"| {r['first']:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
