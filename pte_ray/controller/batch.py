"""What a step carries between its phases: the batch of prompts and rollouts, and the phase
timer. Kept apart from the controller so the modules that log or refill a step read these
records without importing the controller."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pte_ray.records import Rollouts
from pte_ray.rl.data import Example


def split(n_groups: int, parts: int) -> list[range]:
    """Contiguous, near-equal ranges of whole groups (a group is never split)."""
    parts = max(1, min(parts, n_groups))
    base, extra = divmod(n_groups, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return out


class PhaseTimer:
    """``with timer("learn"):`` adds the block's wall time to ``timer.seconds["learn_s"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"{phase}_s"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0


@dataclass(frozen=True)
class Batch:
    """One step's prompts and their rollouts: what ``collect`` hands to the rest of the step."""

    examples: list[Example]  # [n_groups] the drawn dataset rows
    prompts: list[list[int]]  # [n][P_i] each example's prompt ids, group_size times in a row
    answers: list[str]  # [n] gold answers, aligned with ``prompts``
    rollouts: Rollouts  # [n] rows, aligned with ``prompts``
    cursor: Any  # the data stream's cursor after this batch (what a checkpoint resumes from)
    rollout_s: float  # wall time of ``collect`` (it may have run ahead, in another thread)
    pool: dict[str, float]  # the rollout pool's faults, scaling and busy time in ``collect``
