"""One OpenMP team in a serving process: the engine thread's.

libgomp, which runs torch's CPU kernels and ours, gives every thread that opens a parallel
region a team of worker threads of its own, kept until that thread exits. Once the teams hold
more threads than there are CPUs, every team's workers sleep between regions instead of
spinning (libgomp's "throttled" spin), and a decoding step of the embedded model on 2 cores
went from 12.5 to 22.6 ms. In the app a Gradio worker thread per visitor touched torch (the
capture's projections, a plot) and so kept a team alive beside the engine's.

So, where a model serves the shared batch (:func:`persona_explorer.steering.shared_batch.serve`),
only the engine thread keeps a team: every other thread runs its own torch work on one thread
(:func:`single`), and a long job's forward pass on another thread gets the full team for the
length of the pass only (the model's compute lock does both, see ``model.FairLock``): the team
is let go with ``omp_pause_resource_all``, libgomp's OpenMP 5 call that frees the calling
thread's pool.

Without libgomp (another OpenMP runtime, or none) every call here does nothing.

The engine's cores, second: the web layer yields them. Once the kernels let go of the
interpreter lock, a page being served could run in the middle of a decoding step's products,
and each time it took a core from one of the team's two threads the other waited at the
region's end. The app lowers the priority of the thread that serves the web (:func:`yield_cpu`),
after the engine thread has started; every thread started from it later (Gradio's event loop and
worker threads, a long job's team) inherits the lower priority, while the engine thread and its
OpenMP workers keep theirs. Linux gives each thread its own nice value; a nice of 5 leaves the
web a quarter of a contended core, several times what a class's pages need. Measured on 2
cores, thirty visitors: a step took 168 ms instead of 180-226, the slowest answer came 1.5-2 s
sooner (``bench/bench_load.py``). When the engine is idle the priorities change nothing.

:func:`name_thread` gives a thread the name ``top -H`` and ``/proc`` show (Linux's 15 bytes);
a team's workers, started by the named thread, carry its name.

Imports: torch, ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
import threading
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["name_thread", "nice_of", "release", "set_team", "single", "yield_cpu"]

_OMP_PAUSE_SOFT = 1


@functools.cache
def _gomp() -> Any:
    """The libgomp torch loaded (by soname: the one already in the process), or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        lib = ctypes.CDLL("libgomp.so.1")
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
        lib.omp_pause_resource_all.restype = ctypes.c_int
    except (OSError, AttributeError) as exc:
        log.info("OpenMP teams not managed: %s", exc)
        return None
    return lib


def set_team(threads: int) -> None:
    """This thread's parallel regions use ``threads`` threads from now on (its own setting:
    torch's ``set_num_threads`` would also change the default of every thread to come)."""
    lib = _gomp()
    if lib is None:
        return
    torch.get_num_threads()  # torch's per-thread first-use setup, which would undo ours later
    lib.omp_set_num_threads(int(threads))


def release(threads: int) -> None:
    """Let this thread's team go (its pool of workers ends) and run on ``threads`` from now
    on: the next region with more than one makes a new team."""
    lib = _gomp()
    if lib is None:
        return
    lib.omp_pause_resource_all(_OMP_PAUSE_SOFT)
    set_team(threads)


def single() -> None:
    """This thread runs on one thread and keeps no team (a visitor's reader)."""
    release(1)


def yield_cpu(by: int) -> int:
    """Lower the calling thread's priority by ``by`` nice steps (threads it starts from now on
    inherit it; it cannot be raised back without privileges). Returns the thread's nice value
    now; nothing changes where the OS has no per-thread nice (only Linux has)."""
    tid = threading.get_native_id()
    if by <= 0 or not sys.platform.startswith("linux"):
        return nice_of(tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError as exc:  # a sandbox without setpriority: the engine just shares the cores
        log.info("web threads keep their priority: %s", exc)
    return nice_of(tid)


def nice_of(tid: int) -> int:
    """A thread's nice value (0 where unknown)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        return 0


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def name_thread(name: str) -> None:
    """Name the calling thread for ``top -H``, ``ps -L`` and ``/proc/<pid>/task/*/comm``."""
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return
    pr_set_name = 15
    with contextlib.suppress(AttributeError):
        libc.prctl(pr_set_name, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
