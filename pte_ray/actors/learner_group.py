"""The learner group: D learner actors forming one torch.distributed group.

All ranks live in one placement group (one bundle each, PACK), so a group either starts whole
or not at all, and colocated rollout workers can be scheduled into the same bundles. Rank 0's
node and a free port found *there* become the rendezvous address.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pte_ray.actors.errors import LearnerLost, PoolError, role_error
from pte_ray.actors.learner import Learner
from pte_ray.actors.pool import remote
from pte_ray.config import Config
from pte_ray.progress import say
from pte_ray.records import PublishedWeights

PLACE_PATIENCE_S = 10.0  # a placement group waiting longer is reported


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
        roles = [cfg.rollout] + ([cfg.reference] if cfg.reference_pool else [])
        for role in roles:
            for i in range(role.num_workers):
                out[i % d]["CPU"] += role.num_cpus
                out[i % d]["GPU"] += role.num_gpus
    return [{k: v for k, v in b.items() if v > 0} for b in out]


class LearnerGroup:
    """D learner actors forming one torch.distributed group, in one placement group."""

    def __init__(
        self, cfg: Config, model_spec: str, ready_timeout_s: float = 900.0, epoch: int = 0
    ) -> None:
        self.pg = placement_group(_bundles(cfg), strategy="PACK")
        self.actors: list[Any] = []
        self.epoch = epoch  # groups started before this one in the job (restarts)
        self.info: list[dict[str, Any]] = []  # each rank's ``ready`` (pid, device)
        try:
            self._start(cfg, model_spec, ready_timeout_s)
        except BaseException:
            self.shutdown()  # no half-started group holds its placement group
            raise

    def _wait_placed(self, timeout_s: float) -> None:
        """Until the placement group is placed; a wait past a few seconds (the cluster is full,
        or a lost node's replacement is still coming up) is said, then bounded."""
        first = min(PLACE_PATIENCE_S, timeout_s)
        try:
            ray.get(self.pg.ready(), timeout=first)
            return
        except GetTimeoutError:
            say(
                f"learner placement group {self.pg.bundle_specs} not placed after {first:.0f}s: "
                f"waiting up to {timeout_s:.0f}s for room (a node coming up?)"
            )
        try:
            ray.get(self.pg.ready(), timeout=max(timeout_s - first, 0.0))
        except GetTimeoutError as e:
            raise PoolError(
                f"learner placement group {self.pg.bundle_specs} not placeable in "
                f"{timeout_s:.0f}s: the cluster lacks the resources"
            ) from e

    def _start(self, cfg: Config, model_spec: str, ready_timeout_s: float) -> None:
        lc = cfg.learner
        self._wait_placed(ready_timeout_s)

        probe = _master_endpoint.options(num_cpus=0, scheduling_strategy=self.on(0))
        addr, port = ray.get(probe.remote(), timeout=ready_timeout_s)
        cls = ray.remote(Learner)
        self.actors = [
            cls.options(
                num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, scheduling_strategy=self.on(i)
            ).remote(cfg, model_spec, i, lc.num_learners, addr, port)
            for i in range(lc.num_learners)
        ]
        self.call_timeout_s = cfg.train.call_timeout_s
        self.info = self.all(Learner.ready, timeout=ready_timeout_s)

    def on(self, i: int) -> PlacementGroupSchedulingStrategy:
        """Schedule into bundle ``i % D`` of the learners' placement group."""
        return PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i % len(self.pg.bundle_specs)
        )

    def all(
        self, method: Callable[..., Any], *args: Any, timeout: float | None = None
    ) -> list[Any]:
        """Call ``Learner.method`` on every rank (collectives need all of them) and wait,
        naming a failing rank."""
        refs = [remote(a, method).remote(*args) for a in self.actors]
        return self._get(refs, method.__name__, timeout)

    def each(self, method: Callable[..., Any], per_rank: list[tuple[Any, ...]]) -> list[Any]:
        """``Learner.method`` on every rank, each with its own arguments."""
        refs = [remote(a, method).remote(*args) for a, args in zip(self.actors, per_rank)]
        return self._get(refs, method.__name__, None)

    def _get(self, refs: list[ray.ObjectRef], method: str, timeout: float | None) -> list[Any]:
        """Every rank's result, or an error as soon as one rank fails: ``LearnerLost`` when a
        rank died or hung (the others would wait in a collective), ``PoolError`` when a rank's
        own code raised and no rank was lost (a bug or bad input: restarting will not help)."""
        limit = timeout or self.call_timeout_s
        deadline, pending = time.monotonic() + limit, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=deadline - time.monotonic())
            if not done:
                raise LearnerLost(f"learner {method} timed out ({limit:.0f}s): a rank hung")
            try:
                ray.get(done[0])  # bounded: ray.wait returned it
            except RayActorError as e:
                if e.actor_init_failed:  # the constructor raised: a bug or bad input, not a loss
                    raise role_error("learner", method, e) from e
                raise LearnerLost(str(role_error("learner", method, e))) from e
            except RayTaskError as e:
                lost = self._lost_peer(pending)
                if lost is not None:  # the collective failed because a peer died
                    raise LearnerLost(str(role_error("learner", method, lost))) from lost
                raise role_error("learner", method, e) from e
        return ray.get(list(refs))  # bounded: every ref is done (the loop above)

    @staticmethod
    def _lost_peer(refs: list[ray.ObjectRef], grace_s: float = 10.0) -> RayActorError | None:
        """A rank among ``refs`` that died within ``grace_s``, if any."""
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=grace_s) if refs else ([], [])
        for ref in done:
            try:
                ray.get(ref)  # bounded: ray.wait returned it
            except RayActorError as e:
                return e
            except RayTaskError:
                continue
        return None

    def publish(self) -> PublishedWeights:
        """Rank 0's adapter (every rank holds the same), versioned, put in the object store by
        the controller: the controller owns it, so rollout workers restarted after a learner
        (or its node) died still load the version they must serve."""
        ref = remote(self.actors[0], Learner.snapshot).remote()
        snap = self._get([ref], "snapshot", None)[0]
        return PublishedWeights(snap.version, ray.put(snap), self.epoch)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
