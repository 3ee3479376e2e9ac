"""A compact decoder (Llama / Qwen2 / Qwen3) over HF weights, with a caller-owned static cache.

gpt-fast style: fused q/k/v and gate/up projections, one forward for prefill, decode and replay.
The caller passes the cache buffers, the slots to write the new keys/values to and the boolean
attention mask over all slots, so the same code serves a full cache, a bounded ring cache and
teacher-forced segment replay. The base weights are frozen buffers of the module; the adapter
(LoRA + thought state) is passed in, so the base model never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from pte_ray.method.adapter import Adapter


@dataclass(frozen=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_embeddings: bool

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm exactly as HF computes it (fp32 statistics, cast back before the weight)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    def __init__(self, a: ModelArgs, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.attn_norm = nn.Parameter(torch.ones(a.dim, **kw), requires_grad=False)
        self.ffn_norm = nn.Parameter(torch.ones(a.dim, **kw), requires_grad=False)
        qkv_out = a.q_dim + 2 * a.kv_dim
        self.wqkv = nn.Parameter(torch.empty(qkv_out, a.dim, **kw), requires_grad=False)
        self.bqkv = (
            nn.Parameter(torch.zeros(qkv_out, **kw), requires_grad=False) if a.qkv_bias else None
        )
        self.wo = nn.Parameter(torch.empty(a.dim, a.q_dim, **kw), requires_grad=False)
        self.w_gate_up = nn.Parameter(
            torch.empty(2 * a.intermediate, a.dim, **kw), requires_grad=False
        )
        self.w_down = nn.Parameter(torch.empty(a.dim, a.intermediate, **kw), requires_grad=False)
        if a.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(a.head_dim, **kw), requires_grad=False)
            self.k_norm = nn.Parameter(torch.ones(a.head_dim, **kw), requires_grad=False)


class Transformer(nn.Module):
    """The frozen base model. ``forward`` works on any cache layout the caller describes."""

    def __init__(
        self,
        args: ModelArgs,
        rotary: nn.Module,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Parameter(
            torch.empty(args.vocab_size, args.dim, dtype=dtype, device=device), requires_grad=False
        )
        self.layers = nn.ModuleList(Block(args, dtype, device) for _ in range(args.n_layers))
        self.norm = nn.Parameter(torch.ones(args.dim, dtype=dtype, device=device), False)
        self.lm_head = (
            None
            if args.tie_embeddings
            else nn.Parameter(
                torch.empty(args.vocab_size, args.dim, dtype=dtype, device=device), False
            )
        )
        self._rotary = rotary  # HF's own RoPE module: every rope_type HF knows is right here.
        self._cos = torch.empty(0, args.head_dim, dtype=dtype, device=device)
        self._sin = torch.empty(0, args.head_dim, dtype=dtype, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def rope_tables(self, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions [0, max_pos), grown on demand and kept (no per-step work)."""
        if self._cos.shape[0] < max_pos:
            n = max(max_pos, 2 * self._cos.shape[0], 256)
            dummy = torch.zeros(1, dtype=torch.float32, device=self.device)
            pos = torch.arange(n, device=self.device)[None]
            cos, sin = self._rotary.to(self.device)(dummy, pos)
            self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        return self._cos, self._sin

    def new_kv(self, batch: int, slots: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        a = self.args
        shape = (batch, a.n_kv_heads, slots, a.head_dim)
        kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        return [(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in range(a.n_layers)]

    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        write_slots: torch.Tensor,
        mask: torch.Tensor,
        adapter: Adapter | None = None,
        state: torch.Tensor | None = None,
        last_only: bool = False,
        max_pos: int | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Run ``ids`` [B, T] at positions ``pos`` [B, T].

        New keys/values go to ``write_slots`` [B, T] of each layer's ``kv`` buffers
        [B, n_kv, S, hd]; ``mask`` [B, T, S] says which slots each query may attend to (after
        the write). With grad enabled the write is out of place and the returned buffers carry
        the graph; without grad the buffers are updated in place. ``state`` [L, B, G, r] is the
        thought state for ``adapter``. ``max_pos`` grows the RoPE tables first; the decode loop
        does that once before its loop so no step reads a position back to the host. Returns
        fp32 logits [B, T or 1, V] and the buffers.
        """
        a = self.args
        bsz, t = ids.shape
        if max_pos is not None:
            self.rope_tables(max_pos)
        cos, sin = self._cos[pos][:, None], self._sin[pos][:, None]  # [B, 1, T, hd]
        idx = write_slots[:, None, :, None].expand(bsz, a.n_kv_heads, t, a.head_dim)
        attn_mask = mask[:, None]
        inplace = not torch.is_grad_enabled()
        x = F.embedding(ids, self.embed)
        new_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        for li, blk in enumerate(self.layers):
            lad = adapter.layers[li] if adapter is not None else None
            s = state[li] if state is not None else None
            h = rms_norm(x, blk.attn_norm, a.norm_eps)
            qkv = F.linear(h, blk.wqkv, blk.bqkv)
            if lad is not None:
                qkv = lad.add_delta("qkv", qkv, h, s)
            q, k, v = qkv.split((a.q_dim, a.kv_dim, a.kv_dim), dim=-1)
            q = q.view(bsz, t, a.n_heads, a.head_dim)
            k = k.view(bsz, t, a.n_kv_heads, a.head_dim)
            if a.qk_norm:
                q = rms_norm(q, blk.q_norm, a.norm_eps)
                k = rms_norm(k, blk.k_norm, a.norm_eps)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = v.view(bsz, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            kb, vb = kv[li]
            if inplace:
                kb.scatter_(2, idx, k)
                vb.scatter_(2, idx, v)
            else:
                kb, vb = kb.scatter(2, idx, k), vb.scatter(2, idx, v)
            new_kv.append((kb, vb))
            o = F.scaled_dot_product_attention(q, kb, vb, attn_mask=attn_mask, enable_gqa=True)
            o = o.transpose(1, 2).reshape(bsz, t, a.q_dim)
            out = F.linear(o, blk.wo)
            if lad is not None:
                out = lad.add_delta("o", out, o, s)
            x = x + out
            h = rms_norm(x, blk.ffn_norm, a.norm_eps)
            gu = F.linear(h, blk.w_gate_up)
            if lad is not None:
                gu = lad.add_delta("gate_up", gu, h, s)
            gate, up = gu.chunk(2, dim=-1)
            act = F.silu(gate) * up
            down = F.linear(act, blk.w_down)
            if lad is not None:
                down = lad.add_delta("down", down, act, s)
            x = x + down
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, self.norm, a.norm_eps)
        head = self.embed if self.lm_head is None else self.lm_head
        return F.linear(x, head).float(), new_kv
