"""The Ray actor/learner system end to end, on a local Ray cluster (real actors, DeepSpeed)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray
import torch
from safetensors.torch import load_file

from pte_ray.actors.learner import Learner
from pte_ray.actors.pool import PoolError
from pte_ray.commands import train
from pte_ray.config import load_config
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir

METRIC_KEYS = {
    "step",
    "reward_mean",
    "reward_std",
    "kl",
    "loss",
    "tokens_per_s",
    "evictions_per_seq",
    "weight_version",
    "logprob_replay_diff",
    "step_s",
    "rollout_s",
    "reward_ref_s",
    "learn_s",
    "publish_s",
}


@pytest.fixture
def base(small_run, tmp_path):
    def make(*extra: str, out: str = "run") -> list[str]:
        return [
            *small_run,
            "learner.zero_stage=2",
            f"train.output_dir={tmp_path / out}",
            *extra,
        ]

    return make


def _cluster() -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Every actor (id -> (class, state)) and placement group (id -> state) the cluster knows,
    dead and removed ones included."""
    from ray.util.state import list_actors, list_placement_groups

    actors = {a.actor_id: (a.class_name, a.state) for a in list_actors(limit=10_000)}
    groups = {g.placement_group_id: g.state for g in list_placement_groups(limit=10_000)}
    return actors, groups


def _started_since(before, settle_s: float = 15.0) -> tuple[list[tuple[str, str]], list[str]]:
    """The actors ((class, state)) and placement groups (state) created since ``before``, once
    none is still running or holding resources (``ray.kill`` and group removal are async), or
    after ``settle_s``: a clean stop leaves every one DEAD or REMOVED."""
    deadline = time.monotonic() + settle_s
    while True:
        now_actors, now_groups = _cluster()
        actors = [v for k, v in now_actors.items() if k not in before[0]]
        groups = [v for k, v in now_groups.items() if k not in before[1]]
        settled = all(s == "DEAD" for _, s in actors) and all(s == "REMOVED" for s in groups)
        if settled or time.monotonic() > deadline:
            return actors, groups
        time.sleep(0.5)


def test_publish_makes_rollout_weights_bit_identical(ray_cluster, base, tmp_path):
    # weight decay moves B and the encoders even if this random model earns no reward
    over = base("train.steps=1", "optim.weight_decay=0.5", "optim.encoder_lr_scale=10")
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        # the encoder trains at its own learning rate, as DeepSpeed's optimizer holds it
        lrs = ray.get(ctl.roles.learners.actors[0].optimizer_lrs.remote())
        assert lrs == pytest.approx([cfg.optim.lr, 10 * cfg.optim.lr])
        ctl.publish()
        worker = next(iter(ctl.roles.rollout.actors.values()))
        v0 = ray.get(worker.sync.remote(ctl.weights))
        before = ray.get(worker.adapter_state.remote())[1]
        m = ctl.train_step(0)
        assert m["weight_version"] == v0 + 1 and m["rollout_version_min"] == v0
        learner = ray.get(ctl.roles.learners.actors[0].adapter_state.remote())
        assert ray.get(worker.sync.remote(ctl.weights)) == v0 + 1
        version, rollout = ray.get(worker.adapter_state.remote())
        assert version == v0 + 1 and set(rollout) == set(learner)
        assert any(not torch.equal(learner[k], before[k]) for k in learner), "nothing moved"
        for k in learner:
            assert torch.equal(rollout[k], learner[k]), k
    finally:
        ctl.shutdown()


@pytest.mark.parametrize(
    ("mini_batches", "grad"),
    [
        (2, "truncated"),
        pytest.param(6, "truncated", marks=pytest.mark.slow),
        pytest.param(2, "exact", marks=pytest.mark.slow),
    ],
)
def test_two_learners_two_workers_uneven_groups(ray_cluster, base, mini_batches, grad):
    over = base(
        "train.steps=1",
        f"replay.grad={grad}",
        "train.prompts_per_step=3",
        "learner.num_learners=2",
        # 2: uneven parts per rank (sizes are all-reduced); 6: rank 1 (4 samples) has empty
        # parts while rank 0 (8) has none, and must still reduce a gradient for every parameter
        f"learner.mini_batches={mini_batches}",
        "rollout.num_workers=2",
        "rollout.num_cpus=0.25",
        "learner.num_cpus=0.25",
        "reward.num_cpus=0.1",
    )
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        ctl.publish()
        m = ctl.train_step(0)
        assert m["logprob_replay_diff"] <= 1e-4
        a, b = ctl.roles.learners.all(Learner.state_digest)
        assert a == b  # one data-parallel group: identical weights after the all-reduce
    finally:
        ctl.shutdown()


def test_colocated_workers_run_in_the_learners_bundles(ray_cluster, base):
    from ray.util.state import list_actors

    over = base(
        "train.steps=1",
        "learner.num_learners=2",
        "learner.colocate=true",
        "rollout.num_workers=2",
        "grpo.kl_coef=0.05",  # reference workers are colocated too
        "rollout.num_cpus=0.2",
        "reference.num_cpus=0.1",
        "learner.num_cpus=0.2",
        "reward.num_cpus=0.1",
    )
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        pg = ctl.roles.learners.pg
        assert pg.bundle_specs == [{"CPU": 0.5}, {"CPU": 0.4}]  # learner + rollout (+ ref)
        placed = {
            a.class_name: a.placement_group_id
            for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
        }
        for role in ("Learner", "RolloutWorker", "ReferenceWorker"):
            assert placed[role] == pg.id.hex(), role
        assert placed["RewardWorker"] is None
        ctl.publish()
        assert ctl.train_step(0)["logprob_replay_diff"] <= 1e-4
    finally:
        ctl.shutdown()
    with pytest.raises(ValueError, match="colocate"):
        load_config(None, over + ["rollout.max_workers=4"])


def test_train_writes_the_run_directory(ray_cluster, base, tmp_path):
    before = _cluster()
    assert train.main(None, base("train.steps=3", "train.save_every=2")) == 0
    run = tmp_path / "run"
    cfg = load_config(run / "config.yaml")
    assert cfg.train.steps == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert METRIC_KEYS <= set(lines[0])
    assert all(m["logprob_replay_diff"] <= 1e-4 for m in lines)
    table = ds.dataset(run / "rollouts").to_table()
    assert table.num_rows == 3 * 8 and table.column("version").to_pylist()[-1] == 2
    for c in ("prompt", "completion", "reward", "status", "version", "evictions"):
        assert c in table.schema.names
    for step in (2, 3):
        ck = run / "checkpoints" / f"step_{step:06d}"
        assert load_file(ck / "adapter.safetensors")
        assert json.loads((ck / "adapter.json").read_text())["version"] == step
    actors, groups = _started_since(before)
    assert {c for c, _ in actors} >= {"Learner", "RolloutWorker", "RewardWorker"}
    assert all(s == "DEAD" for _, s in actors) and groups == ["REMOVED"], (actors, groups)


@pytest.mark.slow  # three training runs
def test_resume_continues_bit_for_bit(ray_cluster, base, tmp_path):
    # the KL term moves the adapter every step (the random model earns no reward)
    kl = ("train.save_every=2", "grpo.kl_coef=0.05")
    assert train.main(None, base("train.steps=4", *kl, out="straight")) == 0
    assert train.main(None, base("train.steps=2", *kl, out="split")) == 0
    over = base("train.steps=4", *kl, out="split")
    ckpt = tmp_path / "split" / "checkpoints" / "step_000002"
    assert train.main(None, over, resume=str(ckpt)) == 0  # a path: that checkpoint
    a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    strip = ("step_s", "rollout_s", "reward_ref_s", "learn_s", "publish_s", "tokens_per_s")
    strip += ("learner_peak_mb", "wall_s")  # a measurement of the process, like the timings

    def clean(line: str) -> dict:
        timed = ("_busy_s", "_idle_ratio")
        return {
            k: v for k, v in json.loads(line).items() if k not in strip and not k.endswith(timed)
        }

    assert [clean(x) for x in a] == [clean(x) for x in b]
    assert all(json.loads(x)["grad_norm"] > 0 for x in a)  # equal by training, not by rest
    wa = load_file(tmp_path / "straight/checkpoints/step_000004/adapter.safetensors")
    wb = load_file(tmp_path / "split/checkpoints/step_000004/adapter.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("extra", "exc", "match"),
    [
        (["model.path=/nonexistent/model"], FileNotFoundError, "/nonexistent/model"),
        (["cache.bugdet=3"], ValueError, "cache.bugdet"),
        (["learner.num_learners=9"], ValueError, "num_learners"),
    ],
)
def test_bad_input_fails_before_any_actor_starts(ray_cluster, base, tmp_path, extra, exc, match):
    before = _cluster()
    with pytest.raises(exc, match=match):
        train.main(None, base("train.steps=1", *extra))
    assert _started_since(before, settle_s=0) == ([], [])  # caught before any compute
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_dataset_without_columns_names_file_and_column(ray_cluster, base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    before = _cluster()
    with pytest.raises(ValueError, match=r"bad\.jsonl.*prompt"):
        train.main(None, base("train.steps=1", f"data.train={bad}"))
    assert _started_since(before, settle_s=0) == ([], [])


def test_learner_that_cannot_load_the_model_stops_the_run_with_its_cause(
    ray_cluster, base, tmp_path, random_ckpt
):
    # a truncated weights file passes the controller's checks and breaks in the actors that load
    # it: the learners, which start first, so the learner group must stop its own half-start
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(random_ckpt("qwen2"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = _cluster()
    match = r"failed to start: .*broken/model\.safetensors.*truncated"
    with pytest.raises(PoolError, match=match) as failed:  # held: see the next test
        train.main(None, base("train.steps=2", f"model.path={broken}"))
    actors, groups = _started_since(before)
    assert {c for c, _ in actors} == {"Learner"}  # no later role was started
    assert all(s == "DEAD" for _, s in actors) and groups == ["REMOVED"], (actors, groups)
    assert not (tmp_path / "run" / "checkpoints").exists()
    del failed


def test_role_failing_after_others_started_stops_them_all(ray_cluster, base, tmp_path):
    # The learners, the rollout pool and the reward pool are up and ready when the reference
    # pool, the last role, fails to start: Ray rejects its num_cpus (finer than 0.0001), which
    # config validation lets through. Only start_roles can stop the three that started.
    # The error's traceback holds the started roles' handles, as a caller that keeps the error
    # does: Ray would end actors whose handles are all dropped, so only an explicit stop counts.
    before = _cluster()
    over = base("train.steps=1", "grpo.kl_coef=0.05", "reference.num_cpus=0.00001")
    with pytest.raises(ValueError, match=r"num_cpus.*0\.0001") as failed:
        train.main(None, over)
    actors, groups = _started_since(before)
    assert {c for c, _ in actors} == {"Learner", "RolloutWorker", "RewardWorker"}
    assert all(s == "DEAD" for _, s in actors), actors
    assert groups == ["REMOVED"], groups  # the learners' placement group
    assert not (tmp_path / "run" / "checkpoints").exists()
    del failed


@pytest.mark.slow  # the default tiny model
def test_ray_job_submit_runs_the_tiny_job(ray_cluster, tmp_path):
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "job"
    cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        ray_cluster["dashboard"],
        "--no-wait",
        "--runtime-env",
        "launch/runtime_env.yaml",
        "--",
        "python",
        "-m",
        "pte_ray.cli",
        "train",
        "--config",
        "launch/configs/tiny.yaml",
        "train.steps=2",
        "train.prompts_per_step=2",
        "grpo.group_size=4",
        "sampling.max_new_tokens=32",
        f"train.output_dir={out}",
    ]
    sub = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr[-2000:]
    found = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr)  # output is colored
    assert found, sub.stdout[-2000:]
    job_id = found.group(0)
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        st = subprocess.run(
            ["ray", "job", "status", "--address", ray_cluster["dashboard"], job_id],
            capture_output=True,
            text=True,
        )
        status = (st.stdout + st.stderr).lower()  # the CLI logs "Job '...' succeeded" to stderr
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run(
        ["ray", "job", "logs", "--address", ray_cluster["dashboard"], job_id],
        capture_output=True,
        text=True,
    ).stdout
    assert "succeeded" in status, f"status: {status[-500:]}\nlogs: {logs[-3000:]}"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (out / "checkpoints" / "step_000002" / "adapter.json").exists()
    # a job's log is no terminal: plain progress lines, the last one with the step's figures
    assert re.search(r"train: 2/2 steps \(100%\), [\d.]+ s/step.*; reward=", logs), logs[-2000:]


def test_async_rollouts_run_one_version_behind(ray_cluster, base, tmp_path):
    assert train.main(None, base("train.steps=3", "train.max_staleness=1")) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["weight_version"] - m["rollout_version_min"] for m in lines] == [1, 2, 2]
    table = ds.dataset(tmp_path / "run" / "rollouts").to_table()
    assert sorted(set(table.column("version").to_pylist())) == [0, 1]
