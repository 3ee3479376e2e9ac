"""What a run has done so far, in one record that only its own methods change.

The loop (``loop.py``) and a step's phases (``step.py``, ``sft.py``) read it and advance it
through these methods, so a reader finds every change to the run's progress here: the step,
the data cursor a checkpoint resumes from, the newest published weights, and the counters of
what went wrong (stale prefetches dropped, learner groups replaced).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pte_ray.records import PublishedWeights


@dataclass
class RunState:
    cursor: Any  # the data stream's cursor after the last batch learned from
    step: int = 0  # steps done
    weights: PublishedWeights | None = None  # the newest published version
    published_at: float = field(default_factory=time.perf_counter)
    dropped_stale: int = 0  # prefetched batches dropped as too stale, over the run
    dropped_now: int = 0  # ... while preparing the current step
    learner_restarts: int = 0  # learner groups replaced in this job
    steps_redone: int = 0  # steps thrown away by a restore (resumed from an older checkpoint)

    def published(self, weights: PublishedWeights) -> float:
        """A new version is out; returns the seconds since the previous one (a step's wall
        time when rollouts overlap learning)."""
        now = time.perf_counter()
        wall, self.weights, self.published_at = now - self.published_at, weights, now
        return wall

    def learned_from(self, cursor: Any) -> None:
        self.cursor = cursor

    def drop_stale(self) -> None:
        self.dropped_stale += 1
        self.dropped_now += 1

    def advance(self) -> None:
        """The step is done (its row written): on to the next."""
        self.step += 1
        self.dropped_now = 0

    def restore(self, step: int, cursor: Any) -> None:
        """Back to a checkpoint's step and cursor (resume, or a replaced learner group)."""
        self.steps_redone += max(self.step - step, 0)
        self.step, self.cursor, self.dropped_now = step, cursor, 0

    def learners_replaced(self) -> None:
        self.learner_restarts += 1
