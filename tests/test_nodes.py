"""On a cluster each actor resolves the model on its own node; bad input stops before Ray.

The two-node cluster (``ray.cluster_utils.Cluster``) runs in a subprocess: this test process is
connected to the session's cluster. Each node has its own Hugging Face cache holding the same
checkpoint as a hub entry (``pte-ray/tiny-random``, offline), and the controller a third: a
path resolved on the head and handed to the actors (the old behaviour) would point into the
head's cache, which the actors' nodes do not have on a real cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pte_ray.commands import train

REPO = "pte-ray/tiny-random"

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import ray
    from ray.cluster_utils import Cluster
    from pte_ray.config import load_config
    from pte_ray.controller.step import Controller
    from pte_ray.run.run_dir import RunDir

    homes, task, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    env = lambda h: {"HF_HOME": h, "HF_HUB_OFFLINE": "1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "env_vars": env(homes["head"]), "include_dashboard": False})
    cluster.add_node(num_cpus=2, env_vars=env(homes["worker"]))
    ray.init(address=cluster.address, log_to_driver=False)
    over = [f"model.path={sys.argv[4]}", f"data.train={task}", "train.prompts_per_step=2",
            "grpo.group_size=2", "sampling.max_new_tokens=8", "cache.budget=8",
            "grpo.kl_coef=0.1", "reward.num_cpus=0.2", "reference.num_cpus=0.2",
            f"train.output_dir={out}"]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        paths = {"controller": ctl.data.model_path,
                 "learner": ctl.roles.learners.info[0].model_path}
        for role in ("rollout", "reference"):
            actor = next(iter(getattr(ctl.roles, role).actors.values()))
            paths[role] = ray.get(actor.ready.remote()).model_path
        ctl.publish()
        paths["step"] = ctl.train_step(0)["weight_version"]
    finally:
        ctl.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print("PATHS " + json.dumps(paths))
    """
)


def _hub_entry(home: Path, ckpt: Path, weights: bool) -> None:
    """``ckpt`` as the hub cache of ``home`` holds a downloaded repo (refs/main -> snapshot)."""
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in ckpt.iterdir():
        if weights or f.suffix != ".safetensors":
            shutil.copy(f, snap / f.name)


@pytest.mark.slow  # a two-node cluster of its own, one step
def test_each_actor_resolves_the_model_on_its_own_node(random_ckpt, task_file, tmp_path):
    homes = {k: tmp_path / f"hf-{k}" for k in ("head", "worker", "controller")}
    _hub_entry(homes["head"], random_ckpt("qwen2"), weights=True)
    _hub_entry(homes["worker"], random_ckpt("qwen2"), weights=True)
    _hub_entry(homes["controller"], random_ckpt("qwen2"), weights=False)  # tokenizer only
    env = {**os.environ, "HF_HOME": str(homes["controller"]), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    args = [
        json.dumps({k: str(v) for k, v in homes.items()}),
        str(task_file),
        str(tmp_path / "run"),
        REPO,
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    paths = json.loads(done.stdout.split("PATHS ", 1)[1])
    assert paths["controller"].startswith(str(homes["controller"]))
    for role in ("learner", "rollout", "reference"):  # all placed on the worker node
        assert paths[role].startswith(str(homes["worker"])), (role, paths[role])
    assert paths["step"] == 1


def test_bad_data_stops_before_ray_and_leaves_no_run_dir(tmp_path, random_ckpt):
    out = tmp_path / "run"
    over = [f"model.path={random_ckpt('qwen2')}", f"data.train={tmp_path / 'nope.jsonl'}"]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train.main(None, [*over, f"output_dir={out}"])
    assert not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "answer": "1"}\n{"prompt": "", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: empty prompt"):
        train.main(
            None, [f"model.path={random_ckpt('qwen2')}", f"data.train={bad}", f"output_dir={out}"]
        )
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no/such/dir/here", "neither a directory nor a hub id"),
        ("./missing-model", "does not exist"),
        ("Qwen/Qwen-Not-Cached-0B", "HF_HUB_OFFLINE is set and it is not in the local cache"),
    ],
)
def test_model_specs_are_checked_before_ray(spec, match, task_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train.main(None, [f"model.path={spec}", f"data.train={task_file}", f"output_dir={out}"])
    assert not out.exists()


def test_a_ray_job_without_output_dir_is_told_to_use_shared_storage(monkeypatch, task_file):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(ValueError, match="set train.output_dir to shared storage"):
        train.main(None, [f"data.train={task_file}"])
