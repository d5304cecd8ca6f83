"""How a process that serves or trains is tuned: glibc's allocator (the server's), the GIL's
switch interval (the server's and its workers': each holds training and database threads), and
the BLAS threads of a process that trains.
"""

from __future__ import annotations

import ctypes
import sys
import threading

from threadpoolctl import threadpool_info, threadpool_limits

MALLOPT = {
    -3: 1 << 20,  # M_MMAP_THRESHOLD: blocks of 1 MiB and more get mappings of their own
    -8: 2,  # M_ARENA_MAX: two heaps, not eight per core, for a process of many threads
}
"""glibc's allocator settings for a server, by mallopt parameter number."""


GIL_SWITCH_SECONDS = 0.001
"""How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms). A run
training a small network holds the GIL almost all the time (NumPy keeps it for tiny arrays),
and every database call of another thread gives it up and then waits up to this long to get it
back: a commit of some fifty calls, made beside such a run, holds SQLite's write lock for that
long each time and makes other writers time out (see also :data:`.jobs.YIELD_SECONDS`; figures
in docs/benchmarks.md, "Figures behind constants")."""


def return_freed_memory() -> bool:
    """Tune glibc so that a server's resident size follows its work. By default it raises its
    mmap threshold as large blocks come and go, and then keeps the freed chunks of uploads,
    datasets and checkpoints in its heaps; and it gives each thread that allocates an arena of
    its own, each keeping what it freed. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(parameter, value) for parameter, value in MALLOPT.items())
    except (OSError, AttributeError):
        return False


class BlasThreads:
    """How many threads BLAS computes with in this process: set through here only, so that a
    request already made is not made again (asking the libraries takes a few hundred
    microseconds).

    A worker sets it from the thread that trains, never first from its main thread: OpenBLAS
    (0.3.31, pthreads) ignores a raise asked from another thread once the main thread has set a
    count, so a run alone went on computing with one core's thread."""

    _lock = threading.Lock()
    _threads = 0

    @classmethod
    def use(cls, threads: int) -> int:
        """From now on, ``threads`` (0: as it is); the most threads a BLAS library of this process
        says it now computes with (0 if it has none), asked only when ``threads`` changed."""
        with cls._lock:
            if not threads or threads == cls._threads:
                return cls._threads
            threadpool_limits(threads)
            cls._threads = threads
            return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=0)


def tune_worker() -> None:
    """A worker process: threads switch every 1 ms, as in the server. Its allocator keeps glibc's
    defaults, whose thresholds follow the blocks a process frees: training allocates and frees
    the same large temporaries every minibatch, and under :data:`MALLOPT`'s fixed thresholds
    each came back from the kernel as fresh pages (the page faults measured: docs/scaling.md)."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
