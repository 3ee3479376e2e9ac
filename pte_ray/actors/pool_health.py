"""The pool's actors and their lives: start, ready, lost, restarted, replaced, retired.

Ray restarts a dead actor (``max_restarts``) but a call sent to it while it restarts is lost
too, and a retry that lands there spends an attempt (a modest fault rate then killed a run).
So an actor whose call was lost or hung leaves service and is *probed* with ``ready`` until it
answers (it is back: Ray restarted it) or is dead for good (restarts spent: a fresh actor
replaces it). A new actor serves once its first ``ready`` returns; one that cannot start is
dropped and the pool carries on. Every change is a ``PoolEvent``, logged and counted.

An actor killed *between* calls loses no call, so nothing above sees it: Ray restarts it and
the next call waits for it. ``summary`` (once per step) reads each serving actor's restart
count from Ray's actor table, so those restarts are counted too (a fault test found half of
the kills uncounted: the reference and reward calls are short, most kills land between them).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray._private import state as ray_state  # the GCS actor table (no dashboard needed)
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from pte_ray.actors import metrics

log = logging.getLogger("pte_ray.actors.pool")

REPROBE_S = 0.5  # between ``ready`` probes of an actor Ray is still restarting


@dataclass(frozen=True)
class PoolEvent:
    """One decision: up / ready / down / failed (scaling), lost / hung / back / replaced."""

    at: float  # time.monotonic()
    kind: str
    actor: int
    size: int  # actors in the pool after the decision
    why: str


ScaleEvent = PoolEvent  # the name before faults were events too


@dataclass
class Task:
    item: int
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    avoid: int | None = None


class Health:
    """Actor bookkeeping shared by the pool's work loop (``pool.Pool``)."""

    def __init__(
        self,
        name: str,
        make: Callable[[int], Any],
        ready_timeout_s: float,
        on_resize: Callable[[int], None] | None,
    ) -> None:
        self.name, self.make = name, make
        self.ready_timeout_s, self.on_resize = ready_timeout_s, on_resize
        self.actors: dict[int, Any] = {}
        self.info: dict[int, Any] = {}  # what each actor's last ``ready`` returned (pid, ...)
        self.idle_since: dict[int, float] = {}
        self.starting: dict[int, ray.ObjectRef] = {}  # actor -> pending ``ready`` (new or probed)
        self.since: dict[int, float] = {}  # when the pending ``ready`` was first asked
        self.recovering: set[int] = set()  # probed after a lost or hung call
        self.reprobe: dict[int, float] = {}  # restarting actor -> when to ask again
        self.ray_restarts: dict[int, int] = {}  # Ray's restart count, as of the last look
        self.busy: set[int] = set()
        self.events: list[PoolEvent] = []
        self.round: Counter[str] = Counter()  # since the last ``summary``: faults, scaling
        self.totals: Counter[str] = Counter()  # the same over the pool's life
        self.sizes: list[int] = []  # pool sizes since the last ``summary``
        self.busy_s = 0.0  # actor-seconds spent in calls since the last ``summary``
        self._next_id = 0

    @property
    def size(self) -> int:
        return len(self.actors)

    def free(self) -> list[int]:
        """Actors that can take work now."""
        out = self.busy | set(self.starting) | set(self.reprobe)
        return [a for a in self.actors if a not in out]

    def _add(self) -> int:
        aid = self._next_id
        self._next_id += 1
        self.actors[aid] = self.make(aid)
        self.idle_since[aid] = time.monotonic()
        return aid

    def _start_one(self, why: str, kind: str = "up") -> None:
        aid = self._add()  # Ray places it; it takes work once ``ready`` returns
        self._ask_ready(aid)
        self._event(kind, aid, why)
        self._resized()

    def _retire(self, aid: int, why: str) -> None:
        ray.kill(self._drop(aid))
        self._event("down", aid, why)
        self._resized()

    def _drop(self, aid: int) -> Any:
        kept = (self.idle_since, self.starting, self.since, self.reprobe, self.info)
        for d in (*kept, self.ray_restarts):
            d.pop(aid, None)
        self.recovering.discard(aid)
        self.busy.discard(aid)
        return self.actors.pop(aid)

    def _ask_ready(self, aid: int) -> None:
        self.starting[aid] = self.actors[aid].ready.remote()
        self.since.setdefault(aid, time.monotonic())

    def _probe(self, aid: int, kind: str) -> None:
        """Out of service until ``ready`` answers: Ray is restarting it (or it is gone)."""
        if aid not in self.actors or aid in self.recovering:
            return
        self.recovering.add(aid)
        self._ask_ready(aid)
        self._event(kind, aid, "probing until it is back")

    def _check_started(self) -> None:
        """Puts actors whose ``ready`` answered (back) in service; handles those that failed."""
        now = time.monotonic()
        for aid, at in list(self.reprobe.items()):
            if now >= at:
                del self.reprobe[aid]
                self._ask_ready(aid)
        if not self.starting:
            return
        done, _ = ray.wait(list(self.starting.values()), num_returns=len(self.starting), timeout=0)
        for aid, ref in list(self.starting.items()):
            if ref in done:
                del self.starting[aid]
                self._answered(aid, ref)
            elif now - self.since[aid] > self.ready_timeout_s:
                del self.starting[aid]
                self._failed(aid, f"not ready after {self.ready_timeout_s:.0f}s")

    def _answered(self, aid: int, ref: ray.ObjectRef) -> None:
        try:
            self.info[aid] = ray.get(ref)
        except ActorUnavailableError:  # Ray is still restarting it: ask again shortly
            self.reprobe[aid] = time.monotonic() + REPROBE_S
            return
        except (RayTaskError, RayActorError) as e:
            self._failed(aid, f"{type(e).__name__}")
            return
        self.since.pop(aid, None)
        self.idle_since[aid] = time.monotonic()
        restarts = self._restarts_seen(aid)  # > 1: killed between calls before, too
        if aid in self.recovering:
            self.recovering.discard(aid)
            for _ in range(max(restarts, 1)):
                self._event("back", aid, "restarted by Ray")
                self._count("restarts")
        else:
            self._event("ready", aid, "started")

    def _failed(self, aid: int, why: str) -> None:
        """A new actor that could not start is dropped; a lost one dead for good is replaced."""
        was_serving = aid in self.recovering
        ray.kill(self._drop(aid))
        if was_serving:
            self._event("replaced", aid, f"dead for good ({why})")
            self._count("replacements")
            self._start_one(f"replaces actor {aid}", kind="up")
        else:
            self._event("failed", aid, f"could not start: {why}")
            self._resized()

    def _restarts_seen(self, aid: int) -> int:
        """Ray restarts of ``aid`` not seen before (0 when Ray's table cannot be read)."""
        try:
            info = ray_state.actors(actor_id=self.actors[aid]._actor_id.hex())
            n = int(info.get("NumRestarts", 0))
        except Exception as e:  # a private API: counting must never stop a run
            log.debug("%s pool: no restart count for actor %d: %s", self.name, aid, e)
            return 0
        new = n - self.ray_restarts.get(aid, n)
        self.ray_restarts[aid] = n
        return max(new, 0)

    def _sweep(self) -> None:
        """Counts restarts of serving actors that no lost call revealed (killed while idle)."""
        out = self.busy | set(self.starting) | set(self.reprobe) | self.recovering
        for aid in [a for a in self.actors if a not in out]:
            for _ in range(self._restarts_seen(aid)):
                self._event("back", aid, "restarted by Ray between calls")
                self._count("restarts")

    def summary(self) -> dict[str, float]:
        """Faults and scaling since the last summary, fixed keys (a metrics row per step)."""
        self._sweep()
        r, self.round = self.round, Counter()
        sizes, self.sizes = [*self.sizes, self.size], [self.size]
        busy, self.busy_s = self.busy_s, 0.0
        return {
            "busy_s": busy,
            "workers": self.size,
            "workers_min": min(sizes),
            "workers_max": max(sizes),
            "retries": r["retries"],
            "timeouts": r["timeouts"],
            "restarts": r["restarts"],
            "replacements": r["replacements"],
            "scale_up": r["event_up"],
            "scale_down": r["event_down"],
        }

    def _count(self, what: str) -> None:
        self.round[what] += 1
        self.totals[what] += 1
        metrics.count(f"pool_{what}", 1, self.name)

    def _event(self, kind: str, aid: int, why: str) -> None:
        ev = PoolEvent(time.monotonic(), kind, aid, self.size, why)
        self.events.append(ev)
        self.sizes.append(self.size)
        self.round[f"event_{kind}"] += 1
        self.totals[f"event_{kind}"] += 1
        log.info("%s pool: %s actor %d (%s); size %d", self.name, kind, aid, why, self.size)
        metrics.gauge("pool_size", self.size, self.name)
        metrics.count("pool_events", 1, self.name, kind=kind)

    def _resized(self) -> None:
        if self.on_resize is not None:
            self.on_resize(self.size)

    def shutdown(self) -> None:
        for a in self.actors.values():
            ray.kill(a)
        self.actors.clear()
        self.starting.clear()
        self.reprobe.clear()
        if self.on_resize is not None:
            self.on_resize(0)
