"""How long each Tour step takes to show its result on a warm app (issue 24: about 10 s on 2
CPU cores at most).

Starts the real app (``python app.py``: the embedded model and the shipped built-in vectors) on
a free port, or uses ``--url``, and calls the public ``/tour_step`` endpoint the way the browser
does when a step is clicked. Each step is called once to warm the app (the decoder, the axis,
the persona map), then timed ``--runs`` times. Steps 5 and 6 show their shipped results; with
``--live`` step 5 is also timed through ``/tour_live`` (the live screening; step 6's three
training runs take minutes, so time those with ``python -m persona_explorer.dev.tour_build``,
which records its own time). Prints numbers from this one run, and the load average: the
machines this runs on are shared.

    python bench/bench_tour.py [--runs 3] [--live] [--url http://127.0.0.1:7860/] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradio_client import Client

from persona_explorer.dev.devserver import AppServer
from persona_explorer.ui.tour.steps import STEPS

TARGET_S = 10.0  # issue 24: every step within about 10 s of a click, warm, on 2 cores


def one_call(client: Client, api: str, step: str) -> float:
    started = time.perf_counter()
    job = client.submit(step=step, api_name=api)
    for _ in job:  # every streamed update, as the browser receives them
        pass
    job.result()
    return time.perf_counter() - started


def bench(url: str, runs: int, live: bool) -> dict[str, dict[str, float]]:
    client = Client(url, verbose=False)
    calls = [("/tour_step", s.key) for s in STEPS]
    if live:
        calls.append(("/tour_live", "screen"))
    out: dict[str, dict[str, float]] = {}
    for api, step in calls:
        name = step if api == "/tour_step" else f"{step} (live)"
        warm = one_call(client, api, step)
        times = [one_call(client, api, step) for _ in range(runs)]
        out[name] = {
            "first_s": warm,
            "median_s": statistics.median(times),
            "best_s": min(times),
            "worst_s": max(times),
        }
        print(
            f"{name:14s} first {warm:6.1f} s · median {out[name]['median_s']:6.1f} s · best "
            f"{out[name]['best_s']:6.1f} s · worst {out[name]['worst_s']:6.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an app already running (default: start one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--live", action="store_true", help="also time step 5 live")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.url:
        results = bench(args.url, args.runs, args.live)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-tour-") as tmp:
            server = AppServer(data_dir=Path(tmp) / "data", log_path=Path(tmp) / "app.log")
            started = time.perf_counter()
            with server as url:
                print(f"app started in {time.perf_counter() - started:.0f} s", file=sys.stderr)
                results = bench(url, args.runs, args.live)
    slowest = max(r["median_s"] for r in results.values())
    if args.json:
        print(json.dumps({"load_avg": load, "target_s": TARGET_S, "steps": results}, indent=1))
    else:
        print(f"\nTour steps on a warm app ({os.cpu_count()} CPUs, load average {load:.1f}):")
        print(f"{'step':14s} {'median':>8s} {'best':>8s} {'worst':>8s}")
        for name, r in results.items():
            flag = "" if r["median_s"] <= TARGET_S else f"  > {TARGET_S:g} s"
            print(
                f"{name:14s} {r['median_s']:7.1f}s {r['best_s']:7.1f}s {r['worst_s']:7.1f}s{flag}"
            )
        print(f"slowest median: {slowest:.1f} s (target: about {TARGET_S:g} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
