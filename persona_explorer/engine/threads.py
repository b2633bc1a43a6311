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

Imports: torch, ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["release", "set_team", "single"]

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
