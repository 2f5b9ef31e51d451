"""How many CPU threads pyinpaint's work uses: chosen per call, in this one place.

Why: PyTorch runs every CPU op on ``torch.get_num_threads()`` OpenMP threads (by default one per core), and each
parallel op ends at a barrier where the threads wait, spinning, for the slowest. The cached sampler runs about 300
small ops per position; when another process keeps a core busy, every one of them waits for a thread that the
kernel has descheduled. Measured on 2 cores with other work running: the shipped model's n = 10 took 130 s with 2
threads against 5 s with one (docs/benchmarks.md, "Threads").

The rule (:func:`use_threads`, used around a whole call by :class:`pyinpaint.inpainter.Inpainter` and the
evaluation):

1. the work caps the count: a sampling step of ``n`` samples costs about ``n`` x (PixelCNN parameters)
   multiply-adds (:func:`sampling_work`), and a second thread pays only from :data:`MACS_PER_THREAD` per step
   on (measured: docs/benchmarks.md); the texture generator and other whole-image work may use every core;
2. the load lowers it: every :data:`INTERVAL` seconds the CPU time of OTHER processes (``/proc/stat`` minus this
   process's own time) is read, and the call uses only the cores they leave free (a core counts as free while
   others use less than :data:`SPARE` of it), shared among this process's calls that run at the same time.
   It starts with one thread until the first reading. Without ``/proc/stat`` (not Linux) step 1 alone decides.

``threads=k`` (a positive integer) fixes the count for the call instead. The caller's setting
(``torch.set_num_threads``) is restored when the call ends, also on an exception. Interop threads
(``torch.set_num_interop_threads``) are never touched: they can be set only once per process, and the pipeline
does not use them. ``torch.set_num_threads`` holds for the calling thread (OpenMP's count is per thread) and sets
the default that threads running their first torch op pick up; calls in several Python threads at once are
counted here, so the last one out restores the value found by the first one in. A thread that runs its first
torch op during a call inherits that call's count (PyTorch gives no per-thread setter).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

MACS_PER_THREAD = 100e6  # multiply-adds per sampling step from which a second thread pays (docs/benchmarks.md)
INTERVAL = 0.2  # seconds between two readings of the machine's load
SPARE = 0.25  # a core is free while other processes use less than this fraction of it

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def check_threads(threads: Any) -> int | None:
    """``threads`` validated: None (choose per call) or a positive integer. ValueError otherwise."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) and not hasattr(threads, "__index__"):
        raise ValueError(f"threads must be None (choose per call) or a positive integer (got {threads!r})")
    k = int(threads.__index__())
    if k < 1:
        raise ValueError(f"threads must be None (choose per call) or a positive integer (got {threads!r})")
    return k


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def sampling_work(pixelcnn: torch.nn.Module, n: int) -> float:
    """Multiply-adds of one cached-sampler step for ``n`` samples: each position's activations are computed once,
    so a step costs about one product per PixelCNN parameter and sample."""
    return float(n) * sum(p.numel() for p in pixelcnn.parameters())


def threads_for(work: float, cores: int | None = None) -> int:
    """Threads that pay for ``work`` multiply-adds per step: one per :data:`MACS_PER_THREAD`, 1 to ``cores``."""
    cores = available_cores() if cores is None else cores
    if not math.isfinite(work):
        return cores
    return max(1, min(cores, int(work // MACS_PER_THREAD)))


def _cpu_times() -> tuple[float, float, float] | None:
    """(monotonic time, CPU seconds busy on the whole machine, CPU seconds of this process), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    v = [int(x) for x in fields[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal (not idle, iowait)
    t = os.times()
    return time.monotonic(), busy / _CLK_TCK, t.user + t.system


_LOCK = threading.Lock()
_ENTERED = 0  # calls inside use_threads, in all threads of this process
_ADAPTIVE = 0  # of which choose their count from the load
_OUTER: int | None = None  # torch.get_num_threads() before the first of them
_LOCAL = threading.local()  # depth: calls inside use_threads in this thread


class Threads:
    """The thread count of one call (from :func:`use_threads`): ``count`` now, ``tick()`` to follow the load,
    ``phase(work)`` when the work per step changes, ``wrap(progress)`` to tick from a progress callback."""

    def __init__(self, fixed: int | None, work: float, cores: int):
        self.fixed, self.cores = fixed, cores
        self.cap = fixed or threads_for(work, cores)
        self.count = fixed or 1
        self.others: float | None = None  # cores busy with other processes at the last reading
        self.history: list[int] = [self.count]  # every count used, in order (for tests and benchmarks)
        self._last = _cpu_times() if fixed is None and self.cap > 1 else None
        self._next = time.monotonic() + INTERVAL

    def _set(self, k: int) -> None:
        if k != self.count:
            torch.set_num_threads(k)
            self.count = k
            self.history.append(k)

    def _decide(self) -> None:
        """Read the load (if the last reading is at least INTERVAL / 2 old: /proc/stat counts in 10 ms ticks) and
        set the count: the cores other processes leave free, shared among this process's calls, at most the cap."""
        cur = _cpu_times()
        if cur is None or self._last is None or cur[0] - self._last[0] < INTERVAL / 2:
            return
        wall = cur[0] - self._last[0]
        self.others = max(0.0, (cur[1] - self._last[1]) - (cur[2] - self._last[2])) / wall
        self._last = cur
        self._next = cur[0] + INTERVAL
        free = (self.cores - self.others + SPARE) / max(1, _ADAPTIVE)
        self._set(max(1, min(self.cap, int(free))))

    def tick(self) -> None:
        """Re-decide from the load if :data:`INTERVAL` has passed since the last reading (cheap otherwise)."""
        if self._last is not None and time.monotonic() >= self._next:
            self._decide()

    def phase(self, work: float) -> None:
        """The next part of the call does ``work`` multiply-adds per step (``math.inf``: whole-image work)."""
        if self.fixed is not None:
            return
        self.cap = threads_for(work, self.cores)
        if self.cap > 1 and self._last is None:
            self._last = _cpu_times()
            self._next = time.monotonic() + INTERVAL
        if self.count > self.cap:
            self._set(self.cap)
        elif self.others is not None and self.count < self.cap:  # the last reading may allow more now
            free = (self.cores - self.others + SPARE) / max(1, _ADAPTIVE)
            self._set(max(1, min(self.cap, int(free))))
        self.tick()

    def ticking(self, items: Iterable[Any]) -> Iterator[Any]:
        """``items``, ticking before each (for a loop over batches)."""
        for item in items:
            self.tick()
            yield item

    def wrap(self, progress: Callable[..., Any] | None) -> Callable[..., Any]:
        """A progress callback that ticks, then calls ``progress`` (if any) with the same arguments."""
        def report(*args: Any) -> Any:
            self.tick()
            return None if progress is None else progress(*args)

        return report


@contextlib.contextmanager
def use_threads(threads: int | None = None, work: float = math.inf, *,
                device: torch.device | str | None = None) -> Iterator[Threads]:
    """Run the body with the threads the rule chooses (see the module's docstring), or ``threads`` if given, then
    restore the caller's ``torch.set_num_threads``. ``work``: multiply-adds per step of the first part.
    On a CUDA ``device`` the automatic rule leaves the setting alone (the work runs on the GPU)."""
    global _ENTERED, _ADAPTIVE, _OUTER
    fixed = check_threads(threads)
    cores = available_cores()
    if fixed is None and device is not None and torch.device(device).type != "cpu":
        fixed = torch.get_num_threads()
    depth = getattr(_LOCAL, "depth", 0)
    adaptive = fixed is None and depth == 0  # a call inside a call of the same thread shares its cores
    with _LOCK:
        # get_num_threads first: a thread's first torch call initialises its count from the process default, and
        # must not do so later, over the count set here
        current = torch.get_num_threads()
        if _ENTERED == 0:
            _OUTER = current
        # What this call restores: inside another call of this thread, that call's count; else the count found by
        # the first call in (a thread entering while another thread's call runs may hold that call's temporary
        # count, picked up at its first torch op).
        own = current if depth else _OUTER
        _ENTERED += 1
        _ADAPTIVE += adaptive
        state = Threads(fixed, work, cores)
        torch.set_num_threads(state.count)
    _LOCAL.depth = depth + 1
    try:
        yield state
    finally:
        _LOCAL.depth = depth
        with _LOCK:
            _ENTERED -= 1
            _ADAPTIVE -= adaptive
            torch.set_num_threads(own)
