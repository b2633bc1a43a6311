"""A class at once: 1, 8 and 30 visitors from one address press Generate together.

Starts the real app in public mode (``python app.py``, embedded model) once with the shared
decoding batch and once without it (``PERSONA_EXPLORER_SHARED_BATCH=0`` with the old two
generations at a time), one after the other, and drives ``/steer`` for each visitor, all from
127.0.0.1 (one school network behind one address). Prints, per app and number of visitors:

* aggregate token pairs/s: baseline + steered tokens come in pairs (one decoding step each),
  summed over visitors, over the wall time from the first click to the last answer;
* median and slowest wait, click to final answer;
* median first update, click to the first streamed text.

    python bench/bench_load.py                      # 1, 8, 30 visitors, 48 tokens, both apps
    python bench/bench_load.py --visitors 1 30 --only shared
    python bench/bench_load.py --client gradio      # one gradio_client per visitor instead

The visitors run on the server's own two cores, where a class's browsers would not. By default
each is a thin client of Gradio's documented HTTP API (``POST /gradio_api/call/steer``, then its
event stream), all over one connection pool: what the server does for a browser, without the
client's own cost. ``--client gradio`` uses one ``gradio_client.Client`` per visitor, as the
issue's first measurements did; thirty of them spent about five CPU-seconds building TLS contexts
(one per request, even over http) on the cores the engine needed, and their iterators poll every
millisecond, so they measure the clients as much as the server.

The engine's own account of each busy spell (``PERSONA_EXPLORER_LOG_LEVEL=INFO``: runs, steps,
rows, milliseconds a step and a prompt pass) is printed under each row.

Numbers come from this one run on this machine; compare the two apps' rows, not runs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from gradio_client import Client

from persona_explorer.dev.devserver import AppServer, make_test_vectors

PROMPTS = (
    "I just adopted a puppy. What should I do in the first week?",
    "How do I make a good cup of tea?",
    "What should I pack for a weekend in the mountains?",
    "Give me three tips for learning to play the guitar.",
    "Why is the sky blue?",
)
POLL_S = 0.02
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


def gradio_visitor(url: str, i: int, args: argparse.Namespace, start: threading.Barrier) -> dict:
    client = Client(url, verbose=False)
    start.wait()
    clicked = time.perf_counter()
    job = client.submit(**steer_request(args, PROMPTS[i % len(PROMPTS)]))
    # Not ``for update in job``: gradio_client's iterator polls every millisecond, and thirty
    # such loops on the server's own two cores took a sixth of them. Twenty-millisecond polls of
    # the outputs so far find the first text as well.
    first = None
    while first is None and not job.done():
        if any(update[0] or update[1] for update in job.outputs()):
            first = time.perf_counter() - clicked
        else:
            time.sleep(POLL_S)
    final = list(job.result())
    return outcome(clicked, first, final)


class HttpVisitors:
    """Gradio's HTTP API (``/gradio_api/call/<name>`` and its event stream), one connection pool
    for every visitor. Each call is its own session to the server, as each gradio_client is."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            timeout=httpx.Timeout(900.0, connect=30.0),
            limits=httpx.Limits(max_connections=2 * n + 4, max_keepalive_connections=2 * n + 4),
        )
        info = self.http.get(f"{self.url}/gradio_api/info", params={"serialize": "False"})
        info.raise_for_status()
        self.params = info.json()["named_endpoints"]["/steer"]["parameters"]

    def close(self) -> None:
        self.http.close()

    def __call__(
        self, url: str, i: int, args: argparse.Namespace, start: threading.Barrier
    ) -> dict:
        given = steer_request(args, PROMPTS[i % len(PROMPTS)])
        data = [given.get(p["parameter_name"], p.get("parameter_default")) for p in self.params]
        start.wait()
        clicked = time.perf_counter()
        posted = self.http.post(f"{self.url}/gradio_api/call/steer", json={"data": data})
        posted.raise_for_status()
        event_id = posted.json()["event_id"]
        first, final, event = None, None, ""
        with self.http.stream("GET", f"{self.url}/gradio_api/call/steer/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                if event == "error":
                    raise RuntimeError(f"/steer failed: {line[5:].strip()}")
                values = json.loads(line[5:])
                if event not in ("generating", "complete") or not isinstance(values, list):
                    continue  # heartbeats
                texts = [v for v in values[:2] if isinstance(v, str)]
                if first is None and any(texts):
                    first = time.perf_counter() - clicked
                if event == "complete":
                    final = values
                    break
        if final is None:
            raise RuntimeError("/steer's event stream ended without its result")
        return outcome(clicked, first, final)


def outcome(clicked: float, first: float | None, final: list) -> dict:
    done = time.perf_counter()
    status = next((v for v in final if isinstance(v, str) and _TOKENS.search(v)), "")
    match = _TOKENS.search(status)  # the status line: "N tokens in S s"
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
    http = HttpVisitors(url, n) if args.client == "http" else None
    visitor = http or gradio_visitor
    try:
        with ThreadPoolExecutor(n) as pool:
            results = [
                f.result(timeout=900)
                for f in [pool.submit(visitor, url, i, args, start) for i in range(n)]
            ]
    finally:
        if http is not None:
            http.close()
    wall = max(r["done"] for r in results) - min(r["clicked"] for r in results)
    waits = sorted(r["wait"] for r in results)
    return {
        "rate": sum(r["pairs"] for r in results) / wall,
        "median": statistics.median(waits),
        "slowest": waits[-1],
        "first": statistics.median(r["first"] for r in results),
    }


def tallies(server: AppServer) -> list[str]:
    """The engine's own account of each busy spell so far (``shared_batch.Tally``)."""
    log = server.log_path.read_text(errors="replace")
    return [line.split(": ", 1)[1] for line in log.splitlines() if "shared batch:" in line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 8, 30])
    parser.add_argument("--only", choices=sorted(APPS), action="append")
    parser.add_argument("--persona", default="pirate")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--strength", type=float, default=5.06)
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per column")
    parser.add_argument(
        "--client", choices=("http", "gradio"), default="http", help="what each visitor runs"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="persona-explorer-bench-load-"))
    builtin = make_test_vectors(root / "builtin")
    rows: list[tuple[str, int, dict[str, float]]] = []
    for name in args.only or ["turns", "shared"]:
        env = {"PERSONA_EXPLORER_PUBLIC": "1", "PERSONA_EXPLORER_LOG_LEVEL": "INFO", **APPS[name]}
        server = AppServer(root / f"data-{name}", builtin_dir=builtin, env=env)
        url = server.start()
        try:
            warm_up(url, args)
            for n in args.visitors:
                seen = len(tallies(server))
                rows.append((name, n, load(url, n, args)))
                time.sleep(0.5)  # the engine logs its spell once the last run has left
                spells = tallies(server)[seen:]
                print(f"  {name:6} {n:3} visitors done", *spells, sep="\n    ", flush=True)
        finally:
            server.stop()

    print(
        f"\n/steer, {args.tokens} max new tokens per column, persona {args.persona!r} "
        f"(layer {args.layer}, strength {args.strength}), greedy, public mode, one address, "
        f"{args.client} clients"
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
