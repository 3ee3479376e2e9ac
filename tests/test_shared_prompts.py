"""Group prompts stored once (``shared_kv.py``): the G rows of a GRPO group read one copy of
their prompt's keys/values. Every row must decode as it does with a copy per row (fp64: tokens,
log-probs, evictions, R-KV's record), replay must reproduce it unchanged, and attention over the
pool must equal attention over per-row copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pte_ray.method.attention import attend, step_bias
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.method.shared_kv import PromptPool, SharedLayer

# three groups of 4 with prompts of different lengths; limits that end rows at different steps
GROUPS = [[5, 9, 11], [20 + i for i in range(9)], [7, 8]]
PROMPTS = [p for p in GROUPS for _ in range(4)]
LIMITS = [9, 31, 17, 40, 6, 23, 12, 35, 28, 8, 19, 30]
CONFIGS = {
    "window": CacheConfig(budget=10),
    "window-total": CacheConfig(budget=26, budget_mode="total"),
    "rkv": CacheConfig(budget=12, eviction="rkv", rkv={"window": 4}),
}


def _sp(rows: list[int]) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max(LIMITS),
        row_seeds=[100 + i for i in rows],
        row_max_new_tokens=[LIMITS[i] for i in rows],
        check_every=4,
    )


def _same(a, b, i: int, j: int, tol: float) -> None:
    assert a.tokens[i] == b.tokens[j], f"row {i}"
    diff = (torch.tensor(a.logprobs[i]) - torch.tensor(b.logprobs[j])).abs().max()
    assert diff < tol, f"row {i}: {diff}"
    assert a.eviction_steps[i] == b.eviction_steps[j]
    assert a.evicted_slots[i] == b.evicted_slots[j]
    assert a.finish_reasons[i] == b.finish_reasons[j]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rows_reading_one_prompt_copy_decode_as_with_their_own(random_ckpt, noisy_adapter, name):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter, cache, sp = noisy_adapter(model), CONFIGS[name], _sp(list(range(12)))
    shared = generate(model, adapter, DecodeRequest(PROMPTS, cache), sp)
    copies = generate(model, adapter, DecodeRequest(PROMPTS, cache, share_prompts=False), sp)
    assert shared.stats["prompt_copies"] == 3 and copies.stats["prompt_copies"] == 12
    for i in range(12):
        _same(shared, copies, i, i, 1e-12)
    assert sum(1 for e in shared.eviction_steps if e) >= 5  # rows of every group evicted
    spec = ReplaySpec.of(shared, max(LIMITS))
    res = replay(model, adapter, DecodeRequest(PROMPTS, cache), shared.tokens, spec)
    for i, lp in enumerate(shared.logprobs):
        assert (res.logprobs[i, : len(lp)] - torch.tensor(lp)).abs().max() < 1e-10


@pytest.mark.parametrize("name", ["window", "rkv"])
def test_refilled_groups_share_and_decode_as_alone(random_ckpt, noisy_adapter, name):
    """Rows refilled group after group: each request decodes as it does alone, while the pool
    holds fewer copies than rows (entries of ended groups are taken by new prompts)."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter, cache = noisy_adapter(model), CONFIGS[name]
    out = generate(
        model, adapter, DecodeRequest(PROMPTS, cache, batch_rows=4), _sp(list(range(12)))
    )
    assert out.stats["refills"] == 8 and out.stats["prompt_copies"] < 4
    for i in range(12):
        alone = generate(model, adapter, DecodeRequest([PROMPTS[i]], cache), _sp([i]))
        _same(out, alone, i, 0, 1e-12)


def test_distinct_prompts_keep_a_copy_per_row(random_ckpt):
    """Sharing is for repeated prompts: all-distinct prompts keep the per-row layout."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    out = generate(model, None, DecodeRequest(GROUPS, CONFIGS["window"]), SamplingParams(seed=0))
    assert out.stats["prompt_copies"] == 3


def _layer(dtype, gen):
    """A pool of 3 prompt entries, 5 rows reading entries [0, 0, 2, 1, 2], and the same as
    per-row copies (the unshared layout)."""
    n_kv, p, c, hd, owner = 2, 6, 7, 8, torch.tensor([0, 0, 2, 1, 2])

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)

    layer = SharedLayer(
        r(n_kv, 3, p, hd), r(n_kv, 3, p, hd), r(5, n_kv, c, hd), r(5, n_kv, c, hd), owner
    )
    k, v = layer.full(layer.rk, layer.pk), layer.full(layer.rv, layer.pv)
    assert torch.equal(k[3, :, :p], layer.pk[:, 1]) and torch.equal(v[2, :, p:], layer.rv[2])
    mask = torch.rand(5, 1, 1, p + c, generator=gen) < 0.7
    mask[..., p - 1] = True  # every row sees at least its last prompt slot
    return layer, k, v, mask


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_attention_over_the_pool_equals_per_row_copies(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    layer, k, v, mask = _layer(dtype, gen)
    q = torch.randn(5, 6, 1, 8, generator=gen, dtype=torch.float64).to(dtype)  # 3 heads a KV head
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        got = layer.attend(q, mask)
        assert (got - ref).abs().max() < tol
        assert (attend(q, k, v, mask) - ref).abs().max() < tol  # the unshared CPU path agrees
        assert torch.equal(layer.attend(q, step_bias(mask, dtype)), got)  # the step's bias


def test_attention_over_the_pool_in_bf16_is_close_to_fp64():
    gen = torch.Generator().manual_seed(1)
    layer, k, v, mask = _layer(torch.float64, gen)
    q = torch.randn(5, 6, 1, 8, generator=gen, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    bf = SharedLayer(*(t.bfloat16() for t in (layer.pk, layer.pv, layer.rk, layer.rv)), layer.owner)
    with torch.no_grad():
        assert (bf.attend(q.bfloat16(), mask).double() - ref).abs().max() < 3e-2


def test_shared_storage_refuses_grad_and_several_queries_read_copies():
    gen = torch.Generator().manual_seed(2)
    layer, k, v, mask = _layer(torch.float64, gen)
    q = torch.randn(5, 6, 3, 8, generator=gen, dtype=torch.float64)
    m3 = mask.expand(-1, -1, 3, -1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m3, enable_gqa=True)
    assert (layer.attend(q, m3) - ref).abs().max() < 1e-12
    idx = torch.full((5, 2, 1, 8), 6 + 3)
    with pytest.raises(RuntimeError, match="no-grad rollout"):
        layer.write(idx, torch.zeros(5, 2, 1, 8, dtype=torch.float64), torch.zeros(5, 2, 1, 8))


def test_pool_entries_are_reused_freed_and_grown():
    kv = [(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 2).clone(),) * 2]
    pool = PromptPool([torch.zeros(2, 2, 3, 2)], [torch.zeros(2, 2, 3, 2)])
    a, b, c = (1,), (2,), (3,)
    entries, new = pool.place([a, a, b], live=set())
    assert entries == [0, 0, 1] and new == {a: 0, b: 1}
    for p, e in new.items():
        pool.fill(e, p, kv, {a: 0, b: 2}[p])
    assert pool.pk[0][0, 1, 0, 0] == 2.0  # entry 1 holds row 2 of kv
    assert pool.place([a], live={a, b}) == ([0], {})  # a live row reads a: shared
    entries, new = pool.place([c], live={b})  # a's rows have gone: its entry is free
    assert entries == [0] and new == {c: 0}
    entries, new = pool.place([c], live={a, b})  # nothing free: one more entry
    assert entries == [2] and len(pool.held) == 3 and pool.pk[0].shape[1] == 3


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available: shared prompts on GPU"
)
def test_shared_prompts_on_cuda_decode_as_with_copies(random_ckpt, noisy_adapter):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float32, device="cuda")
    adapter, cache, sp = noisy_adapter(model), CONFIGS["rkv"], _sp(list(range(12)))
    shared = generate(model, adapter, DecodeRequest(PROMPTS, cache), sp)
    copies = generate(model, adapter, DecodeRequest(PROMPTS, cache, share_prompts=False), sp)
    assert shared.stats["prompt_copies"] == 3
    for i in range(12):
        _same(shared, copies, i, i, 1e-5)
