"""One GRPO step, as named phases: collect, score + reference, advantages, learner shards,
learn, publish, log.

The controller runs in the job's entrypoint process (``pte-ray train``, locally or under ``ray
job submit``); the roles do the work (``pte_ray.actors``) and every hop carries one typed record
(``pte_ray.records``). Each phase is one short method, timed by ``PhaseTimer``, so
``metrics.jsonl`` shows where a step's time went under the same names as the code. The loop
around steps (prefetch, staleness, progress, checkpoints) is ``controller/loop.py``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from pte_ray.actors import metrics
from pte_ray.actors.learner import Learner
from pte_ray.actors.reference import ReferenceWorker
from pte_ray.actors.reward import RewardWorker
from pte_ray.actors.rollout import RolloutWorker
from pte_ray.config import Config
from pte_ray.controller.batch import Batch, PhaseTimer, split
from pte_ray.controller.evaluation import load_eval_set, run_eval
from pte_ray.controller.log import step_metrics, step_rows
from pte_ray.controller.refill import Scored, refill
from pte_ray.controller.state import RunState
from pte_ray.progress import say
from pte_ray.records import (
    LearnerShard,
    LearnStats,
    PublishedWeights,
    ReferenceLogprobs,
    ReferenceRequest,
    RolloutRequest,
    Rollouts,
    ScoreRequest,
    Scores,
)
from pte_ray.rl.grpo import group_advantages
from pte_ray.run.prepare import Prepared, prepare
from pte_ray.run.run_dir import RunDir


class Controller:
    """Owns the config, the prepared data, the run directory and the roles of one run."""

    def __init__(self, cfg: Config, run: RunDir, data: Prepared | None = None) -> None:
        from pte_ray.actors.roles import start_roles

        self.cfg, self.run = cfg, run
        # model spec and every data row checked (``pte-ray train`` does it before Ray starts)
        self.data = data if data is not None else prepare(cfg)
        self.eval_set = load_eval_set(cfg, self.data.tokenizer)  # held-out set, if asked for
        say(
            f"starting roles: {cfg.rollout.num_workers} rollout, {cfg.reward.num_workers} reward, "
            f"{cfg.learner.num_learners} learner (a first start compiles DeepSpeed's Adam op, "
            "~1 min)"
        )
        t0 = time.perf_counter()
        self.roles = start_roles(cfg, self.data.model_spec, 0, self.data.teacher_spec)
        say(f"roles ready in {time.perf_counter() - t0:.0f} s")
        self.state = RunState(self.data.stream.cursor())  # the run's progress: step, cursor, ...
        metrics.zero("learner_restarts", "controller")  # exported from the start
        self.step_loggers: Any = None  # run/loggers.StepLoggers when train.loggers names any

    @property
    def weights(self) -> PublishedWeights | None:
        """The newest published version (``state.weights``)."""
        return self.state.weights

    # ------------------------------------------------------------------ phases
    def collect(
        self, step: int, weights: PublishedWeights | None, n: int | None = None, draw: int = 0
    ) -> Batch:
        """Draw step ``step``'s prompts (``n`` groups; default ``train.prompts_per_step``) and
        generate their groups with ``weights``; ``draw`` > 0 numbers a refill's extra draws.

        One request per group: the rollout pool hands queued groups to whichever worker is
        free (several per call), and every row's seed is its own, so where a group runs never
        changes what it samples.
        """
        t0 = time.perf_counter()
        g = self.cfg.grpo.group_size
        examples = self.data.stream.next_batch(n or self.cfg.train.prompts_per_step)
        cursor = self.data.stream.cursor()
        prompts = [self.data.prompt_ids[ex.index] for ex in examples for _ in range(g)]
        answers = [ex.answer for ex in examples for _ in range(g)]
        requests = [
            RolloutRequest(
                prompts[k * g : (k + 1) * g],
                self._seeds(step, k, draw),
                weights,
                self.profile(step),
            )
            for k in range(len(examples))
        ]
        pool = self.roles.rollout
        pool.retire_idle()
        rollouts = Rollouts.concat(pool.map_rows(RolloutWorker.rollout, requests))
        wall = time.perf_counter() - t0
        return Batch(examples, prompts, answers, rollouts, cursor, wall, pool.summary())

    def _more(self, step: int, n: int, draw: int, timer: PhaseTimer) -> Scored:
        """``n`` more groups for step ``step``, generated and scored (a refill's draw)."""
        batch = self.collect(step, self.weights, n=n, draw=draw)
        with timer("reward_ref"):
            scores, ref = self.score_and_reference(batch)
        return batch, scores, ref

    def _seeds(self, step: int, group: int, draw: int = 0) -> list[int]:
        """Group ``group``'s row seeds: independent streams per (run seed, step, group, row),
        and per refill draw."""
        key = [self.cfg.train.seed, step, group] + ([draw] if draw else [])
        seq = np.random.SeedSequence(key)
        return [int(x) for x in seq.generate_state(self.cfg.grpo.group_size)]

    def score_and_reference(self, batch: Batch) -> tuple[Scores, ReferenceLogprobs | None]:
        """Rewards and reference log-probs, in parallel (they need nothing from each other)."""
        with ThreadPoolExecutor(2) as ex:
            scores = ex.submit(self._score, batch.rollouts.texts, batch.answers)
            ref = ex.submit(self._reference, batch.prompts, batch.rollouts.tokens)
            return scores.result(), ref.result()

    def _groups(self, n: int) -> list[slice]:
        g = self.cfg.grpo.group_size
        return [slice(lo, lo + g) for lo in range(0, n, g)]

    def _score(self, texts: list[str], answers: list[str]) -> Scores:
        reqs = [ScoreRequest(texts[s], answers[s]) for s in self._groups(len(texts))]
        return Scores.concat(self.roles.reward.map_rows(RewardWorker.score, reqs))

    def _reference(
        self, prompts: list[list[int]], comps: list[list[int]]
    ) -> ReferenceLogprobs | None:
        pool = self.roles.reference
        if pool is None:
            return None
        d = self.cfg.distill
        k = d.topk if d.coef > 0 and d.kind == "topk_forward_kl" else 0
        reqs = [ReferenceRequest(prompts[s], comps[s], k) for s in self._groups(len(prompts))]
        return ReferenceLogprobs.concat(pool.map_rows(ReferenceWorker.logprobs, reqs))

    def advantages(self, scores: Scores) -> list[float]:
        g = self.cfg.grpo
        rewards = torch.tensor(scores.rewards, dtype=torch.float32)
        return group_advantages(rewards, g.group_size, g.use_std, g.eps).tolist()

    def profile(self, step: int) -> str | None:
        """Where step ``step``'s traces go, if ``train.profile_steps`` names it (1-based)."""
        if step + 1 not in self.cfg.train.profile_steps:
            return None
        return str(self.run.path / "profiles" / f"step_{step + 1:06d}")

    def learner_shards(
        self,
        batch: Batch,
        adv: list[float],
        ref: ReferenceLogprobs | None,
        profile: str | None = None,
    ) -> list[LearnerShard]:
        """Whole groups per learner rank, contiguous, as even as the groups allow."""
        g, ro = self.cfg.grpo.group_size, batch.rollouts
        shards = []
        for r in split(len(batch.examples), len(self.roles.learners.actors)):
            lo, hi = r.start * g, r.stop * g
            shards.append(
                LearnerShard(
                    prompts=batch.prompts[lo:hi],
                    completions=ro.tokens[lo:hi],
                    logprobs=ro.logprobs[lo:hi],
                    eviction_steps=ro.eviction_steps[lo:hi],
                    evicted_slots=ro.evicted_slots[lo:hi],
                    advantages=adv[lo:hi],
                    ref_logprobs=ref.logprobs[lo:hi] if ref is not None else None,
                    pad_id=self.data.pad_id,
                    profile=profile,
                    topk_ids=ref.topk_ids[lo:hi] if ref is not None and ref.topk_ids else None,
                    topk_logprobs=(
                        ref.topk_logprobs[lo:hi] if ref is not None and ref.topk_ids else None
                    ),
                )
            )
        return shards

    def learn(self, shards: list[LearnerShard]) -> list[LearnStats]:
        return self.roles.learners.each(Learner.train_step, [(s,) for s in shards])

    def publish(self) -> tuple[PublishedWeights, float]:
        """Rank 0's adapter out as the next version; and the seconds since the last one."""
        weights = self.roles.learners.publish()
        return weights, self.state.published(weights)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int, batch: Batch | None = None) -> dict[str, Any]:
        """Every phase once, in order; returns the step's metrics row (also written to disk)."""
        timer = PhaseTimer()
        if batch is None:
            batch = self.collect(step, self.weights)
        t0 = time.perf_counter()
        timer.seconds["rollout_s"] = batch.rollout_s  # timed where it ran (maybe ahead)
        self.state.learned_from(batch.cursor)
        with timer("reward_ref"):
            scores, ref = self.score_and_reference(batch)
        learners = len(self.roles.learners.actors)
        more = lambda n, draw: self._more(step, n, draw, timer)  # noqa: E731
        (batch, scores, ref), fill = refill(self.cfg, (batch, scores, ref), more, learners)
        self.state.learned_from(batch.cursor)  # after any refill's draws
        adv = self.advantages(scores)
        with timer("learn"):
            stats = self.learn(self.learner_shards(batch, adv, ref, self.profile(step)))
        with timer("publish"):
            weights, wall = self.publish()
        timer.seconds["step_s"] = batch.rollout_s + time.perf_counter() - t0
        # publish to publish: what a step costs when the next rollouts overlap this learning
        timer.seconds["wall_s"] = wall
        self.run.write_rollouts(step + 1, step_rows(step, batch, scores, adv, self.data))
        pools = {"rollout": batch.pool, "reward": self.roles.reward.summary()}
        if self.roles.reference is not None:
            pools["reference"] = self.roles.reference.summary()
        ref_rows = ref.logprobs if ref is not None else None
        evaluated = self.evaluate_due(step, timer)
        timer.seconds.setdefault("eval_s", 0.0)
        row = {
            **step_metrics(step, batch, scores, stats, weights, pools, timer, ref_rows),
            **fill,
            **evaluated,
            **self.faults(),
        }
        metrics.export_step(row)
        return row

    def faults(self) -> dict[str, int]:
        """The run's recoveries, as a step's row reports them."""
        s = self.state
        return {"dropped_stale": s.dropped_now, "learner_restarts": s.learner_restarts}

    def evaluate_due(self, step: int, timer: PhaseTimer) -> dict[str, float]:
        """Held-out greedy accuracy of the weights just published, every ``train.eval_every``
        steps and at the last step (``{}`` otherwise)."""
        every, last = self.cfg.train.eval_every, step + 1 == self.cfg.train.steps
        if self.eval_set is None or not ((step + 1) % every == 0 or last):
            return {}
        with timer("eval"):
            return run_eval(self.roles, self.eval_set, self.weights)

    def restart_learners(self) -> None:
        """A new learner group (new placement group and rendezvous) for a lost one; colocated
        workers live in the learners' bundles and go with them, so then every role restarts."""
        from pte_ray.actors.roles import start_learners, start_roles

        epoch = self.roles.learners.epoch + 1
        metrics.count("learner_restarts", 1, "controller")
        if self.cfg.learner.colocate:
            self.roles.shutdown()
            self.roles = start_roles(self.cfg, self.data.model_spec, epoch, self.data.teacher_spec)
        else:
            self.roles.learners.shutdown()
            self.roles.learners = start_learners(self.cfg, self.data.model_spec, epoch)

    def shutdown(self) -> None:
        self.roles.shutdown()
