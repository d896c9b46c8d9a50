"""What a stage cost: wall seconds, CPU seconds and peak resident memory of the process tree.

``with StageProfile() as prof: ...`` then ``prof.as_dict()`` ->
``{"wall_seconds", "cpu_seconds", "peak_rss_mb"}``.

* CPU seconds are user + system time of this process and of the children it waited for
  (``os.times``), so stages that run in a subprocess (``accelerate launch``, ``vllm serve``) count.
* Peak RSS is sampled (every ``interval`` seconds, by a daemon thread with psutil) over this process
  and all its live descendants, summed: the kernel's own high-water mark (``ru_maxrss``) only ever
  grows over the whole process life, so it cannot say what one stage of a pipeline run used. A peak
  shorter than the interval can be missed; the start and end are always sampled.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil


def tree_rss_bytes(proc: psutil.Process | None = None) -> int:
    """Resident bytes of ``proc`` (default: this process) plus every live descendant."""
    proc = proc or psutil.Process()
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a child that exited between listing and reading
    return total


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StageProfile:
    """Context manager measuring wall time, CPU time and the sampled peak RSS of a block."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.wall = self.cpu = 0.0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> StageProfile:
        self._t0, self._c0 = time.perf_counter(), _cpu_seconds()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="stage-profile", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.wall = time.perf_counter() - self._t0
        self.cpu = _cpu_seconds() - self._c0

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_seconds": round(self.wall, 1),
            "cpu_seconds": round(self.cpu, 1),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
        }
