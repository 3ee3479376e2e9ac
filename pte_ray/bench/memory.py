"""Peak memory of a measured section, on CUDA or CPU: what the bounded-cache claims rest on.

A process's lifetime peak would include model loading and the rollout before the section, which
can hide what the section itself adds; so the CPU high-water mark is reset at entry where Linux
allows it, and the CUDA allocator's peak is reset likewise.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def _proc_kb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return None


class PeakMemory:
    """Peak memory of a ``with`` block and what it added: ``peak_mb`` and ``extra_mb``.

    CUDA: the allocator's peak. CPU (Linux): the resident high-water mark, reset at entry
    (``/proc/self/clear_refs``), so what ran before (model load, the rollout) cannot mask it;
    elsewhere the process's lifetime peak (then run each measurement in a fresh process).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb = self.before_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before_mb = torch.cuda.memory_allocated() / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.before_mb = (_proc_kb("VmRSS") or 0.0) / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        hwm = _proc_kb("VmHWM")
        self.peak_mb = (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024

    @property
    def extra_mb(self) -> float:
        return max(0.0, self.peak_mb - self.before_mb)
