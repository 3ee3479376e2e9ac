"""On-policy distillation from the full-cache teacher, inside GRPO.

The student samples under the bounded cache; the reference role scores the same tokens with the
teacher's whole context (the base model, or ``reference.adapter``). Two signals:

- ``reverse_kl``: per token, ``-(log pi_student - log pi_teacher)`` at the sampled token, a dense
  reward whose policy gradient is that of the reverse KL to the teacher (Agarwal et al., GKD;
  Thinking Machines' on-policy distillation). It joins GRPO's sequence advantage token by token,
  so the PPO ratio and clip act on both, and the behaviour log-probs correct staleness for both.
- ``topk_forward_kl``: the teacher also returns its k most likely tokens per position with their
  log-probs; the student is pulled toward them with the forward KL over those k (renormalised),
  a full-distribution signal where one sampled token says little.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pte_ray.records import LossStats


class DistillConfig(BaseModel):
    """The ``distill`` section of the run config (GRPO stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coef: float = Field(0.0, ge=0.0, description="weight of the distillation term (0: off)")
    kind: Literal["reverse_kl", "topk_forward_kl"] = Field(
        "reverse_kl",
        description="reverse_kl: per-token advantage -(logp - logp_teacher) at sampled tokens; "
        "topk_forward_kl: forward KL to the teacher's top-k tokens per position",
    )
    topk: int = Field(8, ge=1, description="teacher tokens per position (topk_forward_kl)")


def token_advantages(
    adv: torch.Tensor, logp: torch.Tensor, teacher: torch.Tensor, coef: float
) -> torch.Tensor:
    """GRPO's sequence advantage [B] plus ``coef`` times the per-token reverse-KL reward
    ``-(logp - teacher)`` [B, T] (both at the behaviour policy's sampled tokens)."""
    return adv[:, None] - coef * (logp - teacher)


def topk_forward_kl(
    logits: torch.Tensor, ids: torch.Tensor, teacher_logp: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-position forward KL over the teacher's top-k tokens, renormalised on both sides.

    logits [b, n, V] (the student's), ids [b, n, k] the teacher's tokens, teacher_logp
    [b, n, k] their log-probs; returns [b, n]. Renormalising the student over the same k tokens
    makes it a proper KL between two k-way distributions (zero when they agree on those k).
    """
    student = torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids)
    student = student - torch.logsumexp(student, dim=-1, keepdim=True)
    t = teacher_logp - torch.logsumexp(teacher_logp, dim=-1, keepdim=True)
    return (t.exp() * (t - student)).sum(-1)


class TopKDistillLoss:
    """GRPO's loss plus ``coef`` x the forward KL to the teacher's top-k at every token, with
    GRPO's token weights (so it normalises, and decomposes over replay's segments, alike)."""

    needs_logits = True  # replay passes the segment's logits

    def __init__(
        self,
        inner: Any,  # rl.grpo.GRPOLoss
        ids: torch.Tensor,  # [B, T, k]
        teacher: torch.Tensor,  # [B, T, k]
        coef: float,
        temperature: float,
    ) -> None:
        self.inner, self.ids, self.teacher = inner, ids, teacher
        self.coef, self.temperature = coef, temperature
        self.kl_sum = 0.0

    def __call__(
        self,
        logp: torch.Tensor,
        ent: torch.Tensor,
        rows: torch.Tensor,
        cols: slice,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        loss = self.inner(logp, ent, rows, cols)
        w, m = self.inner.weights[rows][:, cols], self.inner.mask[rows][:, cols]
        ids, tlp = self.ids[rows][:, cols], self.teacher[rows][:, cols]
        kl = topk_forward_kl(logits, ids, tlp, self.temperature)
        kl = torch.where(m, kl, torch.zeros_like(kl))
        self.kl_sum += float((w * kl).sum().detach()) / self.inner._wsum
        return loss + self.coef * (w * kl).sum()

    def stats(self) -> LossStats:
        return replace(self.inner.stats(), distill_kl=self.kl_sum)
