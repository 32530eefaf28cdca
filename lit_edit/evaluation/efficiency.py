"""Efficiency measurement: wall time and peak memory of a code region.

Both are reusable context managers; wrap only the edit itself (not model loading or
evaluation)::

    watch, memory = Stopwatch(device), PeakMemory(device)
    for request in requests:
        with watch, memory:
            handle = editor.edit(model, tokenizer, [request])
        ...
    seconds_per_edit = watch.elapsed / watch.count
    peak_memory_mb = memory.max_peak_mb
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

__all__ = ["PeakMemory", "Stopwatch"]

_MB = 1024 * 1024
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_rss_peak() -> bool:
    """Reset the process' peak RSS to its current RSS (Linux); False if not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    """Peak RSS in MB: ``VmHWM`` from /proc/self/status, else ``ru_maxrss`` (lifetime peak)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / _MB if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, kB elsewhere


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory (MB) of the code inside ``with``; ``peak_mb`` is that of the latest region.

    - CUDA device: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at
      entry, i.e. the peak of tensor memory on that GPU during the region (model weights
      included, as they are allocated).
    - CPU: the process' peak resident set size during the region. On Linux the high-water mark
      is reset at entry (``5`` written to ``/proc/self/clear_refs``) and ``VmHWM`` is read at exit.
      Where that reset is not permitted (or not Linux) the value is the process' lifetime peak
      and ``lifetime_peak`` is set to True.

    ``max_peak_mb`` is the largest ``peak_mb`` over all regions measured with this object.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.max_peak_mb: float | None = None
        self.lifetime_peak = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_rss_peak():
            self.lifetime_peak = True
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            _synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / _MB
        else:
            self.peak_mb = _rss_peak_mb()
        self.max_peak_mb = max(self.peak_mb, self.max_peak_mb or 0.0)


class Stopwatch:
    """Wall time (``time.perf_counter``) of the code inside ``with``, accumulated over uses.

    ``last``: seconds of the latest region; ``elapsed``: total seconds; ``count``: regions
    timed. With a CUDA device the GPU is synchronised at entry and exit, so queued kernels are
    counted in the region that launched them.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self.last = self.elapsed = 0.0
        self.count = 0

    def __enter__(self) -> Stopwatch:
        _synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        _synchronize(self.device)
        self.last = time.perf_counter() - self._start
        self.elapsed += self.last
        self.count += 1
