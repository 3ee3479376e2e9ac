"""The pool's actors and their lives: start, ready, lost, restarted, replaced, retired.

Ray restarts a dead actor (``max_restarts``) but a call sent to it while it restarts is lost
too, and a retry that lands there spends an attempt (a modest fault rate then killed a run).
So an actor whose call was lost or hung leaves service and is *probed* with ``ready`` until it
answers (it is back: Ray restarted it) or is dead for good (restarts spent: a fresh actor
replaces it). A new actor serves once its first ``ready`` returns; one that cannot start is
dropped and the pool carries on. Every change is a ``PoolEvent``, logged and counted.

Each actor's state is one ``Member`` record; the views ``actors``, ``info``, ``starting``,
``reprobe`` and ``recovering`` are read from them, never kept beside them.

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
COUNTED = ("retries", "timeouts", "restarts", "replacements")
# up / down: scaling; respawn: the start of a replacement (counted apart from scaling)
EVENTS = ("up", "ready", "down", "failed", "lost", "hung", "back", "replaced", "respawn")


@dataclass(frozen=True)
class PoolEvent:
    """One decision: up / ready / down / failed (scaling), lost / hung / back / replaced."""

    at: float  # time.monotonic()
    kind: str
    actor: int
    size: int  # actors in the pool after the decision
    why: str


@dataclass
class Task:
    item: int
    shards: tuple[int, ...] = ()  # the items it stands for, when it is a chunk of them (names)
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    avoid: int | None = None


@dataclass
class Member:
    """One actor of the pool and where it is in its life."""

    handle: Any
    idle_since: float = field(default_factory=time.monotonic)
    info: Any = None  # what its last ``ready`` returned (records.WorkerInfo)
    asking: ray.ObjectRef | None = None  # a pending ``ready``: starting, or probed
    asked_at: float | None = None  # when that ``ready`` was first asked (its timeout)
    recovering: bool = False  # probed after a lost or hung call
    reprobe_at: float | None = None  # Ray is still restarting it: ask again then
    ray_restarts: int | None = None  # Ray's restart count, as of the last look
    busy: bool = False  # a call in flight

    @property
    def free(self) -> bool:
        """Can take work now."""
        return not self.busy and self.asking is None and self.reprobe_at is None


@dataclass
class Health:
    """Actor bookkeeping shared by the pool's work loop (``pool.Pool``)."""

    name: str
    make: Callable[[int], Any]
    ready_timeout_s: float
    on_resize: Callable[[int], None] | None
    members: dict[int, Member] = field(default_factory=dict)
    events: list[PoolEvent] = field(default_factory=list)
    round: Counter[str] = field(default_factory=Counter)  # since the last ``summary``
    totals: Counter[str] = field(default_factory=Counter)  # over the pool's life
    sizes: list[int] = field(default_factory=list)  # pool sizes since the last ``summary``
    busy_s: float = 0.0  # actor-seconds spent in calls since the last ``summary``
    next_id: int = 0

    # views, read from the members
    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def actors(self) -> dict[int, Any]:
        return {a: m.handle for a, m in self.members.items()}

    @property
    def info(self) -> dict[int, Any]:
        return {a: m.info for a, m in self.members.items() if m.info is not None}

    @property
    def starting(self) -> dict[int, ray.ObjectRef]:
        return {a: m.asking for a, m in self.members.items() if m.asking is not None}

    @property
    def reprobe(self) -> dict[int, float]:
        return {a: m.reprobe_at for a, m in self.members.items() if m.reprobe_at is not None}

    @property
    def recovering(self) -> set[int]:
        return {a for a, m in self.members.items() if m.recovering}

    def free(self) -> list[int]:
        """Actors that can take work now."""
        return [a for a, m in self.members.items() if m.free]

    def _add(self) -> int:
        aid = self.next_id
        self.next_id += 1
        self.members[aid] = Member(self.make(aid))
        return aid

    def zero_counters(self) -> None:
        """Every counter of this pool exported at 0 from its start."""
        for what in COUNTED:
            metrics.zero(f"pool_{what}", self.name)
        for kind in EVENTS:
            metrics.zero("pool_events", self.name, kind=kind)

    def _start_one(self, why: str, kind: str = "up") -> None:
        aid = self._add()  # Ray places it; it takes work once ``ready`` returns
        self._ask_ready(aid)
        self._event(kind, aid, why)
        self._resized()

    def _retire(self, aid: int, why: str) -> None:
        ray.kill(self.members.pop(aid).handle)
        self._event("down", aid, why)
        self._resized()

    def _ask_ready(self, aid: int) -> None:
        m = self.members[aid]
        m.asking = m.handle.ready.remote()
        m.asked_at = m.asked_at if m.asked_at is not None else time.monotonic()

    def _probe(self, aid: int, kind: str) -> None:
        """Out of service until ``ready`` answers: Ray is restarting it (or it is gone)."""
        m = self.members.get(aid)
        if m is None or m.recovering:
            return
        m.recovering = True
        self._ask_ready(aid)
        self._event(kind, aid, "probing until it is back")

    def _check_started(self) -> None:
        """Puts actors whose ``ready`` answered (back) in service; handles those that failed."""
        now = time.monotonic()
        for aid, m in list(self.members.items()):
            if m.reprobe_at is not None and now >= m.reprobe_at:
                m.reprobe_at = None
                self._ask_ready(aid)
        asking = {m.asking: aid for aid, m in self.members.items() if m.asking is not None}
        if not asking:
            return
        done, _ = ray.wait(list(asking), num_returns=len(asking), timeout=0)
        for ref, aid in asking.items():
            m = self.members[aid]
            if ref in done:
                m.asking = None
                self._answered(aid, ref)
            elif m.asked_at is not None and now - m.asked_at > self.ready_timeout_s:
                m.asking = None
                self._failed(aid, f"not ready after {self.ready_timeout_s:.0f}s")

    def _answered(self, aid: int, ref: ray.ObjectRef) -> None:
        m = self.members[aid]
        try:
            m.info = ray.get(ref)  # bounded: ray.wait returned it
        except ActorUnavailableError:  # Ray is still restarting it: ask again shortly
            m.reprobe_at = time.monotonic() + REPROBE_S
            return
        except (RayTaskError, RayActorError) as e:
            self._failed(aid, f"{type(e).__name__}")
            return
        m.asked_at, m.idle_since = None, time.monotonic()
        restarts = self._restarts_seen(aid)  # > 1: killed between calls before, too
        if m.recovering:
            m.recovering = False
            for _ in range(max(restarts, 1)):
                self._event("back", aid, "restarted by Ray")
                self._count("restarts")
        else:
            self._event("ready", aid, "started")

    def _failed(self, aid: int, why: str) -> None:
        """A new actor that could not start is dropped; a lost one dead for good is replaced."""
        m = self.members.pop(aid)
        ray.kill(m.handle)
        if m.recovering:
            self._event("replaced", aid, f"dead for good ({why})")
            self._count("replacements")
            self._start_one(f"replaces actor {aid}", kind="respawn")  # not a scale-up
        else:
            self._event("failed", aid, f"could not start: {why}")
            self._resized()

    def _restarts_seen(self, aid: int) -> int:
        """Ray restarts of ``aid`` not seen before (0 when Ray's table cannot be read)."""
        m = self.members[aid]
        try:
            info = ray_state.actors(actor_id=m.handle._actor_id.hex())
            n = int(info.get("NumRestarts", 0))
        except Exception as e:  # a private API: counting must never stop a run
            log.debug("%s pool: no restart count for actor %d: %s", self.name, aid, e)
            return 0
        new = n - (m.ray_restarts if m.ray_restarts is not None else n)
        m.ray_restarts = n
        return max(new, 0)

    def _sweep(self) -> None:
        """Counts restarts of serving actors that no lost call revealed (killed while idle)."""
        for aid in [a for a, m in self.members.items() if m.free and not m.recovering]:
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
        for m in self.members.values():
            ray.kill(m.handle)
        self.members.clear()
        if self.on_resize is not None:
            self.on_resize(0)
