"""A pool of actors of one role, fed from a work queue.

Shards wait in a queue and go to whichever actor is idle, so a slow actor never holds up the
others and the queue's wait time is the autoscaling signal: the pool adds an actor while a
shard has waited longer than ``scale_up_wait_s`` (up to ``max_size``) and retires actors idle
for ``scale_down_idle_s`` (down to ``min_size``). An added actor takes work only once it is
ready, and no second one is added while it starts: start-up takes seconds (a new worker process,
imports, weights), and a shard handed to a starting actor would wait for it while a running
actor sits idle. Every decision is kept in ``events`` and logged. A call lost to a dead or hung
actor goes back to the queue for another actor, so no shard is lost; an exception raised by the
actor's own code is a bug or bad input and stops the run with the actor's message.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pte_ray.actors import metrics
from pte_ray.actors.errors import LOST, PoolError, role_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleEvent:
    """One autoscaling decision: ``kind`` is "up", "ready", "down" or "failed"."""

    at: float  # time.monotonic()
    kind: str
    actor: int
    size: int  # actors in the pool after the decision
    why: str


@dataclass
class _Task:
    shard: int
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    avoid: int | None = None


class Pool:
    def __init__(
        self,
        name: str,
        make: Callable[[int], Any],
        size: int,
        min_size: int | None = None,
        max_size: int | None = None,
        call_timeout_s: float = 600.0,
        max_retries: int = 2,
        scale_up_wait_s: float = 30.0,
        scale_down_idle_s: float = 120.0,
        ready_timeout_s: float = 600.0,
    ) -> None:
        self.name, self.make = name, make
        self.min_size = min_size or size
        self.max_size = max(max_size or size, size)
        self.call_timeout_s, self.max_retries = call_timeout_s, max_retries
        self.scale_up_wait_s, self.scale_down_idle_s = scale_up_wait_s, scale_down_idle_s
        self.actors: dict[int, Any] = {}
        self.idle_since: dict[int, float] = {}
        self.starting: dict[int, ray.ObjectRef] = {}  # added actors not yet ready -> ready ref
        self.events: list[ScaleEvent] = []
        self._last_up = float("-inf")
        self._next_id = 0
        try:
            for _ in range(size):
                self._add()
            self._wait_ready(list(self.actors), ready_timeout_s)
            metrics.gauge("pool_size", self.size, self.name)
        except BaseException:
            self.shutdown()  # no half-started pool holds cluster resources
            raise

    def _add(self) -> int:
        aid = self._next_id
        self._next_id += 1
        self.actors[aid] = self.make(aid)
        self.idle_since[aid] = time.monotonic()
        return aid

    def _wait_ready(self, ids: Sequence[int], timeout_s: float) -> None:
        refs = {self.actors[i].ready.remote(): i for i in ids}
        try:
            ray.get(list(refs), timeout=timeout_s)
        except (RayTaskError, *LOST) as e:
            raise role_error(f"{self.name} actor", "ready", e) from e
        except GetTimeoutError as e:
            raise PoolError(
                f"{self.name} actors not ready after {timeout_s:.0f}s "
                "(not enough CPUs/GPUs in the cluster for the requested num_cpus/num_gpus?)"
            ) from e

    @property
    def size(self) -> int:
        return len(self.actors)

    def map(self, method: str, shards: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``actor.method(*shard)`` for every shard; results in shard order."""
        queue: deque[_Task] = deque(_Task(i) for i in range(len(shards)))
        results: list[Any] = [None] * len(shards)
        inflight: dict[ray.ObjectRef, tuple[int, _Task, float]] = {}
        busy: set[int] = set()
        while queue or inflight:
            self._autoscale(queue, busy)
            for aid in [a for a in self.actors if a not in busy and a not in self.starting]:
                if not queue:
                    break
                task = next((t for t in queue if t.avoid != aid), queue[0])
                queue.remove(task)
                ref = getattr(self.actors[aid], method).remote(*shards[task.shard])
                inflight[ref] = (aid, task, time.monotonic())
                busy.add(aid)
            metrics.gauge("queue_depth", len(queue), self.name)
            if queue:
                metrics.gauge("queue_wait_s", time.monotonic() - queue[0].queued_at, self.name)
            waiting = list(inflight) + list(self.starting.values())
            if not waiting:  # nothing to wait on yet (cannot happen with a ready actor)
                time.sleep(0.05)
            done, _ = ray.wait(waiting, num_returns=1, timeout=1.0) if waiting else ([], [])
            self._check_started()
            for ref in (r for r in done if r in inflight):
                aid, task, _ = inflight.pop(ref)
                busy.discard(aid)
                self.idle_since[aid] = time.monotonic()
                try:
                    results[task.shard] = ray.get(ref)
                except RayTaskError as e:
                    raise role_error(f"{self.name} actor {aid}", f"shard {task.shard}", e) from e
                except LOST as e:
                    self._retry(queue, task, aid, f"actor lost: {type(e).__name__}")
            now = time.monotonic()
            for ref, (aid, task, started) in list(inflight.items()):
                if now - started > self.call_timeout_s:
                    inflight.pop(ref)
                    busy.discard(aid)
                    ray.kill(self.actors[aid], no_restart=False)  # hung: restart it
                    self._retry(queue, task, aid, f"timed out after {self.call_timeout_s:.0f}s")
        self._autoscale(queue, busy)  # retire actors that sat idle through this round
        return results

    def _retry(self, queue: deque[_Task], task: _Task, aid: int, why: str) -> None:
        task.attempts += 1
        if task.attempts > self.max_retries:
            raise PoolError(
                f"{self.name}: shard {task.shard} failed {task.attempts} times, last on actor "
                f"{aid} ({why})"
            )
        task.avoid = aid
        queue.appendleft(task)

    def _event(self, kind: str, aid: int, why: str) -> None:
        ev = ScaleEvent(time.monotonic(), kind, aid, self.size, why)
        self.events.append(ev)
        log.info("%s pool: %s actor %d (%s); size %d", self.name, kind, aid, why, self.size)
        metrics.gauge("pool_size", self.size, self.name)

    def _check_started(self) -> None:
        """Moves actors whose ``ready`` returned into service; drops ones that failed to start."""
        if not self.starting:
            return
        done, _ = ray.wait(list(self.starting.values()), num_returns=len(self.starting), timeout=0)
        for aid, ref in list(self.starting.items()):
            if ref not in done:
                continue
            del self.starting[aid]
            self.idle_since[aid] = time.monotonic()
            try:
                ray.get(ref)
                self._event("ready", aid, "started")
            except (RayTaskError, RayActorError) as e:  # the pool carries on at its size
                self.actors.pop(aid)
                self.idle_since.pop(aid)
                self._event("failed", aid, f"could not start: {type(e).__name__}")

    def _autoscale(self, queue: deque[_Task], busy: set[int]) -> None:
        now = time.monotonic()
        if queue and self.size < self.max_size and not self.starting:
            waited = now - queue[0].queued_at
            if waited > self.scale_up_wait_s and now - self._last_up > self.scale_up_wait_s:
                aid = self._add()  # Ray places it; it takes work once ``ready`` returns
                self.starting[aid] = self.actors[aid].ready.remote()
                self._last_up = now
                self._event("up", aid, f"a shard waited {waited:.1f}s")
        elif not queue and self.size > self.min_size:
            for aid in sorted(self.actors, reverse=True):
                if self.size <= self.min_size:
                    break
                idle = now - self.idle_since[aid]
                if aid not in busy and idle > self.scale_down_idle_s:
                    ray.kill(self.actors.pop(aid))
                    self.idle_since.pop(aid)
                    self.starting.pop(aid, None)
                    self._event("down", aid, f"idle {idle:.1f}s")

    def shutdown(self) -> None:
        for a in self.actors.values():
            ray.kill(a)
        self.actors.clear()
        self.starting.clear()
