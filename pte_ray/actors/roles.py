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
from pte_ray.actors.pool import Pool, PoolSpec
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


def _spec(cfg: Config, name: str, size: int, **scaling: Any) -> PoolSpec:
    """A pool of ``size`` actors, patient with calls and starts as ``train.*`` says."""
    tc = cfg.train
    return PoolSpec(
        name,
        size,
        call_timeout_s=tc.call_timeout_s,
        max_retries=tc.max_retries,
        ready_timeout_s=tc.start_timeout_s,
        **scaling,
    )


def rollout_pool(cfg: Config, model_spec: str, on: Callable[[int], Any] = lambda i: None) -> Pool:
    """Rollout workers of ``cfg`` (the student's, or a teacher's config: ``run/teacher.py``)."""
    rc = cfg.rollout
    spec = _spec(
        cfg,
        "rollout",
        rc.num_workers,
        min_size=rc.min_workers,
        max_size=rc.max_workers,
        scale_up_wait_s=rc.scale_up_wait_s,
        scale_down_idle_s=rc.scale_down_idle_s,
        max_items_per_call=rc.max_groups_per_call,
    )
    make = lambda i: _actor(RolloutWorker, rc.num_cpus, rc.num_gpus, on(i)).remote(  # noqa: E731
        cfg, model_spec, i
    )
    return Pool(spec, make, autoscaler_request(cfg))


def reward_pool(cfg: Config) -> Pool:
    wc = cfg.reward
    make = lambda i: _actor(RewardWorker, wc.num_cpus).remote(cfg, i)  # noqa: E731
    return Pool(_spec(cfg, "reward", wc.num_workers), make)


def reference_pool(cfg: Config, model_spec: str, on: Callable[[int], Any]) -> Pool:
    """The frozen teacher with the whole context (``model_spec``: the reference's model)."""
    fc = cfg.reference
    make = lambda i: _actor(ReferenceWorker, fc.num_cpus, fc.num_gpus, on(i)).remote(  # noqa: E731
        cfg, model_spec, i
    )
    return Pool(_spec(cfg, "reference", fc.num_workers), make)


def start_learners(cfg: Config, model_spec: str, epoch: int) -> LearnerGroup:
    """A learner group; ``epoch`` counts the groups this job started before it (restarts)."""
    return LearnerGroup(cfg, model_spec, cfg.train.start_timeout_s, epoch)


def start_roles(
    cfg: Config, model_spec: str, epoch: int = 0, teacher_spec: str | None = None
) -> Roles:
    """Learners first (the largest ask), then the pools, each by its name; on any failure, stop
    what started. ``teacher_spec``: the reference's model (None: ``model_spec``)."""
    check_placeable(cfg)
    started: dict[str, Any] = {}
    try:
        learners = started["learners"] = start_learners(cfg, model_spec, epoch)

        def on(i: int) -> Any:  # a worker's place: a learner's bundle when colocated
            return learners.on(i) if cfg.learner.colocate else None

        started["rollout"] = rollout_pool(cfg, model_spec, on)
        started["reward"] = reward_pool(cfg)
        if cfg.reference_pool:  # a KL term or distillation
            started["reference"] = reference_pool(cfg, teacher_spec or model_spec, on)
    except BaseException:
        for role in reversed(list(started.values())):  # the failed one cleaned up after itself
            role.shutdown()
        raise
    return Roles(
        rollout=started["rollout"],
        reward=started["reward"],
        reference=started.get("reference"),
        learners=learners,
    )
