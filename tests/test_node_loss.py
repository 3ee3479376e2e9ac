"""A node lost mid-run: the learner's node (and a rollout worker with it) leaves a two-node
cluster; the run finishes on the other node with every step's rows whole and once and the
adapter an undisturbed run ends with.

The cluster (``ray.cluster_utils.Cluster``) runs in a subprocess: this test process is connected
to the session's cluster, where the undisturbed run trains. Node A (1 CPU) joins first, so the
learner group (0.5) and rollout worker 0 (0.5) fill it; node B (2 CPUs) joins once the learners
are placed and takes rollout worker 1, the reward and the reference workers. After 3 steps node
A is removed (its raylet and every process on it die). The GCS is told to look every 0.5 s so
the loss is seen in seconds (the default is ~30 s: slower, the same path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pte_ray.bench.chaos import check_rows
from pte_ray.config import load_config
from pte_ray.controller.loop import fit
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir

SCRIPT = Path(__file__).with_name("cluster_node_loss.py")


@pytest.mark.slow  # a two-node cluster of its own and two 6-step runs
def test_learner_node_lost_run_finishes_on_the_other_node_bit_identical(
    ray_cluster, small_run, tmp_path
):
    over = [
        *small_run,
        "train.steps=6",
        "train.save_every=2",
        "train.call_timeout_s=60",
        "train.max_learner_restarts=2",
        "learner.num_cpus=0.5",
        "rollout.num_workers=2",
        "rollout.num_cpus=0.5",
        "reward.num_cpus=0.2",
        "grpo.kl_coef=0.05",
        "reference.num_cpus=0.2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    lost = [*over, f"train.output_dir={tmp_path / 'lost'}"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(lost)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # bounded: two roles' starts and a lost node's detection
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(done.stdout.split("RESULT ", 1)[1])
    a, b = r["nodes"]["a"], r["nodes"]["b"]
    assert r["before"]["learner"] == [a]
    assert r["before"]["rollout"] == sorted([a, b])  # rollout workers on both nodes
    assert r["after"]["learner"] == [b]
    assert r["learner_restarts"] == 1 and r["steps_redone"] >= 1, r
    assert "learner group lost" in done.stderr

    cfg = load_config(None, [*over, f"train.output_dir={tmp_path / 'calm'}"])
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        fit(ctl)
    finally:
        ctl.shutdown()
    assert check_rows(tmp_path / "lost", 6, groups=2, g=4) == 6 * 2 * 4
    rows = (tmp_path / "lost" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(m)["grad_norm"] > 0 for m in rows)  # equal by training, not by rest
    last = "checkpoints/step_000006/adapter.safetensors"
    x, y = load_file(tmp_path / "calm" / last), load_file(tmp_path / "lost" / last)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
