"""Attention over the cache's slots, with the kernel chosen for the case.

PyTorch's CPU SDPA kernel is slow for a decode step's single query in bf16 (it is a flash
kernel tiled for long query blocks): a bf16 rollout at Qwen2.5-0.5B shapes spent 28% of its
time there. Two grouped matmuls with the softmax in fp32 do the same step 19x faster. The
step's cache writes go through ``write_at`` for a like reason. Its mask is the same for every
layer: ``step_bias`` turns it into an additive fp32 bias once a step, which one add applies with
the scale (bit-identical to scaling and ``masked_fill``, two passes over the logits a layer).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F


def one_query_cpu(t: int, device: torch.device) -> bool:
    """The case the grouped-matmul path serves: one query a row, on CPU, without grad."""
    return t == 1 and device.type == "cpu" and not torch.is_grad_enabled()


def step_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean ``mask`` as an additive bias (0 where seen, -inf elsewhere) in the logits'
    accumulation ``dtype`` (fp32, fp64 for an fp64 model): made once a step for every layer."""
    acc = torch.promote_types(dtype, torch.float32)
    return torch.zeros(mask.shape, dtype=acc, device=mask.device).masked_fill_(~mask, -torch.inf)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q [B, H, T, hd] over k, v [B, n_kv, S, hd] under the boolean ``mask`` (or,
    one query on CPU, its ``step_bias``).

    A CPU decode step (one query, no grad) takes two grouped matmuls with the softmax in fp32:
    PyTorch's CPU SDPA kernel ran a bf16 step's attention 19x slower (5.1 vs 0.27 ms a layer
    at batch 32, 290 slots, Qwen2.5-0.5B heads; fp32 0.56 vs 0.45 ms). Everything else, and
    CUDA, stays on SDPA."""
    b, h, t, hd = q.shape
    if not one_query_cpu(t, q.device):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    profiling = torch._C._autograd._profiler_enabled()  # a named range for bench --profile
    with torch.profiler.record_function("attention") if profiling else nullcontext():
        n_kv, s = k.shape[1], k.shape[2]
        qg = q.view(b, n_kv, h // n_kv, hd)  # a KV head's query heads side by side
        bias = mask if mask.is_floating_point() else step_bias(mask, q.dtype)
        lg = torch.matmul(qg, k.transpose(-1, -2))  # in q's dtype: the add promotes it
        p = torch.softmax(torch.add(bias.reshape(b, 1, 1, s), lg, alpha=hd**-0.5), dim=-1)
        p = p.to(v.dtype)
        return torch.matmul(p, v).view(b, h, 1, hd)


def write_at(idx: torch.Tensor) -> tuple[torch.Tensor, slice, torch.Tensor]:
    """The ``(rows, :, slots)`` index of the slots an expanded write index ``idx`` [B, n_kv, T,
    hd] names, for ``buf[at] = x.transpose(1, 2)``: an in-place ``scatter_`` with the expanded
    index copied the whole [B, n_kv, S, hd] buffer twice on CPU (133 vs 4.7 us a write at
    batch 32, 282 slots; 9% of a bf16 0.5B step), index_put writes just the new entries."""
    slots = idx[:, 0, :, 0]
    rows = torch.arange(slots.shape[0], device=slots.device)[:, None].expand_as(slots)
    return rows, slice(None), slots
