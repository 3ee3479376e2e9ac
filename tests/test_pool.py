"""The work-queue pool: results in order, retries on another actor, errors that name the cause."""

from __future__ import annotations

import os
import sys
import time

import pytest
import ray
from ray import cloudpickle

from pte_ray.actors.pool import Pool, PoolError

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
    return Pool("test", lambda i: ray.remote(Echo).options(**opts).remote(i, **make_kw), n, **kw)


def test_map_keeps_order_and_spreads_work(ray_cluster):
    pool = _pool(2)
    try:
        out = pool.map("work", [(i, 0.05) for i in range(8)])
        assert [r for r, _ in out] == [i * i for i in range(8)]
        assert {a for _, a in out} == {0, 1}
    finally:
        pool.shutdown()


def test_shard_lost_to_a_dead_actor_is_retried_elsewhere(ray_cluster, tmp_path):
    pool = _pool(2, make_kw={"die_on": 3, "marker": str(tmp_path / "died")})
    try:
        out = pool.map("work", [(i,) for i in range(6)])
        assert [r for r, _ in out] == [i * i for i in range(6)]
        assert (tmp_path / "died").exists()
    finally:
        pool.shutdown()


def test_actor_exception_names_pool_shard_and_cause(ray_cluster):
    pool = _pool(1)
    try:
        with pytest.raises(PoolError, match=r"test actor 0 raised on shard 1.*bad shard value -5"):
            pool.map("work", [(1,), (-5,)])
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
        out = pool.map("work", [(i, 0.6) for i in range(6)])
        assert [r for r, _ in out] == [i * i for i in range(6)]
        ups = [e for e in pool.events if e.kind == "up"]
        assert ups and ups[0].size == 2, pool.events
        time.sleep(0.8)
        pool.map("work", [(1,)])
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
        out = pool.map("work", [(i, 0.3) for i in range(6)])
        assert [a for _, a in out] == [0] * 6  # every shard on the actor that was running
        assert [e.kind for e in pool.events] == ["up"] and pool.size == 2
        assert list(pool.starting) == [1]
    finally:
        pool.shutdown()
