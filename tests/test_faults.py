"""Faults and scaling in real training runs: worker processes SIGKILLed mid-run lose nothing,
and the rollout pool grows under backlog and retires the idle worker (real Ray, DeepSpeed)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from pte_ray.actors.errors import PoolError
from pte_ray.config import load_config
from pte_ray.controller.loop import fit
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir


@pytest.fixture
def base(random_ckpt, task_file, tmp_path):
    def make(*extra: str) -> list[str]:
        return [
            f"model.path={random_ckpt('qwen2')}",
            f"data.train={task_file}",
            "grpo.group_size=4",
            "cache.budget=8",
            f"train.output_dir={tmp_path / 'run'}",
            *extra,
        ]

    return make


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _check_rollout_files(run: Path, steps: int, groups: int, g: int) -> None:
    """Every step: exactly groups x g rows, each group whole, none twice, on the step's weights."""
    table = ds.dataset(run / "rollouts").to_table().to_pylist()
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in table:
        by_step.setdefault(row["step"], []).append(row)
    assert sorted(by_step) == list(range(1, steps + 1))
    for step, rows in by_step.items():
        assert len(rows) == groups * g, (step, len(rows))
        sizes = Counter((r["group"], r["prompt_index"]) for r in rows)
        assert len(sizes) == groups and set(sizes.values()) == {g}, (step, sizes)
        assert {r["version"] for r in rows} == {step - 1}, step  # synchronous: the newest


class _Killer(threading.Thread):
    """SIGKILLs a serving worker process of each pool in turn, every ``every_s`` seconds."""

    def __init__(self, ctl: Controller, kills: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.ctl, self.left, self.every_s = ctl, kills, every_s
        self.done: list[tuple[str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(0)
        roles = self.ctl.roles
        pools = [roles.rollout, roles.reward, roles.reference]
        while self.left > 0 and not self.stop.wait(self.every_s):
            pool = pools[len(self.done) % len(pools)]
            try:
                out = set(pool.starting) | set(pool.recovering) | set(pool.reprobe)
                serving = [a for a in list(pool.actors) if a in pool.info and a not in out]
            except RuntimeError:  # changed while read (the controller's thread): next time
                continue
            if not serving:
                continue
            aid = rng.choice(serving)
            try:
                os.kill(pool.info[aid].pid, signal.SIGKILL)
            except (ProcessLookupError, KeyError):
                continue  # already dead, or gone from the pool meanwhile
            self.done.append((pool.name, aid))
            self.left -= 1


@pytest.mark.slow  # a 10-step run with 8 worker restarts
def test_killed_workers_lose_nothing(ray_cluster, base, tmp_path):
    """Rollout, reward and reference worker processes are SIGKILLed 8 times during a real run:
    it finishes, every step's Parquet holds each group whole and once, every row was generated
    with the step's weights (restarted workers load them before serving), and the pools count
    the retries and restarts."""
    steps, groups, g = 10, 4, 4
    cfg = load_config(
        None,
        base(
            f"train.steps={steps}",
            f"train.prompts_per_step={groups}",
            "train.save_every=100",
            "sampling.max_new_tokens=48",
            "grpo.kl_coef=0.05",
            "rollout.num_workers=2",
            "reward.num_workers=2",
            "reference.num_workers=2",
            "rollout.num_cpus=0.2",
            "reward.num_cpus=0.1",
            "reference.num_cpus=0.1",
            "learner.num_cpus=0.2",
            "train.max_retries=3",
        ),
    )
    ctl = Controller(cfg, RunDir.open(cfg, None))
    killer = _Killer(ctl, kills=8, every_s=1.5)
    try:
        killer.start()
        fit(ctl)
        killer.stop.set()
        killer.join()
        pools = {"rollout": ctl.roles.rollout, "reward": ctl.roles.reward}
        pools["reference"] = ctl.roles.reference
        totals = {n: dict(p.totals) for n, p in pools.items()}
    finally:
        ctl.shutdown()
    run = tmp_path / "run"
    print(f"kills: {killer.done}; pool totals: {totals}")
    assert len(killer.done) >= 6 and {n for n, _ in killer.done} == set(pools)
    _check_rollout_files(run, steps, groups, g)
    rows = _metrics(run)
    back = sum(m[f"{n}_restarts"] + m[f"{n}_replacements"] for m in rows for n in pools)
    assert back >= len(killer.done) - len(pools), (back, killer.done)  # the last may be pending
    assert sum(m[f"{n}_retries"] for m in rows for n in pools) >= 1


@pytest.mark.slow  # a 10-step run with two worker starts
def test_rollout_pool_grows_under_backlog_and_retires_when_idle(ray_cluster, base, tmp_path):
    """min 1, max 2 workers: part of each step's groups waits while the one worker takes its
    share, the wait adds a worker; the learn phase leaves the pool idle, past
    ``scale_down_idle_s`` here, so the extra worker retires before the next step. Every
    decision is in the metrics rows (workers min / max / end, scale_up, scale_down)."""
    steps, groups, g = 10, 8, 4
    over = base(
        f"train.steps={steps}",
        f"train.prompts_per_step={groups}",
        "sampling.max_new_tokens=64",
        "rollout.num_workers=1",
        "rollout.min_workers=1",
        "rollout.max_workers=2",
        "rollout.num_cpus=0.2",
        "rollout.scale_up_wait_s=0.05",  # the second chunk waits for the first: ~0.2 s
        "rollout.scale_down_idle_s=0.5",
        "learner.micro_batch=1",  # a learn phase of ~1 s or more on any machine: the idle gap
    )
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        fit(ctl)
        events = [(e.kind, e.size) for e in ctl.roles.rollout.events]
    finally:
        ctl.shutdown()
    rows = _metrics(tmp_path / "run")
    timeline = [n for m in rows for n in (m["rollout_workers_min"], m["rollout_workers_max"])]
    print(f"pool sizes (min, max per step): {timeline}; events: {events}")
    grew = timeline.index(2)
    assert 1 in timeline[grew:], timeline  # 1 -> 2 -> 1
    assert sum(m["rollout_scale_up"] for m in rows) >= 1
    assert sum(m["rollout_scale_down"] for m in rows) >= 1
    assert ("up", 2) in events and ("down", 1) in events
    _check_rollout_files(tmp_path / "run", steps, groups, g)


def _hang_at_step_3(ctl: Controller, metrics: Path) -> threading.Thread:
    """Rollout worker 0 runs a 10-minute sleep before its next call, once step 2 is logged."""

    def hang() -> None:
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
            time.sleep(0.05)
        ctl.roles.rollout.actors[0].__ray_call__.remote(lambda self: time.sleep(600))

    t = threading.Thread(target=hang, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # a 6-step run with one hung worker
def test_a_hung_rollout_worker_does_not_hold_the_run(ray_cluster, base, tmp_path):
    """Rollout worker 0 hangs at step 3: the call queued behind its sleep times out after
    ``train.call_timeout_s``, the pool restarts that worker and the groups run on worker 1;
    the run finishes with every group once."""
    steps, groups, g = 6, 4, 4
    over = base(
        f"train.steps={steps}",
        f"train.prompts_per_step={groups}",
        "rollout.num_workers=2",
        "rollout.num_cpus=0.2",
        "train.call_timeout_s=20",
    )
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        _hang_at_step_3(ctl, tmp_path / "run" / "metrics.jsonl")
        fit(ctl)
        kinds = [e.kind for e in ctl.roles.rollout.events]
    finally:
        ctl.shutdown()
    rows = _metrics(tmp_path / "run")
    assert sum(m["rollout_timeouts"] for m in rows) == 1 and "hung" in kinds, kinds
    assert max(m["step_s"] for m in rows) < 120  # never the 600 s sleep
    _check_rollout_files(tmp_path / "run", steps, groups, g)


@pytest.mark.slow  # a 3-step run that fails
def test_a_wait_out_of_retries_names_role_actor_and_step(ray_cluster, base, tmp_path):
    over = base(
        "train.steps=3",
        "train.prompts_per_step=2",
        "train.call_timeout_s=5",
        "train.max_retries=0",
    )
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        ctl.roles.rollout.actors[0].__ray_call__.remote(lambda self: time.sleep(600))
        want = r"step 1: rollout: shards 0, 1 failed 1 times, last on actor 0 \(timed out"
        with pytest.raises(PoolError, match=want):
            fit(ctl)
    finally:
        ctl.shutdown()


def test_a_ceiling_the_fixed_cluster_cannot_hold_is_an_error_at_start(ray_cluster, base):
    """rollout.max_workers beyond a cluster that cannot grow: an error naming the setting and
    the numbers, before any actor starts (with request_resources the pool asks instead)."""
    over = base("rollout.max_workers=40", "rollout.request_resources=false")
    with pytest.raises(PoolError, match=r"rollout.max_workers=40 needs 20.* CPU.*cannot grow"):
        Controller(load_config(None, over), RunDir.open(load_config(None, over), None))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (["rollout.min_workers=3", "rollout.max_workers=2"], "min_workers=3 > rollout.max"),
        (["rollout.num_workers=3", "rollout.max_workers=2"], "num_workers=3 is outside"),
        (["rollout.max_groups_per_call=0"], "max_groups_per_call"),
    ],
)
def test_pool_bounds_are_checked_in_the_config(over, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, over)
