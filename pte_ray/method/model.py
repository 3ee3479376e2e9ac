"""A compact decoder (Llama / Qwen2 / Qwen3) over HF weights, with a caller-owned static cache.

gpt-fast style: fused q/k/v and gate/up projections (``layout.py`` says which and in what order),
one forward for prefill, decode and replay. The caller passes the cache buffers and a
``Placement`` (positions, the slots to write the new keys/values to and the boolean attention
mask over all slots), so the same code serves a full cache, a bounded ring cache and
teacher-forced segment replay. The base weights are
frozen buffers of the module; the adapter (LoRA + thought state) is passed in, so the base model
never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pte_ray.method.attention import attend, one_query_cpu, step_bias, write_at
from pte_ray.method.layout import FusedLinear, ModelArgs
from pte_ray.method.packed import pack, packed_linear
from pte_ray.method.shared_kv import SharedLayer

if TYPE_CHECKING:
    from pte_ray.method.adapter import Adapter, LayerAdapter

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's key and value buffers [B, n_kv, S, hd]
# R-KV's observation window: per layer a ring of the newest queries [B, H, alpha, hd] and the
# slot [1] (a tensor, so a compiled step does not recompile per value) this forward writes to.
Obs = tuple[list[torch.Tensor], torch.Tensor]
ROPE_MIN_POSITIONS = 256  # the RoPE tables never hold fewer positions (short calls need no reserve)


@dataclass(frozen=True)
class Placement:
    """Where one forward's new tokens sit and what they see: the model's inputs besides the ids
    and the buffers, made by the cache, read by ``Transformer.forward``."""

    pos: torch.Tensor  # [B, T] RoPE positions
    slots: torch.Tensor  # [B, T] the cache slots their keys/values are written to
    mask: torch.Tensor  # [B, T, S] which slots each of them attends to (after the write)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm exactly as HF computes it (fp32 statistics, cast back before the weight)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _lora(
    lad: LayerAdapter | None,
    group: FusedLinear,
    y: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor | None,
) -> torch.Tensor:
    """The fused base output ``y`` of ``group`` plus the adapter's delta for input ``x``."""
    return y if lad is None else lad.add_delta(group, y, x, s)


def _write(kv: KV, idx: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> KV:
    """Keys/values into their slots: in place without grad, out of place (keeping the graph)
    with it."""
    kb, vb = kv
    if torch.is_grad_enabled():
        return kb.scatter(2, idx, k), vb.scatter(2, idx, v)
    at = write_at(idx)
    kb[at], vb[at] = k.transpose(1, 2), v.transpose(1, 2)
    return kb, vb


class Block(nn.Module):
    """One decoder layer. Every fused group of ``args.layout`` is one frozen weight in ``w``."""

    def __init__(self, a: ModelArgs, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.args, self.layout = a, a.layout
        self.attn_norm = _frozen(torch.ones(a.dim, **kw))
        self.ffn_norm = _frozen(torch.ones(a.dim, **kw))
        self.w = nn.ParameterDict(
            {g.name: _frozen(torch.empty(g.d_out, g.d_in, **kw)) for g in self.layout.groups}
        )
        self.bqkv = _frozen(torch.zeros(self.layout.qkv.d_out, **kw)) if a.qkv_bias else None
        if a.qk_norm:
            self.q_norm = _frozen(torch.ones(a.head_dim, **kw))
            self.k_norm = _frozen(torch.ones(a.head_dim, **kw))
        self.packed: dict[str, torch.Tensor] = {}  # oneDNN copies of ``w`` (Transformer.pack)

    def linear(self, name: str, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The base projection ``name`` of ``x``: the packed copy when there is one."""
        p = self.packed.get(name)
        return F.linear(x, self.w[name], bias) if p is None else packed_linear(x, p, bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: KV,
        idx: torch.Tensor,
        attn_mask: torch.Tensor,
        lad: LayerAdapter | None,
        s: torch.Tensor | None,
        obs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """x [B, T, dim] -> x after attention and MLP, and this layer's updated buffers."""
        h = rms_norm(x, self.attn_norm, self.args.norm_eps)
        out, kv = self.attention(h, rope, kv, idx, attn_mask, lad, s, obs)
        x = x + out
        h = rms_norm(x, self.ffn_norm, self.args.norm_eps)
        return x + self.mlp(h, lad, s), kv

    def attention(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: KV,
        idx: torch.Tensor,
        attn_mask: torch.Tensor,
        lad: LayerAdapter | None,
        s: torch.Tensor | None,
        obs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        a, qkv_group = self.args, self.layout.qkv
        bsz, t, _ = h.shape
        qkv = _lora(lad, qkv_group, self.linear(qkv_group.name, h, self.bqkv), h, s)
        cos, sin = rope  # q and k rotated together: one pass of RoPE's ops a layer, not two
        qk = self.qk_heads(qkv)
        q, k = (qk * cos + rotate_half(qk) * sin).split((a.n_heads, a.n_kv_heads), dim=1)
        v = qkv[..., a.q_dim + a.kv_dim :].view(bsz, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
        if obs is not None:  # the newest query (post-RoPE, as attention saw it) for R-KV
            at = obs[1].view(-1, 1, 1, 1).expand(-1, q.shape[1], 1, q.shape[-1])
            obs[0].scatter_(2, at, q[:, :, -1:])  # each row's own ring slot
        if isinstance(kv, SharedLayer):  # group prompts stored once (shared_kv.py)
            kv = kv.write(idx, k, v)
            o = kv.attend(q, attn_mask)
        else:
            kv = _write(kv, idx, k, v)
            o = attend(q, *kv, attn_mask)
        o = o.transpose(1, 2).reshape(bsz, t, a.q_dim)
        o_group = self.layout.o
        return _lora(lad, o_group, self.linear(o_group.name, o), o, s), kv

    def qk_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """The query and key heads of the fused q|k|v output side by side, [B, H + n_kv, T, hd]
        (q_norm / k_norm applied): RoPE treats them alike."""
        a = self.args
        bsz, t, _ = qkv.shape
        if not a.qk_norm:  # q|k are adjacent in the fused output: a view, no copy
            qk = qkv[..., : a.q_dim + a.kv_dim].view(bsz, t, a.n_heads + a.n_kv_heads, a.head_dim)
            return qk.transpose(1, 2)
        q = qkv[..., : a.q_dim].view(bsz, t, a.n_heads, a.head_dim)
        k = qkv[..., a.q_dim : a.q_dim + a.kv_dim].view(bsz, t, a.n_kv_heads, a.head_dim)
        qk = torch.cat(
            (rms_norm(q, self.q_norm, a.norm_eps), rms_norm(k, self.k_norm, a.norm_eps)), 2
        )
        return qk.transpose(1, 2)

    def mlp(
        self, h: torch.Tensor, lad: LayerAdapter | None, s: torch.Tensor | None
    ) -> torch.Tensor:
        gu_group, down_group = self.layout.gate_up, self.layout.down
        gu = _lora(lad, gu_group, self.linear(gu_group.name, h), h, s)
        gate, up = gu.split(gu_group.widths, dim=-1)
        act = F.silu(gate) * up
        return _lora(lad, down_group, self.linear(down_group.name, act), act, s)


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
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        self.args = args
        self.embed = _frozen(torch.empty(args.vocab_size, args.dim, **kw))
        self.layers = nn.ModuleList(Block(args, dtype, device) for _ in range(args.n_layers))
        self.norm = _frozen(torch.ones(args.dim, **kw))
        self.lm_head = (
            None if args.tie_embeddings else _frozen(torch.empty(args.vocab_size, args.dim, **kw))
        )
        self._rotary = rotary  # HF's own RoPE module: every rope_type HF knows is right here.
        self._head_packed: torch.Tensor | None = None
        self.rows: Callable[[torch.Tensor], torch.Tensor] | None = None  # mapped.py: from file
        self._cos = torch.empty(0, args.head_dim, **kw)
        self._sin = torch.empty(0, args.head_dim, **kw)
        self.reserve_positions(ROPE_MIN_POSITIONS)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def reserve_positions(self, max_pos: int) -> None:
        """Size the cos/sin tables for positions [0, max_pos), once, before a run's first forward.

        They grow geometrically and are kept, so ``forward`` only indexes them: it never
        rebuilds a table or reads a position back to the host to find out how far to grow.
        """
        if self._cos.shape[0] < max_pos:
            n = max(max_pos, 2 * self._cos.shape[0], ROPE_MIN_POSITIONS)
            dummy = torch.zeros(1, dtype=torch.float32, device=self.device)
            pos = torch.arange(n, device=self.device)[None]
            cos, sin = self._rotary.to(self.device)(dummy, pos)
            self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)

    def pack(self, batch_hint: int = 32) -> None:
        """Every base projection and the output head packed for oneDNN (``packed.py``), their
        dense copies dropped: for a model that only ever runs without grad (the engines)."""
        empty = torch.empty(0, dtype=self.dtype, device=self.device)
        for blk in self.layers:
            for g in self.args.layout.groups:
                blk.packed[g.name] = pack(blk.w[g.name], batch_hint)
                blk.w[g.name].data = empty  # one copy in memory, not two
        head = self.embed if self.lm_head is None else self.lm_head
        self._head_packed = pack(head, batch_hint)
        if self.lm_head is not None:
            self.lm_head.data = empty

    @property
    def packed(self) -> bool:
        return self._head_packed is not None

    def new_kv(self, batch: int, slots: int) -> list[KV]:
        a = self.args
        shape = (batch, a.n_kv_heads, slots, a.head_dim)
        kw: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        return [(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in range(a.n_layers)]

    def forward(
        self,
        ids: torch.Tensor,
        at: Placement,
        kv: list[KV],
        adapter: Adapter | None = None,
        state: torch.Tensor | None = None,
        last_only: bool = False,
        obs: Obs | None = None,
        head: bool = True,
    ) -> tuple[torch.Tensor | None, list[KV]]:
        """Run ``ids`` [B, T] at positions ``at.pos`` [B, T].

        New keys/values go to slots ``at.slots`` [B, T] of each layer's ``kv`` buffers
        [B, n_kv, S, hd]; ``at.mask`` [B, T, S] says which slots each query may attend to (after
        the write). With grad enabled the write is out of place and the returned buffers carry
        the graph; without grad the buffers are updated in place. ``state`` [L, B, G, r] is the
        thought state for ``adapter``; ``obs`` (rollout under R-KV eviction) keeps each layer's
        newest query in a ring. The RoPE tables are only indexed: ``reserve_positions``
        sizes them beforehand. Returns fp32 logits [B, T or 1, V] (None with ``head=False``:
        the output projection, a quarter of a small model's FLOPs, is skipped) and the buffers.
        """
        a = self.args
        if self.packed and torch.is_grad_enabled():
            raise RuntimeError("a packed model runs without grad only (oneDNN has no backward)")
        bsz, t = ids.shape
        rope = self._cos[at.pos][:, None], self._sin[at.pos][:, None]  # [B, 1, T, hd]
        idx = at.slots[:, None, :, None].expand(bsz, a.n_kv_heads, t, a.head_dim)
        attn_mask = at.mask[:, None]
        if one_query_cpu(t, ids.device):  # the mask as a bias, once for every layer
            attn_mask = step_bias(attn_mask, self.dtype)
        x = F.embedding(ids, self.embed) if self.rows is None else self.rows(ids)
        new_kv: list[KV] = []
        for li, blk in enumerate(self.layers):
            lad = adapter.layers[li] if adapter is not None else None
            s = state[li] if state is not None else None
            o = (obs[0][li], obs[1]) if obs is not None else None
            x, layer_kv = blk(x, rope, kv[li], idx, attn_mask, lad, s, o)
            new_kv.append(layer_kv)
        if not head:  # only the cache was wanted (exact replay's no-grad pass)
            return None, new_kv
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, self.norm, a.norm_eps)
        if self._head_packed is not None:
            return packed_linear(x, self._head_packed).float(), new_kv
        head = self.embed if self.lm_head is None else self.lm_head
        return F.linear(x, head).float(), new_kv
