"""Start every role of a run on the Ray cluster: pools, learner group, placement groups."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pte_ray.actors.learner import Learner
from pte_ray.actors.pool import Pool, PoolError, start_failure
from pte_ray.actors.reference import ReferenceWorker
from pte_ray.actors.reward import RewardWorker
from pte_ray.actors.rollout import RolloutWorker
from pte_ray.config import Config

# Per-call retries are the pool's job (on another actor); restarts bring a dead actor back.
RESTARTS = {"max_restarts": 2, "max_task_retries": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@ray.remote
def _master_endpoint() -> tuple[str, int]:
    """Address and a free port on the node where learner rank 0 will run."""
    return ray.util.get_node_ip_address(), _free_port()


def _bundles(cfg: Config) -> list[dict[str, float]]:
    """One bundle per learner; with ``learner.colocate`` each also holds its share of the
    rollout (and reference) workers, spread round-robin over the bundles."""
    lc, d = cfg.learner, cfg.learner.num_learners
    out = [{"CPU": lc.num_cpus, "GPU": lc.num_gpus} for _ in range(d)]
    if lc.colocate:
        roles = [cfg.rollout] + ([cfg.reference] if cfg.grpo.kl_coef > 0 else [])
        for role in roles:
            for i in range(role.num_workers):
                out[i % d]["CPU"] += role.num_cpus
                out[i % d]["GPU"] += role.num_gpus
    return [{k: v for k, v in b.items() if v > 0} for b in out]


class LearnerGroup:
    """D learner actors forming one torch.distributed group, in one placement group."""

    def __init__(self, cfg: Config, model_path: str, ready_timeout_s: float = 900.0) -> None:
        self.pg = placement_group(_bundles(cfg), strategy="PACK")
        self.actors: list[Any] = []
        try:
            self._start(cfg, model_path, ready_timeout_s)
        except BaseException:
            self.shutdown()  # no half-started group holds its placement group
            raise

    def _start(self, cfg: Config, model_path: str, ready_timeout_s: float) -> None:
        lc = cfg.learner
        try:
            ray.get(self.pg.ready(), timeout=ready_timeout_s)
        except GetTimeoutError as e:
            raise PoolError(
                f"learner placement group {self.pg.bundle_specs} not placeable in "
                f"{ready_timeout_s:.0f}s: the cluster lacks the resources"
            ) from e

        probe = _master_endpoint.options(num_cpus=0, scheduling_strategy=self.on(0))
        addr, port = ray.get(probe.remote())
        dump = cfg.model_dump(mode="json")
        cls = ray.remote(Learner)
        self.actors = [
            cls.options(
                num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, scheduling_strategy=self.on(i)
            ).remote(dump, model_path, i, lc.num_learners, addr, port)
            for i in range(lc.num_learners)
        ]
        self.call_timeout_s = cfg.train.call_timeout_s
        self.all("ready", timeout=ready_timeout_s)

    def on(self, i: int) -> PlacementGroupSchedulingStrategy:
        """Schedule into bundle ``i % D`` of the learners' placement group."""
        return PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i % len(self.pg.bundle_specs)
        )

    def all(self, method: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Call every rank (collectives need all of them) and wait, naming a failing rank."""
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        return self._get(refs, method, timeout)

    def each(self, method: str, per_rank: list[tuple[Any, ...]]) -> list[Any]:
        refs = [getattr(a, method).remote(*args) for a, args in zip(self.actors, per_rank)]
        return self._get(refs, method, None)

    def _get(self, refs: list[ray.ObjectRef], method: str, timeout: float | None) -> list[Any]:
        try:
            return ray.get(refs, timeout=timeout or self.call_timeout_s)
        except RayTaskError as e:
            raise PoolError(f"learner {method} failed: {e.cause!r}") from e
        except RayActorError as e:
            what = "failed to start" if method == "ready" else f"died during {method}"
            raise PoolError(f"learner {what}: {start_failure(e)}") from e
        except GetTimeoutError as e:
            raise PoolError(
                f"learner {method} timed out ({timeout or self.call_timeout_s}s)"
            ) from e

    def publish(self) -> tuple[int, list[ray.ObjectRef]]:
        return ray.get(self.actors[0].publish.remote(), timeout=self.call_timeout_s)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)


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


def start_roles(cfg: Config, model_path: str) -> Roles:
    """Learners first (the largest ask), then the pools; on any failure, stop what started."""
    dump = cfg.model_dump(mode="json")
    t, rc, wc, fc = cfg.train, cfg.rollout, cfg.reward, cfg.reference
    common = {"call_timeout_s": t.call_timeout_s, "max_retries": t.max_retries}
    started: list[Any] = []
    try:
        learners = LearnerGroup(cfg, model_path)
        started.append(learners)

        def on(i: int) -> Any:  # a worker's place: a learner's bundle when colocated
            return learners.on(i) if cfg.learner.colocate else None

        rollout = Pool(
            "rollout",
            lambda i: _actor(RolloutWorker, rc.num_cpus, rc.num_gpus, on(i)).remote(
                dump, model_path, i
            ),
            rc.num_workers,
            min_size=rc.min_workers,
            max_size=rc.max_workers,
            scale_up_wait_s=rc.scale_up_wait_s,
            scale_down_idle_s=rc.scale_down_idle_s,
            **common,
        )
        started.append(rollout)
        reward = Pool(
            "reward",
            lambda i: _actor(RewardWorker, wc.num_cpus).remote(dump, i),
            wc.num_workers,
            **common,
        )
        started.append(reward)
        reference = None
        if cfg.grpo.kl_coef > 0:
            reference = Pool(
                "reference",
                lambda i: _actor(ReferenceWorker, fc.num_cpus, fc.num_gpus, on(i)).remote(
                    dump, model_path, i
                ),
                fc.num_workers,
                **common,
            )
    except BaseException:
        for role in reversed(started):  # a role that failed to start cleaned up after itself
            role.shutdown()
        raise
    return Roles(rollout, reward, reference, learners)
