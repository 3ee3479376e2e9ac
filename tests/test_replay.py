"""Segment replay reproduces the rollout and trains the encoder through the state update."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeHooks, DecodeRequest, ReplaySpec

PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)], [7, 7]]
RKV = CacheConfig(budget=8, eviction="rkv", rkv={"window": 4})


def _perturbed(model, method, seed=0):
    """An adapter whose A is off zero, so the thought state really changes the logits."""
    adapter = Adapter(model.args, AdapterConfig(method=method, rank=4, global_tokens=8))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return adapter


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("pte", CacheConfig(budget=8)),
        ("pte", CacheConfig(budget=24, budget_mode="total")),
        ("lora_c", CacheConfig(budget=8)),
        ("lora", CacheConfig(budget=None)),
        ("base", CacheConfig(budget=8, evict_ratio=0.5)),
        ("pte", RKV),
        ("pte", RKV.model_copy(update={"budget": 24, "budget_mode": "total"})),
        ("lora_c", RKV),
        ("base", CacheConfig(budget=12, evict_ratio=0.5, eviction="rkv", rkv={"window": 4})),
    ],
    ids=lambda x: getattr(x, "eviction", x),
)
def test_replay_matches_rollout_logprobs(random_ckpt, method, cfg):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float32)
    adapter = None if method == "base" else _perturbed(model, method)
    sp = SamplingParams(max_new_tokens=48, temperature=0.9, seed=1)
    out = generate(model, adapter, DecodeRequest(PROMPTS, cfg), sp, DecodeHooks(eos_ids=(3,)))
    if cfg.bounded:
        assert max(out.evictions) >= 2
    res = replay(
        model,
        adapter,
        DecodeRequest(PROMPTS, cfg),
        out.tokens,
        ReplaySpec(
            temperature=sp.temperature,
            max_new_tokens=sp.max_new_tokens,
            eviction_steps=out.eviction_steps,
            evicted_slots=out.evicted_slots,
        ),
    )
    if cfg.rkv_on:  # a record made under R-KV, not the oldest tokens
        assert all(len(r) == len(e) for r, e in zip(out.evicted_slots, out.eviction_steps))
        assert any(r[0] != list(range(len(r[0]))) for r in out.evicted_slots if r)
    for i in range(len(PROMPTS)):
        n = len(out.tokens[i])
        diff = (res.logprobs[i, :n] - torch.tensor(out.logprobs[i])).abs().max()
        assert diff <= 1e-4, f"row {i}: {diff:.2e}"
        assert not res.logprobs[i, n:].any()


def test_pte_state_changes_the_output(random_ckpt):
    """With evictions, PTE differs from its static ablation (global_only) of the same weights."""
    model = load_base(random_ckpt("qwen2"))
    cfg = CacheConfig(budget=8)
    completions = [list(range(50, 90))] * 2
    a = replay(
        model, _perturbed(model, "pte"), DecodeRequest(PROMPTS[:2], cfg), completions
    ).logprobs
    b = replay(
        model, _perturbed(model, "global_only"), DecodeRequest(PROMPTS[:2], cfg), completions
    ).logprobs
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # before the first eviction: same
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_replay_rejects_rollout_from_another_cache(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    out = generate(
        model,
        None,
        DecodeRequest(PROMPTS, CacheConfig(budget=8)),
        SamplingParams(max_new_tokens=30, seed=0),
    )
    with pytest.raises(ValueError, match="another cache config"):
        replay(
            model,
            None,
            DecodeRequest(PROMPTS, CacheConfig(budget=10)),
            out.tokens,
            ReplaySpec(temperature=1.0, max_new_tokens=30, eviction_steps=out.eviction_steps),
        )


def test_gradient_reaches_encoder_through_state_update(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    adapter = _perturbed(model, "pte")
    completions = [list(range(50, 90)), list(range(60, 85))]
    real = torch.zeros(2, 40)
    real[0, :40], real[1, :25] = 1, 1
    res = replay(
        model,
        adapter,
        DecodeRequest(PROMPTS[:2], CacheConfig(budget=8)),
        completions,
        ReplaySpec(temperature=1.0),
        lambda lp, ent, rows, cols: -(lp * real[rows][:, cols]).sum(),
    )
    assert res.segments > 3
    enc = adapter.encoder
    for p in (enc.Wq, enc.Wk, enc.Wv, enc.Qg, enc.Kg, enc.Vg):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the loss was back-propagated per segment; its sum equals the full-batch value
    full = replay(model, adapter, DecodeRequest(PROMPTS[:2], CacheConfig(budget=8)), completions)
    assert abs(res.loss + float(full.logprobs.sum())) < 1e-3


@pytest.mark.parametrize("eviction", ["window", "rkv"])
def test_replay_is_exact_in_float64(random_ckpt, eviction):
    """In fp64 the only fp32 noise source (GEMM blocking differs between a 1-token decode and
    an n-token segment) is gone: replay must then equal the rollout to rounding of fp64."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter = Adapter(model.args, AdapterConfig(rank=4, global_tokens=8), dtype=torch.float64)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".A." in name:
                p.normal_(0.0, 0.1)
    cfg = CacheConfig(budget=24, budget_mode="total", eviction=eviction, rkv={"window": 4})
    out = generate(
        model, adapter, DecodeRequest(PROMPTS, cfg), SamplingParams(max_new_tokens=48, seed=2)
    )
    res = replay(
        model,
        adapter,
        DecodeRequest(PROMPTS, cfg),
        out.tokens,
        ReplaySpec.of(out, 48),
    )
    for i, toks in enumerate(out.tokens):
        got = res.logprobs[i, : len(toks)].double()
        assert (got - torch.tensor(out.logprobs[i], dtype=torch.float64)).abs().max() < 1e-6


def test_replay_rejects_a_record_of_another_eviction_policy(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    sp = SamplingParams(max_new_tokens=30, seed=0)
    rkv = generate(model, None, DecodeRequest(PROMPTS, RKV), sp)
    window = generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp)
    with pytest.raises(ValueError, match="row 0 carries evicted_slots.*eviction=window"):
        replay(
            model,
            None,
            DecodeRequest(PROMPTS, CacheConfig(budget=8)),
            rkv.tokens,
            ReplaySpec.of(rkv, 30),
        )
    with pytest.raises(ValueError, match="row 0: replayed under cache.eviction=rkv"):
        replay(
            model,
            None,
            DecodeRequest(PROMPTS, RKV),
            window.tokens,
            ReplaySpec.of(window, 30),
        )
    bad = [[list(r) for r in row] for row in rkv.evicted_slots]
    bad[2][1] = [bad[2][1][0]] * len(bad[2][1])
    with pytest.raises(ValueError, match="row 2, eviction 1"):
        replay(
            model,
            None,
            DecodeRequest(PROMPTS, RKV),
            rkv.tokens,
            ReplaySpec(
                temperature=1.0,
                max_new_tokens=30,
                eviction_steps=rkv.eviction_steps,
                evicted_slots=bad,
            ),
        )
