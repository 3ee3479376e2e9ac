"""The learning-rate schedule: linear warm-up, then constant, cosine or linear decay.

A multiplier of ``optim.lr`` per optimizer step (``train.steps x learner.mini_batches`` in all),
handed to DeepSpeed as a ``LambdaLR`` so its state is checkpointed with the optimizer and a
resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "cosine", "linear"]


def lr_factor(step: int, total: int, warmup: int, kind: Schedule, min_ratio: float) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (from 0)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    done = min(max(step - warmup, 0), span) / span
    shape = 0.5 * (1.0 + math.cos(math.pi * done)) if kind == "cosine" else 1.0 - done
    return min_ratio + (1.0 - min_ratio) * shape
