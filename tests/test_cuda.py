"""CUDA paths: what CPU-only tests cannot see (NCCL takes only CUDA tensors, bf16 on GPU).

Skipped, with the reason in the summary (`pytest -rs`), on a machine without CUDA.
"""

from __future__ import annotations

import pytest
import ray
import torch

from pte_ray.config import load_config
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available: GPU smoke tests skipped"
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_gpu_learner_step_publish_and_rollout(
    ray_cluster, random_ckpt, task_file, tmp_path, dtype
):
    """One NCCL learner: a train step (all-reduce of the size on the GPU), a publish, and a
    rollout worker on the GPU serving the new version."""
    over = [
        f"model.path={random_ckpt('qwen2')}",
        f"model.dtype={dtype}",
        f"data.train={task_file}",
        "train.prompts_per_step=2",
        "grpo.group_size=4",
        "sampling.max_new_tokens=24",
        "cache.budget=8",
        "learner.num_gpus=0.5",
        "rollout.num_gpus=0.25",
        "optim.weight_decay=0.5",  # moves B and the encoders even without reward
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        assert ray.get(ctl.roles.learners.actors[0].ready.remote())["device"].startswith("cuda")
        ctl.weights = ctl.roles.learners.publish()
        m = ctl.train_step(0)
        assert m["grad_norm"] == m["grad_norm"]  # not NaN
        worker = next(iter(ctl.roles.rollout.actors.values()))
        assert ray.get(worker.sync.remote(ctl.weights)) == m["weight_version"]
        m2 = ctl.train_step(1)  # a rollout on the published version
        assert m2["rollout_version_min"] == m["weight_version"]
    finally:
        ctl.shutdown()
