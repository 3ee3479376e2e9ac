"""pi_old of the PPO ratio in bf16: the rollout's log-probs (a token at a time) and the learner's
replay (a segment at a time) differ, so an on-policy ratio is off 1; ``grpo.behavior=learner``
takes pi_old from the learner's own replay, with an optional truncated importance weight."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.records import LearnerShard
from pte_ray.rl.grpo import GRPOConfig, GRPOLoss
from pte_ray.rl.objective import GRPOObjective

PROMPTS = [[5, 9, 11, 12], [20, 21, 22, 23, 24, 25], [40, 41, 42], [7, 8]]


def test_learner_behavior_is_on_policy_and_tis_weighs_tokens_fp64():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    rollout = torch.tensor([[-1.2, -1.0, -0.5]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv = torch.tensor([0.8])
    cfg = GRPOConfig(tis_cap=2.0)
    loss_fn = GRPOLoss(None, adv, mask, cfg, rollout_logp=rollout)
    loss_fn(logp, torch.zeros(1, 3), torch.tensor([0]), slice(0, 3)).backward()
    tis = torch.exp(logp.detach() - rollout).clamp(max=2.0)  # e^0.2, e^-1, 1
    assert torch.allclose(logp.grad, -0.8 * tis / 3, rtol=1e-6)
    m = loss_fn.stats()
    assert m.ratio == pytest.approx(1.0, abs=1e-7) and m.clip_frac == 0.0
    assert m.tis_weight == pytest.approx(float(tis.mean()), rel=1e-6)
    capped = GRPOLoss(None, adv, mask, GRPOConfig(tis_cap=1.1), rollout_logp=rollout)
    capped(logp, torch.zeros(1, 3), torch.tensor([0]), slice(0, 3))
    assert capped.stats().tis_weight == pytest.approx((1.1 + float(tis[0, 1]) + 1) / 3)


def _bf16_learner(random_ckpt):
    """A rollout sampled in fp32 (as an fp32 or differently-blocked sampling engine records
    it) and a learner replaying it in bf16: their log-probs of the same tokens differ."""
    model = load_base(random_ckpt("qwen2"))
    adapter = Adapter(model.args, AdapterConfig(method="pte", rank=4, global_tokens=8))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out = generate(
        model,
        adapter,
        DecodeRequest(PROMPTS, CacheConfig(budget=8)),
        SamplingParams(max_new_tokens=40, seed=0),
    )
    shard = LearnerShard(
        PROMPTS,
        out.tokens,
        out.logprobs,
        out.eviction_steps,
        [[] for _ in PROMPTS],
        [1.0, -1.0, 0.5, -0.5],
        None,
        0,
    )
    return load_base(random_ckpt("qwen2"), dtype=torch.bfloat16), adapter.bfloat16(), shard


def _replay(model, adapter, shard, loss_fn=None):
    spec = ReplaySpec(max_new_tokens=40, eviction_steps=shard.eviction_steps)
    req = DecodeRequest(shard.prompts, CacheConfig(budget=8))
    return replay(model, adapter, req, shard.completions, spec, loss_fn)


def _learn(model, adapter, shard, behavior: str) -> tuple[dict, dict]:
    job = GRPOObjective(shard, GRPOConfig(), behavior=behavior)
    loss_fn = job.loss(slice(0, len(shard)), 1.0, "cpu")
    _replay(model, adapter, shard, loss_fn)
    grads = {n: p.grad.float().clone() for n, p in adapter.named_parameters()}
    adapter.zero_grad(set_to_none=True)
    return loss_fn.stats(), grads


def test_bf16_ratio_is_off_one_on_policy_unless_pi_old_is_the_learners(random_ckpt):
    model, adapter, shard = _bf16_learner(random_ckpt)
    res = _replay(model, adapter, shard)
    _, mean = GRPOObjective(shard, GRPOConfig()).replay_diff(slice(0, 4), res.logprobs)
    assert mean > 1e-4  # the mismatch this setting exists for (fp32 both sides: ~1e-7)
    as_rollout, _ = _learn(model, adapter, shard, "rollout")
    as_learner, g_learner = _learn(model, adapter, shard, "learner")
    assert abs(as_rollout.ratio - 1.0) > 1e-4 or as_rollout.clip_frac > 0
    assert as_learner.ratio == pytest.approx(1.0, abs=1e-6)
    assert as_learner.clip_frac == 0.0
    # on policy at the learner: exactly the plain policy gradient -A * grad log pi
    w = torch.zeros(4, max(len(c) for c in shard.completions))
    for i, c in enumerate(shard.completions):
        w[i, : len(c)] = shard.advantages[i] / sum(len(x) for x in shard.completions)

    def plain(lp, ent, rows, cols):
        return -(w[rows][:, cols].to(lp.dtype) * lp).sum()

    _replay(model, adapter, shard, plain)
    for n, p in adapter.named_parameters():
        assert torch.allclose(p.grad.float(), g_learner[n], rtol=1e-2, atol=1e-6), n
