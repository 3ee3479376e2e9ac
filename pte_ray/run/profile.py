"""Bounded torch-profiler traces of chosen steps (``train.profile_steps``), no Ray.

A rollout worker's generate call and a learner rank's RL step of a profiled step run under
``torch.profiler``; the trace is written gzipped as ``<name>.pt.trace.json.gz`` (Chrome trace
format: Perfetto opens it, TensorBoard's profiler plugin reads ``*.pt.trace.json.gz``). Shapes
and stacks are off to keep traces small, and one bigger than ``max_mb`` is deleted with a
warning rather than filling the run directory.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def traced(out_dir: str | None, name: str, max_mb: float) -> Iterator[None]:
    """Profile the block into ``out_dir/name.pt.trace.json.gz`` (``out_dir`` None: no-op)."""
    if out_dir is None:
        yield
        return
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=False, with_stack=False) as prof:
        yield
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f".{name}.{os.getpid()}.json"
    final = out / f"{name}.pt.trace.json.gz"
    try:
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(final, "wb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        raw.unlink(missing_ok=True)
    mb = final.stat().st_size / 2**20
    if mb > max_mb:
        final.unlink()
        log.warning("profile %s: %.1f MB > train.profile_max_mb=%g, dropped", final, mb, max_mb)
