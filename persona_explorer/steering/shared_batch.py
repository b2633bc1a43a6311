"""The shared decoding batch: every visitor's short generation decodes in one batch, one step
for all, on one engine thread.

A class of thirty opening the app together used to take turns: each generation held the model
for its whole answer, so the aggregate rate stayed at one visitor's. Here a generation that can
share (:meth:`FastLlamaDecoder.can_share`: the fast decoder's compiled step, at most
``kernels.MAX_ROWS`` rows, row-invariant; that is Steer, Compare, capping, the Drift chat and the
Tour's live steps) joins the running batch at the next step after its prompt pass and leaves it
when it ends, is stopped, or its reader goes away. Each run keeps its own steering plan,
sampling, penalties, stop flag and capture; only the weight reads are shared.

Same bits alone or with 29 others: the kernel computes every row with the same operations in the
same order whatever the batch (``kernels.cpp``: ``dot_any``, ``decode_layer_many``), attention
reads each run's own cache, and a run's steering callback sees only its own rows. Prompt passes
are not shared (oneDNN's GEMM blocks rows differently at different batch sizes), so each runs
alone, chunk by chunk, between steps.

How a step is shared with the long jobs (extraction, sweeps, screening, training): they run on
their own threads, and every forward pass (one of their steps or prompt chunks, or one shared
step) takes the model's first-come-first-served compute lock. So the shared batch waits for at
most one of a long job's passes, then a long job waits for at most one shared step.

The engine thread is started with the shared batch (by the thread that serves the model) and
waits for work between runs. It is the only thread that keeps an OpenMP team
(``engine.threads``): the app's handler threads run on one thread (``AppContext.job``), and a
long job's pass gets a team only for its length. With a second team alive, libgomp's workers
sleep between regions and a step of the embedded model took 22.6 ms instead of 12.5.

The engine thread and its OpenMP workers are named ``pe-engine`` (``top -H``); the web threads
run at a lower priority than theirs (``engine.threads.yield_cpu``). Each busy spell, from the
first run joining an idle batch to the last one leaving, is logged at INFO (:class:`Tally`:
runs, steps, rows a step, milliseconds a step and a prompt pass).

Imports: torch, :mod:`.generation` (the run it drives). The UI switches it on with
:func:`serve`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from persona_explorer.engine import threads as omp
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering import generation
from persona_explorer.steering.generation import GenerationRun, StreamUpdate

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_THREAD_NAME",
    "MAX_STEP_ROWS",
    "PREFILL_BUDGET_S",
    "SharedBatch",
    "Tally",
    "running",
    "serve",
    "step_together",
    "stop",
]

# The engine thread's name, in Python and in `top -H` and /proc (its OpenMP workers carry it too).
ENGINE_THREAD_NAME = "pe-engine"
# Rows in one shared step. A step's products cost about linearly in rows beyond a few, so a
# bigger group would only hold the compute lock longer; above it, groups take turns each step.
MAX_STEP_ROWS = 64
# Between two steps, prompt passes of newcomers run for about this long, so a class arriving at
# once starts decoding together while the answers already flowing pause for a fraction of a second.
PREFILL_BUDGET_S = 0.3
# A reader's partial updates: at most one per READ_EVERY_S alone, READ_EVERY_PER_RUN_S more per
# run in the batch (SharedBatch.reading_pace).
READ_EVERY_S = 0.05
READ_EVERY_PER_RUN_S = 0.03


@dataclass
class Tally:
    """What the engine thread did in one busy spell (from the first run joining an idle batch
    to the last one leaving): logged at INFO when it ends, so an operator sees where a class's
    wait went. Seconds are wall time on the engine thread."""

    runs: int = 0
    steps: int = 0
    rows: int = 0  # summed over steps: rows / steps is the mean batch
    step_s: float = 0.0  # shared steps, including waits for the compute lock
    prefill_s: float = 0.0  # prompt chunks, including waits for the compute lock
    finish_s: float = 0.0  # results handed over (the capture's last copies)
    started: float = 0.0

    def line(self) -> str:
        wall = time.perf_counter() - self.started
        rows = self.rows / self.steps if self.steps else 0.0
        each = 1000 * self.step_s / self.steps if self.steps else 0.0
        prefill = 1000 * self.prefill_s / self.runs if self.runs else 0.0
        other = wall - self.step_s - self.prefill_s - self.finish_s
        return (
            f"shared batch: {self.runs} runs in {wall:.2f} s: {self.steps} steps of "
            f"{rows:.1f} rows, {each:.1f} ms each; prompt passes {prefill:.1f} ms a run; "
            f"finishing {self.finish_s:.2f} s; elsewhere {other:.2f} s"
        )


class _Job:
    """A run in the shared batch and its mailbox: only the latest update is kept, since each
    carries the whole answer so far, so a slow reader never makes the engine wait or queue.

    The reader is woken for the first update, the last one and errors at once, and otherwise
    takes the latest at most every :meth:`SharedBatch.reading_pace`: thirty readers each
    decoding their texts after every step held the interpreter lock the engine needs between
    its kernels."""

    def __init__(self, run: GenerationRun) -> None:
        self.run = run
        self.cond = threading.Condition()
        self.latest: StreamUpdate | None = None
        self.error: BaseException | None = None
        self.ended = False  # the engine let go of it (finished, failed or abandoned)
        self.abandoned = False  # the reader went away (Stop, a closed page)
        self.due: float | None = None  # when the reader may take its next partial update

    def post(self, update: StreamUpdate | None = None, error: BaseException | None = None) -> None:
        with self.cond:
            if update is not None:
                self.latest = update
            if error is not None:
                self.error = error
            urgent = error is not None or update is None or update.done
            if urgent or self.due is None or time.monotonic() >= self.due:
                self.cond.notify_all()

    def take(self, pace: Callable[[], float]) -> StreamUpdate:
        with self.cond:
            while True:
                if self.error is not None:
                    raise self.error
                latest, now = self.latest, time.monotonic()
                if latest is not None and (latest.done or self.due is None or now >= self.due):
                    self.latest = None
                    self.due = now + pace()
                    return latest
                # Not due yet: wake at the due time if an update waits, else when one is posted
                # after it (post() notifies then), or at once for the last one or an error.
                self.cond.wait(self.due - now if latest is not None and self.due else None)


def step_together(runs: list[GenerationRun]) -> None:
    """One decoding step of ``runs`` (one decoder's, each accepted) in one pass: each chooses
    its tokens, ``step_many`` feeds them all, each takes its logits. Under the compute lock and
    inference mode. The engine's step, and the bench's."""
    fed = [run.choose() for run in runs]
    logits = runs[0].decoder.step_many(  # type: ignore[attr-defined]
        [run.session for run in runs], fed, [run.rec for run in runs]
    )
    for run, out in zip(runs, logits, strict=True):
        run.absorb(out)


class SharedBatch:
    """The engine thread of one model's shared batch (:func:`serve` makes it)."""

    def __init__(self, model: LoadedModel) -> None:
        self._lock = model.compute_lock
        self._team = torch.get_num_threads()  # the serving thread's: the app's setting
        self._cond = threading.Condition()
        self._joining: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._thread: threading.Thread | None = None
        self.steps = 0  # shared steps run (tests and the bench read it)
        self.widest = 0  # most runs in one step so far
        self.tally = Tally()  # the current (or last) busy spell
        # Started here, by the serving thread, rather than by the first visitor's handler
        # thread: the engine thread and its OpenMP workers inherit the server's settings.
        with self._cond:
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=ENGINE_THREAD_NAME, daemon=True)
        self._thread.start()

    def running(self) -> int:
        with self._cond:
            return len(self._joining) + len(self._active)

    def reading_pace(self) -> float:
        """Seconds between two partial updates a reader takes: 50 ms alone (the UI thins to 75 ms:
        the text flows), 30 ms more per run in the batch (0.9 s with thirty). Each update
        costs its reader and the web layer a few milliseconds on the cores the engine uses."""
        return max(READ_EVERY_S, READ_EVERY_PER_RUN_S * self.running())

    def accepts(self, run: GenerationRun) -> bool:
        """Whether ``run`` can join with the same bits as alone; never from a thread holding
        the compute lock (``steering_hooks``), which the engine thread would wait on forever."""
        can_share = getattr(run.decoder, "can_share", None)
        return can_share is not None and bool(can_share(run.session)) and not self._lock.held_here()

    def run(self, run: GenerationRun) -> Iterator[StreamUpdate]:
        job = _Job(run)
        with self._cond:
            self._joining.append(job)
            if self._thread is None:  # it ended on a bug (logged): a new one takes over
                self._start()
            self._cond.notify()
        try:
            while True:
                update = job.take(self.reading_pace)
                yield update
                if update.done:
                    return
        finally:
            with self._cond:
                job.abandoned = True
                self._cond.notify()
            # The run's caches belong to the engine until it lets go (at most one step).
            with job.cond:
                while not job.ended:
                    job.cond.wait()

    # ---------------------------------------------------------------- the engine thread

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug here must not leave readers waiting forever
            with self._cond:
                jobs = [*self._joining, *self._active]
                self._joining.clear()
                self._active.clear()
                self._thread = None
            self._fail(jobs, exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            raise

    def _serve(self) -> None:
        omp.name_thread(ENGINE_THREAD_NAME)  # its OpenMP workers, started from here, too
        omp.set_team(self._team)
        self._lock.one_team(threading.get_ident(), self._team)
        while True:
            with self._cond:
                if not self._joining and not self._active:
                    if self.tally.runs:
                        log.info(self.tally.line())
                    while not self._joining and not self._active:
                        self._cond.wait()
                    self.tally = Tally(started=time.perf_counter())
                self._drop_abandoned()
            self._prefill_some()
            self._step_all()

    def _drop_abandoned(self) -> None:
        for job in [j for j in self._joining if j.abandoned]:
            self._joining.remove(job)
            self._end(job)
        for job in [j for j in self._active if j.abandoned]:
            self._active.remove(job)
            self._end(job)

    def _prefill_some(self) -> None:
        """Prompt chunks of newcomers, oldest first, for about :data:`PREFILL_BUDGET_S`."""
        started = time.perf_counter()
        while True:
            with self._cond:
                if not self._joining:
                    return
                job = self._joining[0]
            try:
                with torch.inference_mode():
                    stopped = job.run.stop_between_chunks()
                if not stopped:
                    began = time.perf_counter()
                    with self._lock, torch.inference_mode():
                        job.run.prefill_next()
                    self.tally.prefill_s += time.perf_counter() - began
                if job.run.prompt_done:
                    self.tally.runs += 1
                    with self._cond:
                        self._joining.popleft()
                    if job.run.stopping:
                        self._finish(job)
                    else:
                        self._active.append(job)
            except Exception as exc:  # the run's reader gets it; others go on
                with self._cond:
                    self._joining.popleft()
                self._fail([job], exc)
            if time.perf_counter() - started > PREFILL_BUDGET_S and self._active:
                return

    def _step_all(self) -> None:
        groups: list[list[_Job]] = []
        for job in self._active:
            same = [
                g
                for g in groups
                if g[0].run.decoder is job.run.decoder
                and sum(j.run.batch for j in g) + job.run.batch <= MAX_STEP_ROWS
            ]
            if same:
                same[0].append(job)
            else:
                groups.append([job])
        for group in groups:
            began = time.perf_counter()
            try:
                with self._lock, torch.inference_mode():
                    step_together([job.run for job in group])
            except Exception as exc:  # these runs end with it; the engine goes on
                for job in group:
                    self._active.remove(job)
                self._fail(group, exc)
                continue
            self.steps += 1
            self.widest = max(self.widest, len(group))
            self.tally.steps += 1
            self.tally.rows += sum(job.run.batch for job in group)
            self.tally.step_s += time.perf_counter() - began
            for job in group:
                job.run.stop_after_step()
                if job.run.stopping:
                    self._active.remove(job)
                    self._finish(job)
                else:
                    job.post(job.run.update())

    def _finish(self, job: _Job) -> None:
        began = time.perf_counter()
        try:
            with torch.inference_mode():
                update = job.run.finish()
        except Exception as exc:  # the reader gets it
            self._fail([job], exc)
            return
        finally:
            self.tally.finish_s += time.perf_counter() - began
        job.post(update)
        self._end(job)

    def _fail(self, jobs: list[_Job], exc: Exception) -> None:
        log.exception("shared decoding step failed for %d run(s)", len(jobs), exc_info=exc)
        for job in jobs:
            job.post(error=exc)
            self._end(job)

    def _end(self, job: _Job) -> None:
        job.run.close()
        with job.cond:
            job.ended = True
            job.cond.notify_all()


def serve(model: LoadedModel) -> SharedBatch:
    """Switch the shared batch on for ``model``: from now on its eligible generations decode
    together (the app does this once per loaded model). Idempotent."""
    shared = generation._SHARED.get(model)
    if not isinstance(shared, SharedBatch):
        shared = SharedBatch(model)
        generation._SHARED[model] = shared
    return shared


def running(model: LoadedModel) -> int:
    """Generations in the model's shared batch now, joining or decoding (0 without one)."""
    shared = generation._SHARED.get(model)
    return shared.running() if isinstance(shared, SharedBatch) else 0


def stop(model: LoadedModel) -> None:
    """Switch it off again: later generations run alone (runs in the batch finish there), and
    threads holding the compute lock keep their teams again."""
    if generation._SHARED.pop(model, None) is not None:
        model.compute_lock.one_team(None, 0)
