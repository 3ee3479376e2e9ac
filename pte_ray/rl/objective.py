"""What one learner step minimises over a shard: GRPO's clipped policy loss or SFT's weighted NLL.

The learner's loop is the same for every stage (micro-batches of segment replay into a shadow
adapter, one all-reduce of the batch's size, one DeepSpeed step). An objective tells it, for its
shard: how much each row weighs in the normaliser (tokens, sequences or loss weight), which loss a
micro-batch replays with, what eviction record replay must reproduce, and how far the replayed
log-probs are from the ones the rollout recorded.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.nn.utils.rnn import pad_sequence

from pte_ray.records import LearnerShard, SFTShard
from pte_ray.rl.distill import DistillConfig, TopKDistillLoss, token_advantages
from pte_ray.rl.grpo import GRPOConfig, GRPOLoss
from pte_ray.rl.sft import SFTLoss


def pad_rows(rows: list[list[float]], device: torch.device | str = "cpu") -> torch.Tensor:
    """Ragged per-token rows -> [n, max T_i] fp32, zero-padded (masked out by the losses)."""
    t = pad_sequence([torch.tensor(r, dtype=torch.float32) for r in rows], batch_first=True)
    return t.to(device)


def _pad3(rows: list, k: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Ragged [n][T_i][k] -> [n, max T_i, k], zero-padded (padding is masked out)."""
    t_max = max(len(r) for r in rows)
    out = torch.zeros(len(rows), t_max, k, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out.to(device)


class Objective(Protocol):
    prompts: list[list[int]]
    completions: list[list[int]]
    pad_id: int
    profile: str | None

    def size(self, rows: range) -> float:
        """The rows' share of the batch normaliser (summed over ranks by the learner)."""
        ...

    def loss(self, sl: slice, scale: float, device: torch.device) -> Any:
        """The ``LossFn`` of rows ``sl`` (with ``stats()``); ``scale`` = rank's share * world."""
        ...

    def record(self, sl: slice) -> tuple[list[list[int]] | None, list[list[list[int]]] | None]:
        """(eviction steps, evicted slots) the replay must reproduce (None: recompute them)."""
        ...

    def replay_diff(self, sl: slice, logprobs: torch.Tensor) -> tuple[float, float]:
        """(max, token mean) |replayed - recorded| log-prob over rows ``sl`` (0: none recorded)."""
        ...


class GRPOObjective:
    """GRPO on sampled rollouts: the PPO-clip loss against the rollout's log-probs."""

    def __init__(
        self,
        shard: LearnerShard,
        cfg: GRPOConfig,
        distill: DistillConfig | None = None,
        temperature: float = 1.0,
        behavior: str = "rollout",
        learner_old: list[list[float]] | None = None,
    ) -> None:
        """``behavior`` (resolved: rollout or learner) says what pi_old is; ``learner_old``:
        the learner's own no-grad replay of the shard (needed with several mini-batches; with
        one, the replay's detached log-probs are the same thing, at no cost)."""
        self.shard, self.cfg, self.temperature = shard, cfg, temperature
        self.distill = distill if distill is not None and distill.coef > 0 else None
        self.behavior, self.learner_old = behavior, learner_old
        self.prompts, self.completions = shard.prompts, shard.completions
        self.pad_id, self.profile = shard.pad_id, shard.profile

    def size(self, rows: range) -> float:
        lens = [len(self.completions[i]) for i in rows]
        return float(sum(lens) if self.cfg.loss_agg == "token-mean" else len(lens))

    def loss(self, sl: slice, scale: float, device: torch.device) -> GRPOLoss | TopKDistillLoss:
        s = self.shard
        old = pad_rows(s.logprobs[sl], device)  # the rollout's (the sampling policy's)
        lens = torch.tensor([len(c) for c in s.completions[sl]])
        mask = (torch.arange(old.shape[1])[None] < lens[:, None]).to(device)
        ref = pad_rows(s.ref_logprobs[sl], device) if s.ref_logprobs is not None else None
        adv = torch.tensor(s.advantages[sl], device=device)
        d = self.distill
        if d is not None and d.kind == "reverse_kl":
            if ref is None:
                raise ValueError("distill.coef > 0 needs the teacher's log-probs (reference)")
            adv = token_advantages(adv, old, ref, d.coef) * mask
        kl_ref = ref if self.cfg.kl_coef > 0 else None
        if self.behavior == "learner":
            mine = pad_rows(self.learner_old[sl], device) if self.learner_old else None
            loss = GRPOLoss(mine, adv, mask, self.cfg, kl_ref, scale, rollout_logp=old)
        else:
            loss = GRPOLoss(old, adv, mask, self.cfg, kl_ref, weight_scale=scale)
        if d is None or d.kind != "topk_forward_kl":
            return loss
        if s.topk_ids is None or s.topk_logprobs is None:
            raise ValueError("distill.kind=topk_forward_kl needs the teacher's top-k (reference)")
        ids = _pad3(s.topk_ids[sl], d.topk, device, torch.long)
        tlp = _pad3(s.topk_logprobs[sl], d.topk, device, torch.float32)
        return TopKDistillLoss(loss, ids, tlp, d.coef, self.temperature)

    def record(self, sl: slice) -> tuple[list[list[int]], list[list[list[int]]]]:
        return self.shard.eviction_steps[sl], self.shard.evicted_slots[sl]

    def replay_diff(self, sl: slice, logprobs: torch.Tensor) -> tuple[float, float]:
        old = pad_rows(self.shard.logprobs[sl], logprobs.device)
        lens = torch.tensor([len(c) for c in self.completions[sl]], device=logprobs.device)
        mask = torch.arange(old.shape[1], device=logprobs.device)[None] < lens[:, None]
        d = (logprobs[:, : old.shape[1]] - old).abs() * mask
        return float(d.max()), float(d.sum() / mask.sum().clamp(min=1))


class SFTObjective:
    """Teacher forcing on targets: the weighted NLL, normalised by the batch's total weight.

    The targets were never sampled under the bounded cache, so there is no eviction record:
    replay computes the schedule the rollout would have had (window policy).
    """

    def __init__(self, shard: SFTShard) -> None:
        self.shard = shard
        self.prompts, self.completions = shard.prompts, shard.completions
        self.pad_id, self.profile = shard.pad_id, shard.profile

    def size(self, rows: range) -> float:
        return float(sum(sum(self.shard.weights[i]) for i in rows))

    def loss(self, sl: slice, scale: float, device: torch.device) -> SFTLoss:
        raw = pad_rows(self.shard.weights[sl], device)
        total = self.size(range(*sl.indices(len(self.completions))))
        return SFTLoss(raw * (scale / max(total, 1e-12)), raw)

    def record(self, sl: slice) -> tuple[None, None]:
        return None, None

    def replay_diff(self, sl: slice, logprobs: torch.Tensor) -> tuple[float, float]:
        return 0.0, 0.0
