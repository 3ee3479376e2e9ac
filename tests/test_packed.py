"""Base weights packed for oneDNN (``method/packed.py``): the same rollout as the dense model,
replay (the learner, dense) still reproduces it, one copy in memory, and no grad through it."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.packed import can_pack
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec

pytestmark = pytest.mark.skipif(
    not can_pack(torch.float32, "cpu"), reason="this torch build has no oneDNN packing"
)
PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)]]


def _pair(path, dtype: torch.dtype) -> tuple:
    dense, packed = load_base(path, dtype=dtype), load_base(path, dtype=dtype)
    packed.pack(batch_hint=len(PROMPTS))
    adapter = Adapter(dense.args, AdapterConfig(method="pte", rank=4, global_tokens=8), dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # A off zero: the adapter's delta and the state both count
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(dtype))
    return dense, packed, adapter.requires_grad_(False)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("eviction", ["window", "rkv"])
def test_packed_rollout_equals_dense_and_replay(random_ckpt, arch, eviction):
    """fp32: the same tokens (greedy and sampled), log-probs within 1e-5 of the dense model's
    (measured ~1e-6: oneDNN sums in another order), and the learner's dense replay of the packed
    rollout within 1e-4 (the tolerance every rollout == replay test here holds)."""
    dense, packed, adapter = _pair(random_ckpt(arch), torch.float32)
    cache = CacheConfig(budget=12, eviction=eviction, rkv={"window": 4})
    for greedy in (True, False):
        sp = SamplingParams(max_new_tokens=40, seed=3, greedy=greedy)
        a = generate(dense, adapter, DecodeRequest(PROMPTS, cache), sp)
        b = generate(packed, adapter, DecodeRequest(PROMPTS, cache), sp)
        assert a.tokens == b.tokens and min(b.evictions) >= 2
        for x, y in zip(a.logprobs, b.logprobs):
            assert (torch.tensor(x) - torch.tensor(y)).abs().max() < 1e-5
    res = replay(dense, adapter, DecodeRequest(PROMPTS, cache), b.tokens, ReplaySpec.of(b, 40))
    for i, lp in enumerate(b.logprobs):
        assert (res.logprobs[i, : len(lp)] - torch.tensor(lp)).abs().max() < 1e-4


def test_packed_bf16_rollout_stays_near_its_dense_replay(random_ckpt):
    """bf16 (oneDNN accumulates in fp32): the packed rollout against the dense bf16 replay of the
    same tokens. On this random model the gap is 0 (CPU bf16 ``F.linear`` is oneDNN too); on
    trained tiny-recall weights it is max 0.24, mean 1.1e-3 per token packed or not (a token at
    a time against a segment at a time: why bf16 takes pi_old from the learner's replay)."""
    dense, packed, adapter = _pair(random_ckpt("qwen2"), torch.bfloat16)
    cache = CacheConfig(budget=12)
    sp = SamplingParams(max_new_tokens=32, seed=3)
    out = generate(packed, adapter, DecodeRequest(PROMPTS, cache), sp)
    res = replay(dense, adapter, DecodeRequest(PROMPTS, cache), out.tokens, ReplaySpec.of(out, 32))
    gap = max(
        (res.logprobs[i, : len(lp)].float() - torch.tensor(lp)).abs().max().item()
        for i, lp in enumerate(out.logprobs)
    )
    print(f"bf16 packed rollout vs dense replay: max |d log p| = {gap:.3g}")
    assert gap < 5e-2


def test_packed_model_holds_one_copy_and_refuses_grad(random_ckpt):
    _, packed, adapter = _pair(random_ckpt("qwen2"), torch.float32)
    blk = packed.layers[0]
    assert blk.packed and all(w.numel() == 0 for w in blk.w.values())  # dense copies dropped
    adapter.requires_grad_(True)
    with pytest.raises(RuntimeError, match="packed model runs without grad only"):
        replay(
            packed,
            adapter,
            DecodeRequest(PROMPTS, CacheConfig(budget=12)),
            [[1, 2, 3, 4]] * len(PROMPTS),
            loss_fn=lambda lp, ent, rows, cols: -lp.sum(),
        )


def test_float64_and_cuda_never_pack():
    assert not can_pack(torch.float64, "cpu") and not can_pack(torch.float32, "cuda")
