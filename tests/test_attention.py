"""The CPU decode step's attention (two grouped matmuls, softmax in fp32) against SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pte_ray.method.attention import attend, step_bias, write_at


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)]
)
def test_decode_attention_matches_sdpa_under_gqa_and_masks(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    b, h, n_kv, s, hd = 3, 8, 2, 37, 16
    q, k, v = (
        torch.randn(*shape, generator=gen).to(dtype)
        for shape in ((b, h, 1, hd), (b, n_kv, s, hd), (b, n_kv, s, hd))
    )
    mask = torch.rand(b, 1, 1, s, generator=gen) > 0.4
    mask[:, ..., 0] = True  # every row sees something
    with torch.no_grad():
        got = attend(q, k, v, mask)
    want = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True
    )
    assert got.dtype == dtype and got.shape == (b, h, 1, hd)
    assert (got.double() - want).abs().max() < tol
    # query head i reads KV head i // (h / n_kv): moving KV head 1 must move heads 4..7 only
    k2 = k.clone()
    k2[:, 1] = torch.randn(b, s, hd, generator=gen).to(dtype)
    with torch.no_grad():
        moved = (attend(q, k2, v, mask) - got).abs().amax(dim=(0, 2, 3))
    assert (moved[:4] == 0).all() and (moved[4:] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_step_bias_gives_what_scale_and_masked_fill_gave(dtype):
    """The step's mask as one additive bias (made once for every layer) changes no bit: the
    same output as the boolean mask, and as scaling the logits and ``masked_fill`` did."""
    gen = torch.Generator().manual_seed(1)
    b, h, n_kv, s, hd = 4, 14, 2, 41, 64
    q = torch.randn(b, h, 1, hd, generator=gen).to(dtype)
    k, v = (torch.randn(b, n_kv, s, hd, generator=gen).to(dtype) for _ in range(2))
    mask = torch.rand(b, 1, 1, s, generator=gen) > 0.3
    mask[..., 0] = True
    bias = step_bias(mask, dtype)
    assert bias.dtype == torch.promote_types(dtype, torch.float32)
    assert torch.equal(bias == 0, mask) and torch.isneginf(bias[~mask]).all()
    with torch.no_grad():
        got, with_bool = attend(q, k, v, bias), attend(q, k, v, mask)
        qg = q.view(b, n_kv, h // n_kv, hd)
        logits = torch.matmul(qg, k.transpose(-1, -2)).to(bias.dtype) * hd**-0.5
        logits = logits.masked_fill(~mask.reshape(b, 1, 1, s), float("-inf"))
        p = torch.softmax(logits, dim=-1).to(dtype)
        before = torch.matmul(p, v).view(b, h, 1, hd)
    assert torch.equal(got, with_bool) and torch.equal(got, before)


def test_grad_and_several_queries_take_sdpa():
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = v = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    out = attend(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out, want) and out.requires_grad


@pytest.mark.parametrize("t", [1, 3])
def test_write_at_writes_what_scatter_writes(t):
    """The step's cache write (index_put at (rows, :, slots)) equals scatter along the slots."""
    gen = torch.Generator().manual_seed(t)
    buf = torch.randn(4, 2, 10, 8, generator=gen)
    new = torch.randn(4, 2, t, 8, generator=gen)
    slots = torch.stack([torch.randperm(10, generator=gen)[:t] for _ in range(4)])
    idx = slots[:, None, :, None].expand(4, 2, t, 8)
    ref, out = buf.scatter(2, idx, new), buf.clone()
    out[write_at(idx)] = new.transpose(1, 2)
    assert torch.equal(out, ref) and not torch.equal(out, buf)
