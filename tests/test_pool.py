"""The work-queue pool: results in order, retries on another actor, errors that name the cause."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import ray
from ray import cloudpickle

from pte_ray.actors.pool import Pool, PoolError, PoolSpec
from pte_ray.records import Rows

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable by workers


class Echo:
    def __init__(
        self,
        aid: int,
        die_on: int | None = None,
        marker: str | None = None,
        broken: bool = False,
        added_start_s: float = 0.0,
    ) -> None:
        if broken:
            raise OSError(f"actor {aid}: cannot open /data/shard-{aid}")
        if aid > 0:
            time.sleep(added_start_s)  # a slow start (cold worker process, large weights)
        self.aid, self.die_on, self.marker = aid, die_on, marker

    def ready(self) -> int:
        return self.aid

    def work(self, x: int, sleep_s: float = 0.0) -> tuple[int, int]:
        if x == self.die_on and self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the actor process dies mid-call
        if x < 0:
            raise ValueError(f"bad shard value {x}")
        time.sleep(sleep_s)
        return x * x, self.aid


def _pool(n: int, **kw) -> Pool:
    opts = {"num_cpus": 0.01, "max_restarts": 1, "max_task_retries": 0}
    make_kw = kw.pop("make_kw", {})
    on_resize = kw.pop("on_resize", None)
    make = lambda i: ray.remote(Echo).options(**opts).remote(i, **make_kw)  # noqa: E731
    return Pool(PoolSpec("test", n, **kw), make, on_resize)


def test_map_keeps_order_and_spreads_work(ray_cluster):
    pool = _pool(2)
    try:
        out = pool.map(Echo.work, [(i, 0.05) for i in range(8)])
        assert [r for r, _ in out] == [i * i for i in range(8)]
        assert {a for _, a in out} == {0, 1}
    finally:
        pool.shutdown()


def test_shard_lost_to_a_dead_actor_is_retried_elsewhere(ray_cluster, tmp_path):
    pool = _pool(2, make_kw={"die_on": 3, "marker": str(tmp_path / "died")})
    try:
        out = pool.map(Echo.work, [(i,) for i in range(6)])
        assert [r for r, _ in out] == [i * i for i in range(6)]
        assert (tmp_path / "died").exists()
    finally:
        pool.shutdown()


def test_actor_exception_names_pool_shard_and_cause(ray_cluster):
    pool = _pool(1)
    try:
        with pytest.raises(PoolError, match=r"test actor 0 raised on shard 1.*bad shard value -5"):
            pool.map(Echo.work, [(1,), (-5,)])
    finally:
        pool.shutdown()


def test_actor_that_cannot_start_names_the_cause(ray_cluster):
    with pytest.raises(PoolError, match=r"test actor failed to start: .*cannot open /data/shard-"):
        _pool(1, make_kw={"broken": True})


def test_pool_grows_while_work_waits_and_shrinks_when_idle(ray_cluster):
    """Judged on the pool's decisions, not a snapshot of its size: with slow actor start-up
    (a fresh machine) the pool legitimately grows and retires the extra actor inside one map."""
    pool = _pool(1, min_size=1, max_size=3, scale_up_wait_s=0.2, scale_down_idle_s=0.5)
    try:
        out = pool.map(Echo.work, [(i, 0.6) for i in range(6)])
        assert [r for r, _ in out] == [i * i for i in range(6)]
        ups = [e for e in pool.events if e.kind == "up"]
        assert ups and ups[0].size == 2, pool.events
        time.sleep(0.8)
        pool.map(Echo.work, [(1,)])
        assert pool.size == 1
        downs = [e for e in pool.events if e.kind == "down"]
        assert downs and downs[-1].size == 1, pool.events
    finally:
        pool.shutdown()


def test_a_starting_actor_holds_no_shard_and_no_second_one_is_added(ray_cluster):
    """An added actor that takes 30 s to start: the running actor does all the work, the map
    does not wait for the newcomer, and the pool does not pile up more starting actors."""
    pool = _pool(
        1,
        min_size=1,
        max_size=3,
        scale_up_wait_s=0.2,
        scale_down_idle_s=60,
        make_kw={"added_start_s": 30.0},
    )
    try:
        out = pool.map(Echo.work, [(i, 0.3) for i in range(6)])
        assert [a for _, a in out] == [0] * 6  # every shard on the actor that was running
        assert [e.kind for e in pool.events] == ["up"] and pool.size == 2
        assert list(pool.starting) == [1]
    finally:
        pool.shutdown()


@dataclass(frozen=True)
class Req(Rows):
    xs: list[int]
    sleep_s: float = 0.0


@dataclass(frozen=True)
class Out(Rows):
    ys: list[int]
    aid: int  # shared by every row of one call: who served it
    n_call: int  # rows the call held
    first: int  # the call's first item: with n_call, who its batch mates were


class Batcher:
    def __init__(self, aid: int) -> None:
        self.aid = aid

    def ready(self) -> dict:
        return {"pid": os.getpid(), "aid": self.aid}

    def work(self, req: Req) -> Out:
        time.sleep(req.sleep_s)
        return Out([x * x for x in req.xs], self.aid, len(req.xs), req.xs[0])


def _batch_pool(n: int, **kw) -> Pool:
    opts = {"num_cpus": 0.01, "max_restarts": kw.pop("max_restarts", 1), "max_task_retries": 0}
    on_resize = kw.pop("on_resize", None)
    make = lambda i: ray.remote(Batcher).options(**opts).remote(i)  # noqa: E731
    return Pool(PoolSpec("test", n, **kw), make, on_resize)


def test_rows_records_join_and_cut():
    a, b = Req([1, 2], 0.5), Req([3], 0.5)
    both = Req.concat([a, b])
    assert both == Req([1, 2, 3], 0.5) and len(both) == 3
    assert both.rows(2, 3) == b and both.rows(0, 2) == a
    with pytest.raises(ValueError, match=r"Req.sleep_s differs"):
        Req.concat([a, Req([4], 0.1)])


def test_one_actor_takes_every_queued_item_in_one_call(ray_cluster):
    """Per-item dispatch costs nothing with one actor: the whole step is one batch."""
    pool = _batch_pool(1)
    try:
        out = pool.map_rows(Batcher.work, [Req([i, i + 1]) for i in range(0, 16, 2)])
        assert [o.ys for o in out] == [[i * i, (i + 1) ** 2] for i in range(0, 16, 2)]
        assert {o.n_call for o in out} == {16}
    finally:
        pool.shutdown()


def test_room_to_grow_leaves_work_queued_and_the_pool_grows(ray_cluster):
    """With max_size 2 the one actor takes half; the rest waits, and that wait adds an actor."""
    pool = _batch_pool(1, min_size=1, max_size=2, scale_up_wait_s=0.2, scale_down_idle_s=60)
    try:
        out = pool.map_rows(Batcher.work, [Req([i], 0.4) for i in range(8)])
        assert [o.ys for o in out] == [[i * i] for i in range(8)]
        assert out[0].n_call == 4  # 8 items cut over 2 places
        deadline = time.monotonic() + 60
        while pool.starting:  # the added actor may come up after the map is done
            assert time.monotonic() < deadline, pool.events
            pool._check_started()
            time.sleep(0.1)
        assert [e.kind for e in pool.events][:2] == ["up", "ready"], pool.events
        assert pool.round["event_up"] == 1
    finally:
        pool.shutdown()


def test_a_lost_call_is_retried_whole_with_the_same_batch_mates(ray_cluster):
    """The cut is fixed before the first call: the chunk a killed actor held goes to the
    survivor whole, so every item is computed in the batch it has without the fault (a batched
    forward's numbers depend on the batch)."""
    pool = _batch_pool(2, max_restarts=1, max_retries=2)
    try:
        assert pool.chunks(8) == [[0, 1, 2, 3], [4, 5, 6, 7]] and pool.chunks(3) == [[0, 1], [2]]
        reqs = [Req([i], 0.4) for i in range(8)]
        calm = pool.map_rows(Batcher.work, reqs)
        threading.Timer(0.15, os.kill, (pool.info[0]["pid"], signal.SIGKILL)).start()
        out = pool.map_rows(Batcher.work, reqs)
        assert pool.round["retries"] == 1, pool.events  # one chunk sent again
        assert [(o.n_call, o.first) for o in out] == [(o.n_call, o.first) for o in calm]
        assert [(o.n_call, o.first) for o in out] == [(4, 0)] * 4 + [(4, 4)] * 4
        assert {o.aid for o in out} == {1}  # all on the survivor
    finally:
        pool.shutdown()


def test_killed_actor_process_loses_nothing_and_comes_back(ray_cluster):
    """SIGKILL an actor's process mid-call, twice: its items run elsewhere, exactly once; Ray
    restarts it once (max_restarts=1) and the pool probes it back into service; killed again
    with no restart left, a fresh actor replaces it."""
    pool = _batch_pool(2, max_restarts=1, max_retries=2, max_items_per_call=1)
    try:
        for _ in range(2):
            pid = pool.info[0]["pid"]
            threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
            out = pool.map_rows(Batcher.work, [Req([i], 0.3) for i in range(12)])
            assert [o.ys for o in out] == [[i * i] for i in range(12)]
            assert pool.round["retries"] >= 1, pool.events
            deadline = time.monotonic() + 60
            while pool.starting or pool.reprobe:  # let the probe finish between maps
                assert time.monotonic() < deadline, pool.events
                pool._check_started()
                time.sleep(0.1)
        kinds = [e.kind for e in pool.events]
        assert kinds.count("lost") == 2 and "back" in kinds and "replaced" in kinds, kinds
        assert pool.size == 2 and pool.totals["restarts"] == 1
        # the replacement's start is a respawn, not a scale-up: the pool never grew
        assert "respawn" in kinds and "up" not in kinds
        assert pool.totals["replacements"] == 1 and pool.totals["event_up"] == 0
    finally:
        pool.shutdown()


def _until_back(actor) -> None:
    """Waits for Ray to restart a killed actor (a call sent before then is lost)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=10)
            return
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "actor not restarted in 60 s"
            time.sleep(0.2)


def test_actor_killed_between_calls_is_counted_once(ray_cluster):
    """SIGKILL an idle actor: no call is lost, so only Ray's actor table shows the restart; the
    step's summary counts it once (and not again), and the actor serves afterwards."""
    pool = _batch_pool(2, max_restarts=2)
    try:
        assert pool.summary()["restarts"] == 0
        os.kill(pool.info[0]["pid"], signal.SIGKILL)
        _until_back(pool.actors[0])
        assert pool.summary()["restarts"] == 1, pool.events
        assert pool.summary()["restarts"] == 0 and pool.totals["restarts"] == 1
        assert [e.why for e in pool.events if e.kind == "back"] == [
            "restarted by Ray between calls"
        ]
        out = pool.map_rows(Batcher.work, [Req([i]) for i in range(4)])
        assert [o.ys for o in out] == [[i * i] for i in range(4)]
    finally:
        pool.shutdown()


def test_a_hung_call_times_out_and_runs_on_another_actor(ray_cluster):
    """Actor 0 hangs (a sleep it runs before the map's call): the call queued behind it times
    out, the pool restarts actor 0 and the item runs on actor 1."""
    pool = _batch_pool(2, call_timeout_s=1.5, max_restarts=2)
    try:
        pool.actors[0].__ray_call__.remote(lambda self: time.sleep(30))
        time.sleep(0.2)
        out = pool.map_rows(Batcher.work, [Req([i]) for i in range(4)])
        assert [o.ys for o in out] == [[i * i] for i in range(4)]
        assert pool.round["timeouts"] >= 1 and {o.aid for o in out} == {1}
        assert "hung" in [e.kind for e in pool.events]
    finally:
        pool.shutdown()
