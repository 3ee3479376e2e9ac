"""Rows of one rollout batch: a GRPO group's G rows share one prompt (it runs through the model
once, its keys/values copied to every row), and each row may end at its own length. Either way
every row's tokens and log-probs are those it gets without the saving (fp64)."""

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


@pytest.mark.parametrize("eviction", ["window", "rkv"])
def test_rows_end_at_their_own_length(random_ckpt, eviction):
    """row_max_new_tokens: each row stops at its own limit ("length"), leaves the batch, and what
    it wrote is the start of what it writes with the batch's limit (row seeds, fp64)."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter = _adapter(model)
    cache = CacheConfig(budget=12, eviction=eviction, rkv={"window": 4})
    caps = (5, 40, 17, 1, 33, 40, 9)
    seeds = tuple(range(len(PROMPTS)))
    long = SamplingParams(max_new_tokens=40, row_seeds=seeds)
    full = generate(model, adapter, DecodeRequest(PROMPTS, cache), long)
    cut = generate(
        model,
        adapter,
        DecodeRequest(PROMPTS, cache),
        long.model_copy(update={"row_max_new_tokens": caps}),
    )
    assert [len(t) for t in cut.tokens] == list(caps)
    assert cut.finish_reasons == ["length"] * len(caps)
    assert cut.stats["row_steps"] < full.stats["row_steps"]  # finished rows stopped costing
    for i, c in enumerate(caps):
        assert cut.tokens[i] == full.tokens[i][:c]
        assert (
            torch.tensor(cut.logprobs[i]) - torch.tensor(full.logprobs[i][:c])
        ).abs().max() < 1e-10
        assert cut.eviction_steps[i] == [s for s in full.eviction_steps[i] if s < c - 1]


@pytest.mark.parametrize(
    ("caps", "named"),
    [
        ((4, 4), "2 row_max_new_tokens for 7"),
        ((4, 41, 4, 4, 4, 4, 4), "row 1: row_max_new_tokens=41"),
    ],
)
def test_bad_row_lengths_are_named(random_ckpt, caps, named):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    sp = SamplingParams(max_new_tokens=40, row_max_new_tokens=caps)
    with pytest.raises(ValueError, match=named):
        generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=12)), sp)
