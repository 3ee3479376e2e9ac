"""A GRPO group's G rows share one prompt: it runs through the model once and its keys/values
are copied to every row. The rollout must be the one the unshared prefill gives (fp64)."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec

# two groups of three and a lone prompt, interleaved as a pool's chunk may hold them
GROUPS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [5, 9, 11], [40 + i for i in range(12)]]
PROMPTS = [GROUPS[0], GROUPS[1], GROUPS[0], GROUPS[3], GROUPS[1], GROUPS[1], GROUPS[0]]


def _adapter(model) -> Adapter:
    a = Adapter(model.args, AdapterConfig(method="pte", rank=4, global_tokens=8), torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return a.requires_grad_(False)


def _prefill_rows(model) -> list[int]:
    """The batch size of every forward the first layer sees."""
    seen: list[int] = []
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("eviction", ["window", "rkv"])
@pytest.mark.parametrize("method", ["base", "pte"])
def test_shared_prefill_gives_the_unshared_rollout(random_ckpt, eviction, method):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter = _adapter(model) if method == "pte" else None
    cache = CacheConfig(budget=12, eviction=eviction, rkv={"window": 4})
    sp = SamplingParams(max_new_tokens=40, seed=7)
    seen = _prefill_rows(model)
    shared = generate(model, adapter, DecodeRequest(PROMPTS, cache), sp)
    assert seen[0] == 3  # three distinct prompts, one prefill row each
    seen.clear()
    alone = generate(model, adapter, DecodeRequest(PROMPTS, cache, share_prompts=False), sp)
    assert seen[0] == len(PROMPTS)
    assert shared.tokens == alone.tokens and min(shared.evictions) >= 2
    assert len({tuple(t) for t in shared.tokens}) > 3  # twins sampled apart after the prompt
    for a, b in zip(shared.logprobs, alone.logprobs):
        assert (torch.tensor(a) - torch.tensor(b)).abs().max() < 1e-12
    assert shared.evictions == alone.evictions
    res = replay(
        model, adapter, DecodeRequest(PROMPTS, cache), shared.tokens, ReplaySpec.of(shared, 40)
    )
    for i, lp in enumerate(shared.logprobs):
        assert (res.logprobs[i, : len(lp)] - torch.tensor(lp)).abs().max() < 1e-10


def test_distinct_prompts_take_the_plain_prefill(random_ckpt):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    seen = _prefill_rows(model)
    generate(
        model,
        None,
        DecodeRequest(GROUPS[1:], CacheConfig(budget=12)),
        SamplingParams(max_new_tokens=4, seed=0),
    )
    assert seen[0] == 3
