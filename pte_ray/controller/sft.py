"""One supervised step, as named phases: targets, learner shards, learn, publish, evaluate, log.

The SFT stage (``train.stage = sft``) runs on the same learner group, checkpoints, resume,
metrics and progress as GRPO; only the step differs. Targets are the data's solutions, or the
full-cache teacher's verified samples (``controller/teacher.py``, drawn once before the first
step). Every target is replayed against the bounded cache through segment replay (truncated or
exact, ``replay.grad``), so the adapter and the thought encoder learn under the cache they will
generate with. The rollout and reward pools stay up for held-out evaluation (``train.eval_every``)
and for the teacher's samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pte_ray.actors import metrics
from pte_ray.actors.learner import Learner
from pte_ray.controller.batch import PhaseTimer, split
from pte_ray.controller.step import Controller
from pte_ray.records import LearnStats, LossStats, SFTShard
from pte_ray.rl.data.targets import Target


@dataclass(frozen=True)
class SFTBatch:
    """One step's targets, drawn from the stream (what ``collect`` hands to the step)."""

    targets: list[Target]
    cursor: Any  # the stream's cursor after this batch
    rollout_s: float = 0.0  # nothing generated: the loop's timing reads it


class SFTController(Controller):
    """The GRPO controller's roles and loop, with the supervised step."""

    def __init__(self, cfg: Any, run: Any, data: Any = None) -> None:
        super().__init__(cfg, run, data)
        if self.data.targets is None:  # sft.source=teacher: sample and verify them now
            from pte_ray.controller.teacher import teacher_targets

            self.data.targets = teacher_targets(self)
            self.data.stream = type(self.data.stream)(self.data.targets, seed=cfg.train.seed)
            self.state.learned_from(self.data.stream.cursor())

    def collect(self, step: int, weights: Any) -> SFTBatch:  # noqa: ARG002 (the loop's call)
        targets = self.data.stream.next_batch(self.cfg.train.prompts_per_step)
        return SFTBatch(targets, self.data.stream.cursor())

    def sft_shards(self, batch: SFTBatch, profile: str | None) -> list[SFTShard]:
        """Contiguous, near-equal shares of the targets per learner rank."""
        p = self.data.prompt_ids
        out = []
        for r in split(len(batch.targets), len(self.roles.learners.actors)):
            ts = batch.targets[r.start : r.stop]
            out.append(
                SFTShard(
                    prompts=[p[t.prompt_index] for t in ts],
                    completions=[t.ids for t in ts],
                    weights=[t.weights for t in ts],
                    pad_id=self.data.pad_id,
                    profile=profile,
                )
            )
        return out

    def train_step(self, step: int, batch: Any = None) -> dict[str, Any]:
        """Every phase once, in order; returns the step's metrics row."""
        timer = PhaseTimer()
        t0 = time.perf_counter()
        if batch is None:
            batch = self.collect(step, self.weights)
        self.state.learned_from(batch.cursor)
        with timer("learn"):
            stats = self.roles.learners.each(
                Learner.sft_step, [(s,) for s in self.sft_shards(batch, self.profile(step))]
            )
        with timer("publish"):
            weights, timer.seconds["wall_s"] = self.publish()
        evaluated = self.evaluate_due(step, timer)
        timer.seconds["step_s"] = time.perf_counter() - t0
        row = {
            **sft_metrics(step, batch, stats, weights.version),
            **evaluated,
            **timer.seconds,
            **self.faults(),
        }
        metrics.export_step(row)
        return row


def sft_metrics(
    step: int, batch: SFTBatch, stats: list[LearnStats], version: int
) -> dict[str, Any]:
    """One ``metrics.jsonl`` row of the SFT stage (rank means weighted by their targets)."""
    s = LossStats.combine([(r.stats, float(r.samples)) for r in stats], sum_loss=True)
    tokens = sum(len(t.ids) for t in batch.targets)
    return {
        "step": step + 1,
        "stage": "sft",
        "loss": s.loss,
        "nll": s.nll,
        "answer_nll": s.answer_nll,
        "entropy": s.entropy,
        "grad_norm": stats[0].grad_norm,
        "learner_peak_mb": max(r.peak_mb for r in stats),
        "targets": len(batch.targets),
        "completion_tokens_mean": tokens / max(len(batch.targets), 1),
        "weight_version": version,
    }
