"""GRPO: group-normalised advantages, PPO-clip with clip-higher, k3 KL to the reference.

The loss is a weighted sum over tokens with weights fixed for the whole batch up front
(token-mean: 1/N_tokens; seq-mean: 1/(T_i * B)), so it decomposes exactly over the segments of
segment replay: each segment back-propagates its own share and the sum equals the batch loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pte_ray.records import NAN, LossStats


class GRPOConfig(BaseModel):
    """The ``grpo`` section of the run config, declared once (pydantic, like the method's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_size: int = Field(8, ge=1, description="samples per prompt (one GRPO group)")
    use_std: bool = Field(True, description="divide advantages by the group's reward std")
    eps: float = Field(1e-6, gt=0.0, description="added to the std before dividing")
    clip_low: float = Field(0.2, ge=0.0, description="PPO clip below: ratio >= 1 - clip_low")
    clip_high: float = Field(0.28, ge=0.0, description="clip-higher: ratio <= 1 + clip_high")
    kl_coef: float = Field(0.0, ge=0.0, description="k3 KL weight (0: no reference pool)")
    kl_clamp: float = Field(10.0, gt=0.0, description="|ref - logp| bound inside k3's exp")
    kl_value_clamp: float = Field(
        10.0, gt=0.0, description="bound on k3's value (as verl's low_var_kl); no gradient past it"
    )
    # The PPO ratio's pi_old. In bf16 the rollout's log-probs (one token at a time) and the
    # learner's replay (a segment at a time) of the same weights differ by up to 3-5e-2, so an
    # on-policy ratio is off 1 by that much and the clip bites on noise: ``learner`` takes pi_old
    # from the learner's own replay (no-grad, before the step's first update) and can weigh
    # each token by min(pi_learner / pi_rollout, tis_cap) (truncated importance sampling).
    behavior: Literal["auto", "rollout", "learner"] = Field(
        "auto",
        description="pi_old of the PPO ratio: rollout's log-probs, or the learner's replay "
        "(auto: learner in bf16/fp16, rollout in fp32)",
    )
    tis_cap: float | None = Field(
        None, gt=0.0, description="learner behavior: weigh tokens by min(pi_old/pi_rollout, cap)"
    )
    drop_zero_adv: bool = Field(
        False, description="drop groups whose rewards are all equal, refill from the stream (DAPO)"
    )
    max_refill: int = Field(2, ge=0, description="refill draws per step (drop_zero_adv)")
    loss_agg: Literal["token-mean", "seq-mean"] = Field(
        "token-mean", description="token-mean: every token alike; seq-mean: every sample alike"
    )


def group_advantages(
    rewards: torch.Tensor, group_size: int, use_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - mean_g) / (std_g + eps) per group of ``group_size`` consecutive samples."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.float().view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if use_std and group_size > 1:
        std = g.std(dim=1, keepdim=True)
        adv = torch.where(std > 0, adv / (std + eps), torch.zeros_like(adv))  # all-equal group
    return adv.view(-1)


def token_weights(mask: torch.Tensor, agg: str) -> torch.Tensor:
    """Per-token weights [B, T] summing to 1 over the batch (0 on padding)."""
    m = mask.float()
    if agg == "token-mean":
        return m / m.sum().clamp(min=1.0)
    per_seq = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)
    return per_seq / max(mask.shape[0], 1)


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0, value_clamp: float = 10.0
) -> torch.Tensor:
    """k3 estimator of KL(pi || ref): exp(d) - d - 1 >= 0 with d = ref - logp.

    k3 is unbounded (2.6e10 at logp -25 vs ref -1: one token would swamp a step), so d is
    clamped to [-clamp, clamp] first, and the value to at most ``value_clamp`` (verl's
    ``low_var_kl``): with d clamped alone, a token at d = 10 still weighs e^10 x kl_coef in the
    gradient. The gradient is zero where either clamp bites.
    """
    d = (ref_logp - logp).clamp(-clamp, clamp)
    return (torch.exp(d) - d - 1.0).clamp(max=value_clamp)


def token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    cfg: GRPOConfig,
    ref_logp: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO loss (same shape as ``logp``; ``adv`` broadcasts) and per-token stats.

    ``mask`` marks real tokens. Padding is taken out with ``torch.where`` before any ``exp``:
    a weight of 0 does not cancel an overflow (0 * inf = NaN), and a pad token's log-prob can
    be anything. Padded positions get loss 0 and no gradient.
    """
    if mask is not None:
        logp = torch.where(mask, logp, old_logp.detach())
        if ref_logp is not None:
            ref_logp = torch.where(mask, ref_logp, logp.detach())
    ratio = torch.exp(logp - old_logp)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(pg_unclipped, pg_clipped)
    stats = {"clipped": (pg_clipped > pg_unclipped).float(), "ratio": ratio.detach()}
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp, cfg.kl_clamp, cfg.kl_value_clamp)
        loss = loss + cfg.kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats


class GRPOLoss:
    """The batch's loss, callable per replay segment (the ``LossFn`` of ``method.replay``).

    Holds the batch tensors [B, T] and sums weighted statistics as segments arrive, so the
    metrics of a step (loss, clip fraction, KL, entropy, ratio) come out exact at the end.
    ``old_logp`` None: pi_old is the replay's own log-prob (detached): the learner's policy
    before the update, when the step has one optimizer step. ``rollout_logp`` with
    ``cfg.tis_cap``: each token weighs min(pi_old / pi_rollout, cap).
    """

    def __init__(
        self,
        old_logp: torch.Tensor | None,
        adv: torch.Tensor,
        mask: torch.Tensor,
        cfg: GRPOConfig,
        ref_logp: torch.Tensor | None = None,
        weight_scale: float = 1.0,
        rollout_logp: torch.Tensor | None = None,
    ) -> None:
        self.old_logp, self.adv, self.mask, self.cfg = old_logp, adv.float(), mask, cfg
        self.rollout_logp = rollout_logp if cfg.tis_cap is not None else None
        self.ref_logp = ref_logp
        self.weights = token_weights(mask, cfg.loss_agg) * weight_scale
        self.sums: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0}
        self.sums["ratio"] = 0.0
        self._wsum = float(self.weights.sum()) or 1.0

    def __call__(
        self, logp: torch.Tensor, ent: torch.Tensor, rows: torch.Tensor, cols: slice
    ) -> torch.Tensor:
        w = self.weights[rows][:, cols]
        ref = self.ref_logp[rows][:, cols] if self.ref_logp is not None else None
        # per-sequence [B] (GRPO) or per-token [B, T] (with distillation's dense term)
        adv = self.adv[rows][:, cols] if self.adv.dim() == 2 else self.adv[rows][:, None]
        m = self.mask[rows][:, cols]
        old = logp.detach() if self.old_logp is None else self.old_logp[rows][:, cols]
        loss_tok, st = token_loss(logp, old, adv, self.cfg, ref, m)
        if self.rollout_logp is not None:  # truncated importance weight, rollout -> learner
            d = torch.where(m, old - self.rollout_logp[rows][:, cols], torch.zeros_like(old))
            tis = torch.exp(d.clamp(max=20.0)).clamp(max=self.cfg.tis_cap)
            loss_tok = loss_tok * tis
            st["tis"] = tis
        if not m.all():
            loss_tok = torch.where(m, loss_tok, torch.zeros_like(loss_tok))
        loss = (w * loss_tok).sum()
        with torch.no_grad():
            self.sums["loss"] += float(loss)
            self.sums["clip_frac"] += float((w * st["clipped"]).sum()) / self._wsum
            self.sums["ratio"] += float((w * st["ratio"]).sum()) / self._wsum
            self.sums["entropy"] += float((w * ent).sum()) / self._wsum
            if "kl" in st:
                self.sums["kl"] += float((w * st["kl"]).sum()) / self._wsum
            if "tis" in st:
                tis = float((w * st["tis"]).sum()) / self._wsum
                self.sums["tis_weight"] = self.sums.get("tis_weight", 0.0) + tis
        return loss

    def stats(self) -> LossStats:
        """What this loss saw over its rows (``metrics`` of a learner step)."""
        s = self.sums
        return LossStats(
            loss=s["loss"],
            entropy=s["entropy"],
            clip_frac=s["clip_frac"],
            ratio=s["ratio"],
            kl=s["kl"],
            tis_weight=s.get("tis_weight", NAN),
        )
