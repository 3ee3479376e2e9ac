"""CUDA paths: what CPU-only tests cannot see (NCCL takes only CUDA tensors, bf16 on GPU).

Skipped, with the reason in the summary (`pytest -rs`), on a machine without CUDA.
"""

from __future__ import annotations

import pytest
import ray
import torch

from pte_ray.config import load_config
from pte_ray.controller.step import Controller
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.run.run_dir import RunDir

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available: GPU smoke tests skipped"
)


def test_rkv_rollout_and_replay_on_cuda(random_ckpt):
    """R-KV on the GPU: scores from the captured queries, the record read back once, timed with
    CUDA events, and replay rebuilding the rollout's cache from the record."""
    from pte_ray.method.checkpoint import load_base
    from pte_ray.method.config import CacheConfig, SamplingParams
    from pte_ray.method.decode import generate
    from pte_ray.method.replay import replay

    model = load_base(random_ckpt("qwen2"), dtype=torch.float32, device="cuda")
    cfg = CacheConfig(budget=24, budget_mode="total", eviction="rkv", rkv={"window": 4})
    prompts = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)]]
    out = generate(
        model, None, DecodeRequest(prompts, cfg), SamplingParams(max_new_tokens=48, seed=1)
    )
    assert min(out.evictions) >= 2 and out.stats["evict_score_s"] > 0
    res = replay(model, None, DecodeRequest(prompts, cfg), out.tokens, ReplaySpec.of(out, 48))
    for i, lp in enumerate(out.logprobs):
        got = res.logprobs[i, : len(lp)].cpu()
        assert (got - torch.tensor(lp)).abs().max() < 1e-4


def test_rollout_ab_on_cuda_alternates_whole_rollouts(random_ckpt, capsys):
    """On CUDA, --ab times whole rollouts (A B, then B A) under PeakMemory, not single steps."""
    import json

    from pte_ray.cli import main as cli

    args = ["bench", "rollout", "--device", "cuda", "--batch", "4", "--repeat", "2"]
    args += [f"model.path={random_ckpt('qwen2')}", "cache.budget=8", "cache.rkv.window=4"]
    assert cli([*args, "sampling.max_new_tokens=32", "--ab", "cache.eviction=window,rkv"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["interleaved"] == "rollout" and len(res["ratio_b_over_a_rounds"]) == 2
    rkv = res["runs"]["rkv"]
    assert rkv["device"] == "cuda" and rkv["evictions_scored"] > 0 and rkv["peak_cuda_mb"] > 0


@pytest.mark.parametrize("eviction", ["window", "rkv"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_gpu_learner_step_publish_and_rollout(
    ray_cluster, random_ckpt, task_file, tmp_path, dtype, eviction
):
    """One NCCL learner: a train step (all-reduce of the size on the GPU), a publish, and a
    rollout worker on the GPU serving the new version (under either eviction policy)."""
    over = [
        f"model.path={random_ckpt('qwen2')}",
        f"model.dtype={dtype}",
        f"data.train={task_file}",
        "train.prompts_per_step=2",
        "grpo.group_size=4",
        "sampling.max_new_tokens=24",
        "cache.budget=8",
        f"cache.eviction={eviction}",
        "cache.rkv.window=4",
        "learner.num_gpus=0.5",
        "rollout.num_gpus=0.25",
        "optim.weight_decay=0.5",  # moves B and the encoders even without reward
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        assert ray.get(ctl.roles.learners.actors[0].ready.remote()).device.startswith("cuda")
        ctl.publish()
        m = ctl.train_step(0)
        assert m["grad_norm"] == m["grad_norm"]  # not NaN
        worker = next(iter(ctl.roles.rollout.actors.values()))
        assert ray.get(worker.sync.remote(ctl.weights)) == m["weight_version"]
        m2 = ctl.train_step(1)  # a rollout on the published version
        assert m2["rollout_version_min"] == m["weight_version"]
    finally:
        ctl.shutdown()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sft_step_and_eval_on_cuda(ray_cluster, random_ckpt, task_file, tmp_path, dtype):
    """The SFT stage on one NCCL learner (exact replay on the GPU), then a greedy held-out
    evaluation on a GPU rollout worker."""
    from pte_ray.controller.sft import SFTController

    over = [
        f"model.path={random_ckpt('qwen2')}",
        f"model.dtype={dtype}",
        f"data.train={task_file}",
        "train.stage=sft",
        "train.prompts_per_step=4",
        "train.steps=2",
        "train.eval_every=1",
        f"train.eval_bench={task_file}",
        "train.eval_limit=8",
        "sampling.max_new_tokens=24",
        "cache.budget=8",
        "learner.num_gpus=0.5",
        "rollout.num_gpus=0.25",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = SFTController(cfg, RunDir.open(cfg, None))
    try:
        ctl.publish()
        m = ctl.train_step(0)
        assert m["nll"] == m["nll"] and m["grad_norm"] == m["grad_norm"]  # not NaN
        assert 0.0 <= m["eval_acc"] <= 1.0 and m["learner_peak_mb"] > 0
    finally:
        ctl.shutdown()


def test_topk_distillation_and_learner_behavior_on_cuda(
    ray_cluster, random_ckpt, task_file, tmp_path
):
    """GRPO with the teacher's top-k from a GPU reference worker and pi_old from the bf16
    learner's own replay: the ratio is exactly on policy."""
    over = [
        f"model.path={random_ckpt('qwen2')}",
        "model.dtype=bfloat16",
        f"data.train={task_file}",
        "train.prompts_per_step=2",
        "grpo.group_size=4",
        "sampling.max_new_tokens=24",
        "cache.budget=8",
        "distill.coef=0.5",
        "distill.kind=topk_forward_kl",
        "distill.topk=4",
        "learner.num_gpus=0.4",
        "rollout.num_gpus=0.2",
        "reference.num_gpus=0.2",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        ctl.publish()
        m = ctl.train_step(0)
        assert m["distill_kl"] >= 0 and "teacher_kl" in m
        assert m["ratio"] == pytest.approx(1.0, abs=1e-3) and m["clip_frac"] == 0.0
    finally:
        ctl.shutdown()
