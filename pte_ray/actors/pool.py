"""A pool of actors of one role, fed from a work queue.

Work items (one GRPO group each, for the controller) are cut into chunks up front, as evenly as
possible, one per place the pool may grow to (``max_size``; more if ``max_items_per_call`` caps
a chunk), and wait in a queue; an idle actor takes one chunk per call. One actor alone with no
room to grow gets the whole step as one batch; with room to grow part of the step waits, the wait
is the autoscaling signal, and a slow actor holds only its share. The cut depends only on the
item count and the pool's bounds, never on which actors are up, and a lost call's chunk goes
back whole: a row's batch mates are the same in a run with faults as without, and so are its
numbers (a batched forward's per-row results change with the batch: other lengths pad it, other
sizes pick other matmul kernels), which is what makes a run with faults end bit-identical.

The pool adds an actor while a chunk has waited longer than ``scale_up_wait_s`` (up to
``max_size``) and retires actors idle for ``scale_down_idle_s`` (down to ``min_size``). An
added actor takes work only once it is ready, and no second one is added while it starts.

Faults (``pool_health.py``): a call lost to a dead or hung actor goes back to the queue for
another actor, so no item is lost or done twice; the actor is probed and serves again only once
Ray has restarted it (a call sent to a restarting actor would be lost too), and one that is dead
for good is replaced. An exception raised by the actor's own code is a bug or bad input and
stops the run with the actor's message. Every decision is a ``PoolEvent`` in ``events``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayTaskError

from pte_ray.actors import metrics
from pte_ray.actors.errors import LOST, PoolError, role_error
from pte_ray.actors.pool_health import Health, PoolEvent, Task, log

__all__ = ["Pool", "PoolError", "PoolEvent", "PoolSpec", "remote"]


def remote(actor: Any, method: Callable[..., Any]) -> Any:
    """The actor handle's remote method for the class method ``method`` (same name)."""
    return getattr(actor, method.__name__)


@dataclass(frozen=True)
class PoolSpec:
    """How a pool runs: its size bounds, its patience with calls and starts, how it scales."""

    name: str  # the role: rollout, reward, reference (tags its metrics)
    size: int  # actors at start
    min_size: int | None = None  # autoscaling floor (None: size)
    max_size: int | None = None  # autoscaling ceiling (None: size)
    call_timeout_s: float = 600.0  # a call running longer is killed and retried elsewhere
    max_retries: int = 2  # per item, before the run fails
    scale_up_wait_s: float = 30.0  # an item queued this long adds an actor
    scale_down_idle_s: float = 120.0  # an actor idle this long retires
    ready_timeout_s: float = 600.0  # a start (or a probe) not ready in this time fails
    max_items_per_call: int | None = None  # cap on one call's share of the queue


def _names(tasks: Sequence[Task]) -> str:
    """``shard 3`` or ``shards 0, 1``: the items (groups) the tasks stand for."""
    items = [i for t in tasks for i in t.shards]
    return ("shards " if len(items) > 1 else "shard ") + ", ".join(map(str, items))


class Pool(Health):
    def __init__(
        self,
        spec: PoolSpec,
        make: Callable[[int], Any],
        on_resize: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(spec.name, make, spec.ready_timeout_s, on_resize)
        self.spec = spec
        self.min_size = spec.min_size or spec.size
        self.max_size = max(spec.max_size or spec.size, spec.size)
        self._last_up = float("-inf")
        self.inflight: dict[ray.ObjectRef, tuple[int, list[Task], float]] = {}
        try:
            for _ in range(spec.size):
                self._add()
            self._wait_ready(list(self.members), spec.ready_timeout_s)
            self.sizes = [self.size]
            metrics.gauge("pool_size", self.size, self.name)
            self.zero_counters()
            log.info("%s pool: %d actor(s) ready", self.name, self.size)
        except BaseException:
            self.shutdown()  # no half-started pool holds cluster resources
            raise

    def _wait_ready(self, ids: Sequence[int], timeout_s: float) -> None:
        refs = {self.members[i].handle.ready.remote(): i for i in ids}
        try:
            infos = ray.get(list(refs), timeout=timeout_s)
        except (RayTaskError, *LOST) as e:
            raise role_error(f"{self.name} actor", "ready", e) from e
        except ray.exceptions.GetTimeoutError as e:
            raise PoolError(
                f"{self.name} actors not ready after {timeout_s:.0f}s "
                "(not enough CPUs/GPUs in the cluster for the requested num_cpus/num_gpus?)"
            ) from e
        for aid, info in zip(refs.values(), infos):
            self.members[aid].info = info

    # ------------------------------------------------------------------ work
    def map(self, method: Callable[..., Any], shards: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``actor.method(*shard)`` for every shard, one per call; results in shard order.
        ``method`` is the actor class's own (``RewardWorker.score``): a reader and a static
        tool follow the call to its definition."""
        results: list[Any] = [None] * len(shards)

        def send(actor: Any, items: list[int]) -> ray.ObjectRef:
            return remote(actor, method).remote(*shards[items[0]])

        def receive(out: Any, items: list[int]) -> None:
            results[items[0]] = out

        self._run(len(shards), lambda queued: 1, send, receive)
        return results

    def map_rows(self, method: Callable[..., Any], requests: Sequence[Any]) -> list[Any]:
        """``actor.method(request)`` for row records (``records.Rows``), several per call.

        Requests taken together are concatenated into one call and its result cut back into
        one result per request, in request order.
        """
        sizes = [len(r) for r in requests]
        results: list[Any] = [None] * len(requests)
        chunks = self.chunks(len(requests))

        def send(actor: Any, items: list[int]) -> ray.ObjectRef:
            batch = type(requests[0]).concat([requests[i] for i in chunks[items[0]]])
            return remote(actor, method).remote(batch)

        def receive(out: Any, items: list[int]) -> None:
            lo = 0
            for i in chunks[items[0]]:
                results[i] = out.rows(lo, lo + sizes[i])
                lo += sizes[i]

        self._run(len(chunks), lambda queued: 1, send, receive, chunks)
        return results

    def chunks(self, n: int) -> list[list[int]]:
        """Items ``0..n-1`` cut into ``max_size`` runs as even as possible (more where
        ``max_items_per_call`` caps one): the same cut whatever actors are up."""
        cap = self.spec.max_items_per_call
        parts = min(n, max(self.max_size, math.ceil(n / cap) if cap else 0))
        if parts == 0:
            return []
        small, extra = divmod(n, parts)
        bounds = [0]
        for p in range(parts):
            bounds.append(bounds[-1] + small + (p < extra))
        return [list(range(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]

    def _run(
        self,
        n: int,
        take: Callable[[int], int],
        send: Callable[[Any, list[int]], ray.ObjectRef],
        receive: Callable[[Any, list[int]], None],
        chunks: Sequence[Sequence[int]] | None = None,
    ) -> None:
        names = [tuple(c) for c in chunks] if chunks is not None else [(i,) for i in range(n)]
        queue: deque[Task] = deque(Task(i, names[i]) for i in range(n))
        self.inflight = {}
        while queue or self.inflight:
            self._autoscale(queue)
            self._dispatch(queue, take, send)
            self._gauges(queue)
            waiting = list(self.inflight) + [m.asking for m in self.members.values() if m.asking]
            if not waiting:
                self._no_actor_left(queue)
            done, _ = ray.wait(waiting, num_returns=1, timeout=0.5) if waiting else ([], [])
            self._check_started()
            for ref in (r for r in done if r in self.inflight):
                self._finish(ref, queue, receive)
            self._check_timeouts(queue)
        self._autoscale(queue)  # retire actors that sat idle through this round

    def _dispatch(
        self, queue: deque[Task], take: Callable[[int], int], send: Callable[..., ray.ObjectRef]
    ) -> None:
        for aid in self.free():
            if not queue:
                return
            k = take(len(queue))
            tasks = [t for t in queue if t.avoid != aid][:k] or [queue[0]]
            for t in tasks:
                queue.remove(t)
            ref = send(self.members[aid].handle, [t.item for t in tasks])
            self.inflight[ref] = (aid, tasks, time.monotonic())
            self.members[aid].busy = True

    def _finish(self, ref: ray.ObjectRef, queue: deque[Task], receive: Callable) -> None:
        aid, tasks, started = self.inflight.pop(ref)
        now = time.monotonic()
        self.busy_s += now - started
        m = self.members.get(aid)
        if m is not None:
            m.busy, m.idle_since = False, now
        try:
            receive(ray.get(ref), [t.item for t in tasks])  # bounded: ray.wait returned it
        except RayTaskError as e:
            raise role_error(f"{self.name} actor {aid}", _names(tasks), e) from e
        except LOST as e:
            # Sent to an actor already restarting: the call never ran, so it costs no attempt.
            ran = not isinstance(e, ActorUnavailableError)
            self._requeue(queue, tasks, aid, f"actor lost: {type(e).__name__}", ran)
            self._probe(aid, "lost")

    def _check_timeouts(self, queue: deque[Task]) -> None:
        now = time.monotonic()
        for ref, (aid, tasks, started) in list(self.inflight.items()):
            if now - started > self.spec.call_timeout_s:
                self.inflight.pop(ref)
                m = self.members[aid]
                m.busy = False
                self._count("timeouts")
                ray.kill(m.handle, no_restart=False)  # hung: Ray restarts it
                why = f"timed out after {self.spec.call_timeout_s:.0f}s"
                self._requeue(queue, tasks, aid, why)
                self._probe(aid, "hung")

    def _requeue(
        self, queue: deque[Task], tasks: list[Task], aid: int, why: str, ran: bool = True
    ) -> None:
        for task in tasks:
            task.attempts += ran
        failed = [t for t in tasks if t.attempts > self.spec.max_retries]
        if failed:
            raise PoolError(
                f"{self.name}: {_names(failed)} failed {failed[0].attempts} times, last on "
                f"actor {aid} ({why})"
            )
        for task in reversed(tasks):
            task.avoid = aid
            queue.appendleft(task)
        for _ in tasks:
            self._count("retries")

    def _no_actor_left(self, queue: deque[Task]) -> None:
        if not self.members:
            raise PoolError(f"{self.name}: no actor left to run {len(queue)} queued shard(s)")
        time.sleep(0.05)

    def _gauges(self, queue: deque[Task]) -> None:
        metrics.gauge("queue_depth", len(queue), self.name)
        if queue:
            metrics.gauge("queue_wait_s", time.monotonic() - queue[0].queued_at, self.name)

    # ------------------------------------------------------------------ scaling
    def retire_idle(self) -> None:
        """Between maps: retire actors idle past ``scale_down_idle_s`` (the step's other
        phases are idle time for this pool) and take in actors that became ready."""
        self._check_started()
        self._autoscale(deque())

    def _autoscale(self, queue: deque[Task]) -> None:
        now, sp = time.monotonic(), self.spec
        starting = any(m.asking is not None for m in self.members.values())
        if self.size < self.min_size and not starting:
            self._start_one("below min_size")
        elif queue and self.size < self.max_size and not starting:
            waited = now - queue[0].queued_at
            if waited > sp.scale_up_wait_s and now - self._last_up > sp.scale_up_wait_s:
                self._last_up = now
                self._start_one(f"a shard waited {waited:.1f}s")
        elif not queue and self.size > self.min_size:
            self._scale_down(now)

    def _scale_down(self, now: float) -> None:
        """Only ready actors retire, and only while min_size ready ones stay: a starting
        actor was asked for by a backlog and is judged once it serves."""
        ready = [a for a, m in self.members.items() if m.asking is None and m.reprobe_at is None]
        for aid in sorted(ready, reverse=True):
            m = self.members[aid]
            idle = now - m.idle_since
            if len(ready) > self.min_size and not m.busy and idle > self.spec.scale_down_idle_s:
                self._retire(aid, f"idle {idle:.1f}s")
                ready.remove(aid)
