"""A dead learner resumes itself: the controller replaces the group (new rendezvous) and resumes
from the last checkpoint in the same job; checkpoints are pruned and broken ones skipped."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from pte_ray.actors.errors import LearnerLost, PoolError
from pte_ray.actors.learner import Learner
from pte_ray.config import load_config
from pte_ray.controller.loop import fit
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir


@pytest.fixture
def base(small_run, tmp_path):
    """A 6-step run whose adapter moves every step: the random model earns no reward, so the
    KL term (bounded-cache policy vs full-cache reference) gives the gradient; without it the
    adapter would stand still and any two runs would end equal."""

    def make(out: str, *extra: str) -> list[str]:
        return [
            *small_run,
            "train.steps=6",
            "train.save_every=2",
            "grpo.kl_coef=0.05",
            *("learner.num_cpus=0.3", "rollout.num_cpus=0.2"),
            *("reward.num_cpus=0.1", "reference.num_cpus=0.1"),
            f"train.output_dir={tmp_path / out}",
            *extra,
        ]

    return make


def _same_trained_adapter(tmp_path: Path, a: str, b: str) -> None:
    """The two runs' final adapters are equal, and the first run's moved at every step."""
    rows = [json.loads(x) for x in (tmp_path / a / "metrics.jsonl").read_text().splitlines()]
    assert all(m["grad_norm"] > 0 for m in rows), [m["grad_norm"] for m in rows]
    x = load_file(tmp_path / a / "checkpoints/step_000006/adapter.safetensors")
    y = load_file(tmp_path / b / "checkpoints/step_000006/adapter.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _kill_learner_after(ctl: Controller, lines: int, node: bool = False) -> threading.Thread:
    """SIGKILLs the last learner rank's process once metrics.jsonl has ``lines`` rows; with
    ``node``, every rollout worker's too, in the same instant (what losing a GPU node does)."""
    metrics = ctl.run.metrics_file
    pids = [ctl.roles.learners.info[-1].pid]
    if node:
        pids += [i.pid for i in ctl.roles.rollout.info.values()]

    def kill() -> None:
        while not metrics.exists() or len(metrics.read_text().splitlines()) < lines:
            time.sleep(0.02)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


def _run(over: list[str], kill_after: int | None = None, node: bool = False) -> Controller:
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        if kill_after is not None:
            _kill_learner_after(ctl, kill_after, node)
        fit(ctl)
    finally:
        ctl.shutdown()
    return ctl


@pytest.mark.slow  # two 6-step runs and a learner restart
@pytest.mark.parametrize("learners", [1, 2])
def test_killed_learner_resumes_and_ends_bit_identical(ray_cluster, base, tmp_path, learners):
    """With 2 ranks the survivor is blocked in a collective with the dead one: the group is
    still recognised as lost (not as a bug in the survivor) and replaced whole."""
    group = f"learner.num_learners={learners}"
    _run(base("straight", group))
    ctl = _run(base("killed", group, "train.max_learner_restarts=1"), kill_after=3)
    assert ctl.state.learner_restarts == 1 and ctl.roles.learners.epoch == 1
    rows = [json.loads(x) for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["learner_restarts"] == 1
    _same_trained_adapter(tmp_path, "straight", "killed")


@pytest.mark.slow  # two 6-step runs, a learner restart and every rollout worker's
def test_learner_and_rollout_workers_killed_together_resume_bit_identical(
    ray_cluster, base, tmp_path
):
    """The weights a restarted rollout worker must load outlive the learner that made them
    (the controller owns each published version), so losing both at once is one learner loss:
    the group is replaced, resumes from its checkpoint, re-publishes, and the step is redone."""
    two = "rollout.num_workers=2"
    _run(base("straight", two))
    ctl = _run(base("node", two, "train.max_learner_restarts=1"), kill_after=3, node=True)
    assert ctl.state.learner_restarts == 1
    rows = [json.loads(x) for x in (tmp_path / "node/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6]
    _same_trained_adapter(tmp_path, "straight", "node")


@pytest.mark.slow  # a 6-step run and a restart of every role
def test_colocated_roles_restart_with_the_learners_and_a_prefetch_is_dropped(
    ray_cluster, base, tmp_path
):
    """Colocated workers live in the learners' placement group: removing it takes them along,
    so every role restarts; the batch prefetched for the next step (max_staleness=1) is dropped
    and its prompts come back with the checkpoint's cursor."""
    small = ("rollout.num_cpus=0.2", "learner.num_cpus=0.2", "reward.num_cpus=0.1")
    over = base("colo", "learner.colocate=true", "train.max_staleness=1", *small)
    ctl = _run([*over, "train.max_learner_restarts=1"], kill_after=3)
    assert ctl.state.learner_restarts == 1 and ctl.roles.learners.epoch == 1
    rows = [json.loads(x) for x in (tmp_path / "colo/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6]
    assert [m["learner_restarts"] for m in rows] == [0, 0, 1, 1, 1, 1]
    # the resumed step 3 generates afresh with the checkpoint's weights (version 2)
    assert rows[2]["weight_version"] - rows[2]["rollout_version_min"] == 1


def test_lost_learner_without_a_checkpoint_is_a_clear_error(ray_cluster, base, tmp_path):
    cfg = load_config(None, base("early", "train.max_learner_restarts=2"))
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        # a rank whose own code raises is a bug: it stops the run, restarts or not
        with pytest.raises(PoolError, match="learner raised on train_step") as bug:
            ctl.roles.learners.each(Learner.train_step, [(None,)])
        assert not isinstance(bug.value, LearnerLost)
        os.kill(ctl.roles.learners.info[0].pid, signal.SIGKILL)
        with pytest.raises(PoolError, match=r"learner .*no checkpoint to restart the learners"):
            fit(ctl)
    finally:
        ctl.shutdown()


def _fake_checkpoint(run: RunDir, step: int) -> Path:
    """A checkpoint with the files a learner and the controller write, through ``RunDir``
    (so with its manifest)."""
    with run.checkpoint_dir(step) as d:
        (d / "deepspeed/state").mkdir(parents=True)
        (d / "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"o" * 32)
        (d / "adapter.safetensors").write_bytes(b"x" * 16)
        (d / "adapter.json").write_text("{}")
        (d / "controller.json").write_text(json.dumps({"step": step, "cursor": [0, step]}))
    return run.ckpt_root / f"step_{step:06d}"


def test_keep_last_prunes_and_broken_checkpoints_are_skipped(tmp_path, caplog):
    run = RunDir(tmp_path)
    for step in (2, 4, 6, 8):
        _fake_checkpoint(run, step)
    run.prune_checkpoints(2)
    assert [p.name for p in run.checkpoints()] == ["step_000006", "step_000008"]
    run.prune_checkpoints(None)  # keep_last=None: every one stays
    assert len(run.checkpoints()) == 2
    (_fake_checkpoint(run, 8) / "controller.json").write_text('{"step": 8, "cur')
    (_fake_checkpoint(run, 10) / "adapter.safetensors").unlink()
    rank1 = "deepspeed/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    (_fake_checkpoint(run, 12) / rank1).write_bytes(b"o" * 5)  # truncated after the write
    (_fake_checkpoint(run, 14) / rank1).unlink()  # a rank's state lost
    (_fake_checkpoint(run, 16) / "files.json").write_text("[1, 2")
    with caplog.at_level(logging.WARNING):
        assert run.latest_checkpoint() == tmp_path / "checkpoints/step_000006"
    for why in (
        "step_000008: controller.json unreadable",
        "step_000010: missing adapter.safetensors",
        f"step_000012: {rank1} is 5 bytes, 32 when written",
        f"step_000014: missing {rank1}",
        "step_000016: files.json unreadable",
    ):
        assert why in caplog.text
    run.prune_checkpoints(1)  # a broken checkpoint is not a complete one: never counted
    assert [p.name for p in run.checkpoints()] == ["step_000006"]
    with pytest.raises(FileNotFoundError, match="not a usable checkpoint .missing adapter"):
        RunDir.open(load_config(None, []), str(tmp_path / "checkpoints/step_000010"))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (["train.keep_last=0"], "train.keep_last"),
        (["train.max_learner_restarts=1", "train.save_every=200"], "no checkpoint before"),
        (["train.max_learner_restarts=1", "train.save_every=150"], "save_every=150 >= train"),
    ],
)
def test_restart_settings_are_checked_in_the_config(over, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, over)


def test_an_unplaceable_learner_group_is_said_then_a_clear_error(ray_cluster, small_run, capfd):
    """A group that cannot be placed (no room yet: a lost node's replacement still coming up)
    is reported while it waits, and fails at the bound naming the bundles."""
    from pte_ray.actors.learner_group import LearnerGroup

    cfg = load_config(None, [*small_run, "learner.num_cpus=64"])
    with pytest.raises(PoolError, match=r"not placeable in 2s: the cluster lacks"):
        LearnerGroup(cfg, cfg.model.path, ready_timeout_s=2.0)
    assert "waiting up to 2s for room" in capfd.readouterr().err
    assert not [p for p in ray.util.placement_group_table().values() if p["state"] != "REMOVED"]
