"""Many users at once: every request succeeds, and nobody's steering leaks into anyone else's
answer (a greedy baseline generated while others steer equals the same baseline alone)."""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gradio_client import Client

from persona_explorer.core.config import load_settings
from persona_explorer.dev.devserver import MILD, STRONG, shared_server
from persona_explorer.steering.shared_batch import ENGINE_THREAD_NAME

pytestmark = pytest.mark.e2e

N_CLIENTS = 8
REQUESTS_PER_CLIENT = 3
TOKENS = 8
PROMPT = "Describe your ideal breakfast."


def steer(client: Client, prompt: str, persona: str, layer: int, strength: float) -> tuple:
    return client.predict(
        prompt=prompt,
        persona=persona,
        layer=layer,
        strength=strength,
        max_new_tokens=TOKENS,
        system_prompt="",
        api_name="/steer",
    )


def test_concurrent_clients_all_succeed_and_baselines_do_not_leak() -> None:
    url = shared_server().url
    alone_baseline, alone_steered, *_ = steer(Client(url, verbose=False), PROMPT, MILD, 20, 2.0)

    # A different prompt, persona, layer and strength per request, all strongly steered.
    jobs = [
        (c, r, f"Question {c}.{r}: what do you think about rain?", STRONG if r % 2 else MILD)
        for c in range(N_CLIENTS)
        for r in range(REQUESTS_PER_CLIENT)
    ]
    results: dict[tuple[int, int], tuple] = {}
    probes: list[tuple] = []
    start = threading.Barrier(N_CLIENTS + 1)

    def user(c: int) -> None:
        client = Client(url, verbose=False)
        start.wait()
        for cc, r, prompt, persona in jobs:
            if cc == c:
                results[(c, r)] = steer(client, prompt, persona, 8 + c, 3.0 + r)

    def prober() -> None:
        client = Client(url, verbose=False)
        start.wait()
        for _ in range(2):  # while the others are steering
            probes.append(steer(client, PROMPT, MILD, 20, 2.0))

    with ThreadPoolExecutor(N_CLIENTS + 1) as pool:
        futures = [pool.submit(user, c) for c in range(N_CLIENTS)] + [pool.submit(prober)]
        for f in futures:
            f.result(timeout=600)  # re-raises any client's error

    assert len(results) == N_CLIENTS * REQUESTS_PER_CLIENT
    for baseline, steered, *_ in results.values():
        assert baseline.strip() and steered.strip()
    for baseline, steered, *_ in probes:
        assert baseline == alone_baseline
        assert steered == alone_steered


def test_concurrent_sessions_each_get_exactly_their_solo_answer() -> None:
    """Twelve visitors press Generate together, each with their own prompt, persona, layer and
    strength: with the shared batch their steps run as one, and each answer (baseline and
    steered) is character for character what the same request gets alone."""
    url = shared_server().url
    requests = [
        (f"Visitor {i}: tell me about {topic}.", STRONG if i % 2 else MILD, 6 + i, 1.5 + 0.5 * i)
        for i, topic in enumerate(["rain", "ships", "bread", "cats", "maths", "music"] * 2)
    ]
    solo = [steer(Client(url, verbose=False), *req)[:2] for req in requests]
    together: dict[int, tuple] = {}
    start = threading.Barrier(len(requests))

    def visitor(i: int) -> None:
        client = Client(url, verbose=False)
        start.wait()
        together[i] = steer(client, *requests[i])[:2]

    with ThreadPoolExecutor(len(requests)) as pool:
        for f in [pool.submit(visitor, i) for i in range(len(requests))]:
            f.result(timeout=600)
    for i, answer in enumerate(solo):
        assert together[i] == answer, requests[i]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_web_threads_yield_the_cpu_to_the_engine_and_its_team() -> None:
    """In the served app, the engine thread and its OpenMP workers (named ``pe-engine``) keep
    the process's priority, and the thread serving the web, with every thread it started
    (Gradio's event loop and workers), runs ``web_nice`` (5) steps lower."""
    server = shared_server()
    steer(Client(server.url, verbose=False), PROMPT, MILD, 20, 2.0)  # the engine's team exists
    assert server.proc is not None
    tasks = Path(f"/proc/{server.proc.pid}/task")
    threads = {}
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            stat = (task / "stat").read_text()
            threads[int(task.name)] = (
                (task / "comm").read_text().strip(),
                int(stat.rsplit(")", 1)[1].split()[16]),  # field 19: nice
            )
    engine = [nice for name, nice in threads.values() if name == ENGINE_THREAD_NAME]
    assert engine, threads
    if torch.get_num_threads() > 1:
        assert len(engine) >= 2, threads  # the engine thread and at least one OpenMP worker
    base = engine[0]
    assert set(engine) == {base}
    assert threads[server.proc.pid][1] == min(19, base + load_settings({}).web_nice)
