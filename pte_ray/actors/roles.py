"""The launcher: start every role of a run on the Ray cluster, or none of them.

Learners start first (the largest, all-or-nothing ask: one placement group), then the rollout,
reward and (with a KL term) reference pools. A role that fails to start cleans up after
itself; the roles already started are stopped here, so a failed start leaves no actor and no
placement group behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from pte_ray.actors.capacity import autoscaler_request, check_placeable
from pte_ray.actors.learner_group import LearnerGroup
from pte_ray.actors.pool import Pool
from pte_ray.actors.reference import ReferenceWorker
from pte_ray.actors.reward import RewardWorker
from pte_ray.actors.rollout import RolloutWorker
from pte_ray.config import Config

# Per-call retries are the pool's job (on another actor); restarts bring a dead actor back.
RESTARTS = {"max_restarts": 2, "max_task_retries": 0}


@dataclass
class Roles:
    rollout: Pool
    reward: Pool
    reference: Pool | None
    learners: LearnerGroup

    def shutdown(self) -> None:
        for pool in (self.rollout, self.reward, self.reference):
            if pool is not None:
                pool.shutdown()
        self.learners.shutdown()


def _actor(cls: type, num_cpus: float, num_gpus: float = 0.0, strategy: Any = None) -> Any:
    extra = {"scheduling_strategy": strategy} if strategy is not None else {}
    return ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus, **RESTARTS, **extra)


def _common(cfg: Config) -> dict[str, float | int]:
    tc = cfg.train
    return {
        "call_timeout_s": tc.call_timeout_s,
        "max_retries": tc.max_retries,
        "ready_timeout_s": tc.start_timeout_s,
    }


def rollout_pool(cfg: Config, model_spec: str, on: Callable[[int], Any] = lambda i: None) -> Pool:
    """Rollout workers of ``cfg`` (the student's, or a teacher's config: ``run/teacher.py``)."""
    dump, rc = cfg.model_dump(mode="json"), cfg.rollout
    return Pool(
        "rollout",
        lambda i: _actor(RolloutWorker, rc.num_cpus, rc.num_gpus, on(i)).remote(
            dump, model_spec, i
        ),
        rc.num_workers,
        min_size=rc.min_workers,
        max_size=rc.max_workers,
        scale_up_wait_s=rc.scale_up_wait_s,
        scale_down_idle_s=rc.scale_down_idle_s,
        max_items_per_call=rc.max_groups_per_call,
        on_resize=autoscaler_request(cfg),
        **_common(cfg),
    )


def _pools(
    cfg: Config,
    paths: tuple[str, str | None],
    on: Callable[[int], Any],
    started: list[Any],
) -> None:
    """Rollout, reward and (with a KL term or distillation) reference pools, appended as
    started; ``paths``: the student's model and the reference's (teacher's)."""
    dump = cfg.model_dump(mode="json")
    wc, fc = cfg.reward, cfg.reference
    started.append(rollout_pool(cfg, paths[0], on))
    make_reward = lambda i: _actor(RewardWorker, wc.num_cpus).remote(dump, i)  # noqa: E731
    started.append(Pool("reward", make_reward, wc.num_workers, **_common(cfg)))
    if cfg.reference_pool:
        ref_path = paths[1] or paths[0]
        started.append(
            Pool(
                "reference",
                lambda i: _actor(ReferenceWorker, fc.num_cpus, fc.num_gpus, on(i)).remote(
                    dump, ref_path, i
                ),
                fc.num_workers,
                **_common(cfg),
            )
        )


def start_learners(cfg: Config, model_spec: str, epoch: int) -> LearnerGroup:
    """A learner group; ``epoch`` counts the groups this job started before it (restarts)."""
    return LearnerGroup(cfg, model_spec, cfg.train.start_timeout_s, epoch)


def start_roles(
    cfg: Config, model_spec: str, epoch: int = 0, teacher_path: str | None = None
) -> Roles:
    """Learners first (the largest ask), then the pools; on any failure, stop what started."""
    check_placeable(cfg)
    started: list[Any] = []
    try:
        learners = start_learners(cfg, model_spec, epoch)
        started.append(learners)

        def on(i: int) -> Any:  # a worker's place: a learner's bundle when colocated
            return learners.on(i) if cfg.learner.colocate else None

        _pools(cfg, (model_spec, teacher_path), on, started)
    except BaseException:
        for role in reversed(started):  # a role that failed to start cleaned up after itself
            role.shutdown()
        raise
    reference = started[3] if len(started) > 3 else None
    return Roles(started[1], started[2], reference, learners)
