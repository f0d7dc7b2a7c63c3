"""The OpenMP runtime torch and our kernels share, and how threads other than the engine's keep out of its way.

libgomp counts every thread it manages; while that count is above the CPUs it cuts each waiting thread's
spin to ~100 turns, so the engine's team sleeps and wakes at every barrier instead of spinning through it.
A thread that has run a parallel region keeps its idle team for life: the thread that built the model
(the server's main thread) held a second team, and the engine thread stepping beside it switched context
~170 times a step instead of ~0 (tok/s -10% engine alone, more beside an event loop). So the builder hands
its team back when the engine thread takes over, and worker threads (adapter loads off the event loop) hand
theirs back after each job: torch's ops and MKL's GEMMs (which keep their own thread count) alike.
"""

import ctypes
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache

import torch

log = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free the threads, keep the settings


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return False


@cache
def _runtime() -> ctypes.CDLL | None:
    """torch's OpenMP runtime (found through torch's own extension, whatever its file is called), if it is
    libgomp: there a pause ends the calling thread's team only (LLVM's libomp pauses the whole runtime)."""
    if not _libgomp_loaded():
        return None
    try:
        lib = ctypes.CDLL(torch._C.__file__)
        pause = lib.omp_pause_resource_all  # OpenMP >= 5.0
    except (OSError, AttributeError):
        log.info("libgomp without omp_pause_resource_all: threads are left as they are")
        return None
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return lib


def release_team() -> bool:
    """End the calling thread's idle OpenMP team (its threads exit; a later parallel region starts a new one).
    False where the runtime cannot, or the caller is inside a parallel region."""
    lib = _runtime()
    return lib is not None and lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0


def _then_release(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        release_team()


class TeamlessExecutor(ThreadPoolExecutor):
    """A thread pool whose threads hold no OpenMP team between jobs."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return super().submit(_then_release, fn, *args, **kwargs)
