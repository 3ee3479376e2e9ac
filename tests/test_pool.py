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
        self, aid: int, die_on: int | None = None, marker: str | None = None, broken: bool = False
    ) -> None:
        if broken:
            raise OSError(f"actor {aid}: cannot open /data/shard-{aid}")
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
    pool = _pool(1, min_size=1, max_size=3, scale_up_wait_s=0.2, scale_down_idle_s=0.5)
    try:
        pool.map("work", [(i, 0.6) for i in range(6)])
        assert pool.size > 1
        time.sleep(0.8)
        pool.map("work", [(1,)])
        assert pool.size == 1
    finally:
        pool.shutdown()
