"""What a step leaves behind: its metrics row (metrics.jsonl) and its rollout rows (Parquet).

Kept apart from the phases so the names a user reads in ``metrics.jsonl`` and in the rollout
files are defined in one place, next to how each is computed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from pte_ray.controller.batch import Batch, PhaseTimer
from pte_ray.records import LearnStats, LossStats, PublishedWeights, Scores
from pte_ray.rl.verdict import STATUSES

if TYPE_CHECKING:
    from pte_ray.run.prepare import Prepared


def step_metrics(
    step: int,
    batch: Batch,
    scores: Scores,
    stats: list[LearnStats],
    weights: PublishedWeights,
    pools: dict[str, dict[str, int]],
    timer: PhaseTimer,
    ref: list[list[float]] | None = None,
) -> dict[str, Any]:
    """One ``metrics.jsonl`` row: rewards, the learners' view, rollout throughput, phase times,
    and each pool's size, faults and scaling decisions (``rollout_workers``, ``reward_retries``,
    ...: the same keys every step)."""
    ro, n = batch.rollouts, len(batch.prompts)
    rewards = torch.tensor(scores.rewards, dtype=torch.float32)  # as the advantages see them
    tokens = sum(len(t) for t in ro.tokens)
    return {
        "step": step + 1,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if n > 1 else 0.0,
        **learner_figures(stats),
        # the phase's wall time: with several calls per worker, no one call's time is the step's
        "tokens_per_s": tokens / max(batch.rollout_s, 1e-9),
        "completion_tokens_mean": tokens / n,
        "completion_tokens_max": max(len(t) for t in ro.tokens),
        # completions cut at sampling.max_new_tokens: too many and the budget is too small
        "truncated_frac": sum(r == "length" for r in ro.finish_reasons) / n,
        "evictions_per_seq": sum(len(e) for e in ro.eviction_steps) / n,
        "weight_version": weights.version,
        "rollout_version_min": min(ro.versions),
        "statuses": {s: scores.counts.get(s, 0) for s in STATUSES},
        **{f"{name}_{k}": v for name, pool in pools.items() for k, v in pool.items()},
        **_overlap(ro.versions, weights.version - 1, timer.seconds, pools["rollout"]),
        **timer.seconds,  # rollout_s, reward_ref_s, learn_s, publish_s, step_s (all of them)
        **_teacher_kl(ro.logprobs, ref),
    }


# LossStats field -> metrics.jsonl key, for the figures every GRPO step has
GRPO_FIGURES = {
    "kl": "kl",
    "loss": "loss",
    "entropy": "entropy",
    "clip_frac": "clip_frac",
    "replay_mean_diff": "logprob_replay_mean_diff",
    "ratio": "ratio",
}
OPTIONAL = ("distill_kl", "tis_weight")  # only where the settings make them


def learner_figures(stats: list[LearnStats]) -> dict[str, float]:
    """The ranks' view of the step as one: the loss summed over ranks (each holds its share),
    every other figure their mean; the grad norm (global), the peak memory (the largest)."""
    s = LossStats.combine([(r.stats, 1.0) for r in stats], sum_loss=True)
    out = {key: getattr(s, f) for f, key in GRPO_FIGURES.items()}
    out |= {f: getattr(s, f) for f in OPTIONAL if not math.isnan(getattr(s, f))}
    return out | {
        "grad_norm": stats[0].grad_norm,
        "learner_peak_mb": max(r.peak_mb for r in stats),
        "logprob_replay_diff": max(r.logprob_replay_diff for r in stats),
    }


def _teacher_kl(logp: list[list[float]], ref: list[list[float]] | None) -> dict[str, float]:
    """Token mean of log pi - log pi_ref at the sampled tokens: the k1 estimate of the reverse
    KL from the student to the reference (the teacher of distillation), when one scored them."""
    if ref is None:
        return {}
    num = sum(a - b for la, lb in zip(logp, ref, strict=True) for a, b in zip(la, lb, strict=True))
    return {"teacher_kl": num / max(sum(len(x) for x in logp), 1)}


def _overlap(
    versions: list[int], learned_on: int, sec: dict[str, float], rollout: dict[str, float]
) -> dict[str, float]:
    """Staleness of the rows learned from (versions behind the weights they were learned on)
    and the share of the step's wall time each side sat idle: what asynchronous rollouts buy."""
    stale = [learned_on - v for v in versions]
    wall = max(sec.get("wall_s", sec["step_s"]), 1e-9)
    busy = rollout["busy_s"] / max(rollout["workers"], 1)
    return {
        "staleness_mean": sum(stale) / len(stale),
        "staleness_max": max(stale),
        "rollout_idle_ratio": max(0.0, 1.0 - busy / wall),
        "learner_idle_ratio": max(0.0, 1.0 - sec["learn_s"] / wall),
    }


def step_rows(
    step: int, batch: Batch, scores: Scores, adv: list[float], data: Prepared
) -> list[dict[str, Any]]:
    """One rollout-file row per sample (schema: ``pte_ray/run/rollout_log.py``)."""
    ro, g = batch.rollouts, len(batch.prompts) // max(len(batch.examples), 1)
    return [
        {
            "step": step + 1,
            "prompt": data.prompt_text[batch.examples[i // g].index],
            "completion": ro.texts[i],
            "answer": batch.answers[i],
            "reward": scores.rewards[i],
            "status": scores.statuses[i],
            "version": ro.versions[i],
            "evictions": len(ro.eviction_steps[i]),
            "num_tokens": len(ro.tokens[i]),
            "group": i // g,
            "prompt_index": batch.examples[i // g].index,
            "advantage": adv[i],
            "evicted_slots": ro.evicted_slots[i] or None,
        }
        for i in range(len(batch.prompts))
    ]
