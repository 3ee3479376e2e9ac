"""The supervised stage: teacher-forced NLL of target solutions under the bounded cache.

GRPO's 0/1 reward almost never rewards a recall the base model cannot make, so the state path
gets no signal (README, "The recall task"). Teacher forcing gives every target token a gradient:
the learner replays each target against the bounded cache as the rollout would have built it
(segment replay, truncated or exact), and the loss is the weighted NLL of its tokens. Targets are
a data set's reference solutions or verified traces of a full-cache teacher. The answer's tokens
(from ``answer_marker`` on) weigh ``answer_weight`` times a reasoning token: 3 tokens in ~150
would otherwise be learned long after the rest.

The loss is a weighted sum over tokens with weights fixed up front (normalised over the global
batch), so it decomposes over replay's segments exactly as GRPO's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pte_ray.records import LossStats


class SFTConfig(BaseModel):
    """The ``sft`` section of the run config (used when ``train.stage = sft``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["solutions", "teacher"] = Field(
        "solutions",
        description="solutions: the data's solution column; teacher: verified samples of the "
        "full-cache teacher (the reference policy: base model or reference.adapter)",
    )
    answer_weight: float = Field(
        1.0, gt=0.0, description="loss weight of the answer's tokens (answer_marker and after)"
    )
    answer_marker: str = Field("####", description="text that starts the answer in a target")
    teacher_samples: int = Field(4, ge=1, description="teacher samples per prompt (source=teacher)")
    teacher_prompts: int | None = Field(
        None, ge=1, description="training prompts the teacher samples (None: all of them)"
    )


def target_weights(
    offsets: Sequence[tuple[int, int]], text: str, marker: str, weight: float, eos: bool
) -> list[float]:
    """Per-token loss weights of a target: ``weight`` from the token holding the first
    ``marker`` on (and on an appended EOS), 1 before. ``offsets`` are the tokens' character
    spans in ``text``; a target without the marker weighs every token 1."""
    at = text.find(marker) if marker else -1
    out = [weight if at >= 0 and end > at else 1.0 for _, end in offsets]
    if eos:
        out.append(weight if at >= 0 else 1.0)
    return out


class SFTLoss:
    """Weighted NLL of the batch, callable per replay segment (``method.segments.LossFn``).

    ``weights`` [B, T] are the per-token weights (0 on padding) already divided by the global
    batch's total weight and scaled for the rank's share, so the segments' losses sum to this
    rank's part of the batch loss. Statistics are unweighted token means of the NLL, overall
    and on the answer tokens (weight above 1), which is what a reader compares across runs.
    """

    def __init__(self, weights: torch.Tensor, raw: torch.Tensor) -> None:
        self.weights, self.raw = weights, raw  # raw: the unnormalised weights [B, T]
        self.sums = {"loss": 0.0, "nll": 0.0, "answer_nll": 0.0, "entropy": 0.0}
        self.tokens = float((raw > 0).sum())
        self.answer_tokens = float((raw > 1.0).sum())

    def __call__(
        self, logp: torch.Tensor, ent: torch.Tensor, rows: torch.Tensor, cols: slice
    ) -> torch.Tensor:
        w, raw = self.weights[rows][:, cols], self.raw[rows][:, cols]
        loss = -(w * logp).sum()
        with torch.no_grad():
            self.sums["loss"] += float(loss)
            real = (raw > 0).to(logp.dtype)
            self.sums["nll"] -= float((real * logp).sum())
            self.sums["answer_nll"] -= float(((raw > 1.0).to(logp.dtype) * logp).sum())
            self.sums["entropy"] += float((real * ent).sum())
        return loss

    def stats(self) -> LossStats:
        """Token means over this loss's rows (answer NLL: nan where no token is weighted up)."""
        n, na = max(self.tokens, 1.0), self.answer_tokens
        return LossStats(
            loss=self.sums["loss"],
            nll=self.sums["nll"] / n,
            answer_nll=self.sums["answer_nll"] / na if na else float("nan"),
            entropy=self.sums["entropy"] / n,
        )
