"""Exact replay: the true gradient of the bounded-cache policy, without full-cache activations.

Truncated replay (``replay.py``) detaches, at every eviction, what earlier segments wrote into the
cache and the thought state S. A thought token written in one segment and read in the next (still
in the window), or evicted and folded into S, then earns no credit for what it does later: the
credit that PTE exists to learn. Here nothing is detached. Checkpointing at segment boundaries,
as activation checkpointing does at layers:

1. a no-grad pass over the segments keeps what each one starts from: every thought token's K/V
   once (the ring at any segment start is rebuilt from them: one full KV cache per sequence, a
   small fraction of full-cache activations), the slot bookkeeping and S;
2. the segments run again in reverse with grad, each from its stored start as leaves, and
   back-propagate their own loss together with the gradients that the later segments sent back
   for what they hand on (the ring, which the next fold reads too, and S). The gradient a
   segment leaves on its starting leaves goes to the segment before.

Memory: one segment's activations + O(P) + the stored K/V; compute: one extra forward per segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache
from pte_ray.method.model import Transformer
from pte_ray.method.segments import Group, Prefill, score, segment


@dataclass
class _Start:
    """What one segment starts from, before its eviction: enough to recompute it with grad."""

    t: int  # thought tokens written so far
    count: list[int]  # thought tokens each row holds
    valid: torch.Tensor  # [b, S] bool, which slots hold live tokens
    state: torch.Tensor | None  # [L, b, G, r] S before the segment's fold


Chunk = tuple[int, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]  # (a, slots, k, v)


class _ThoughtStore:
    """Every thought token's K/V, written once by the no-grad pass, in one chunk per segment;
    rings are rebuilt from it, and the reverse pass drops each chunk once no ring needs it."""

    def __init__(self, cache: BoundedCache) -> None:
        k0 = cache.kv[0][0]
        self.p, self.template, self.n_layers = cache.p_max, k0, len(cache.kv)
        self.shape = (k0.shape[0], k0.shape[1], cache.n_slots - cache.p_max, k0.shape[3])
        self.chunks: list[Chunk] = []

    def take(self, cache: BoundedCache, a: int, z: int) -> None:
        """Copy tokens [a, z), just written by a segment, out of their ring slots (per row:
        the cache's write table)."""
        if z > a:
            a_ = self.template.shape
            idx = cache.write[:, a:z][:, None, :, None].expand(-1, a_[1], -1, a_[3])
            ks = [k[:, :, self.p :].gather(2, idx) for k, _ in cache.kv]  # [b, n_kv, z-a, hd]
            self.chunks.append(
                (a, idx, ks, [v[:, :, self.p :].gather(2, idx) for _, v in cache.kv])
            )

    def ring(self, a: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The thought region as it stood before token a's write, as leaves that take grad.

        Drops the chunks of tokens >= a first: the segments still to run never read them. The
        others are written in order, each token to its slot, later ones over earlier ones: a
        token kept by R-KV can be arbitrarily old. Slots freed but not refilled keep a stale
        token; the mask gives it no weight and so no gradient.
        """
        self.chunks = [c for c in self.chunks if c[0] < a]
        rings = [
            (self.template.new_zeros(self.shape), self.template.new_zeros(self.shape))
            for _ in range(self.n_layers)
        ]
        for _, idx, ks, vs in self.chunks:
            for (ring_k, ring_v), k, v in zip(rings, ks, vs, strict=True):
                ring_k.scatter_(2, idx, k)
                ring_v.scatter_(2, idx, v)
        return [(rk.requires_grad_(a > 0), rv.requires_grad_(a > 0)) for rk, rv in rings]


def _forward_pass(
    model: Transformer, adapter: Adapter | None, cache: BoundedCache, pre: Prefill, g: Group
) -> tuple[list[_Start], _ThoughtStore]:
    """Step 1: the segments without grad, keeping each one's start and every token's K/V."""
    store = _ThoughtStore(cache)
    starts = []
    with torch.no_grad():
        cache.kv = [(k.detach().clone(), v.detach().clone()) for k, v in cache.kv]
        state = pre.state.detach() if pre.state is not None else None
        for a, z in g.bounds:
            starts.append(_Start(cache.t, list(cache.count), cache.valid.clone(), state))
            # only what the segment writes into the cache is kept: no logits (no LM head)
            _, state = segment(model, adapter, cache, state, g, (a, z), True, logits=False)
            store.take(cache, a, z)
    return starts, store


def exact_group(
    model: Transformer, adapter: Adapter | None, cache: BoundedCache, pre: Prefill, g: Group
) -> None:
    """Step 2: the segments in reverse, each recomputed with grad from its stored start."""
    starts, store = _forward_pass(model, adapter, cache, pre, g)
    p = cache.p_max
    g_ring: list[tuple[torch.Tensor | None, torch.Tensor | None]] | None = None
    g_state: torch.Tensor | None = None
    for a, z in reversed(g.bounds):
        st = starts.pop()  # each start is read once
        cache.t, cache.count, cache.valid = st.t, list(st.count), st.valid
        cache.kv = []  # the later segment's buffers go before this one's are built
        ring = store.ring(a)
        it = iter(pre.kv)
        cache.kv = [(torch.cat([next(it), rk], 2), torch.cat([next(it), rv], 2)) for rk, rv in ring]
        s_in = pre.state
        if a > 0 and st.state is not None:
            s_in = st.state.detach().requires_grad_(
                pre.state is not None and pre.state.requires_grad
            )
        logits, s_out = segment(model, adapter, cache, s_in, g, (a, z), carry_state=True)
        outs, grads = [], []
        loss = score(g, pre.first, logits, a, z)
        if loss is not None and loss.requires_grad:
            outs.append(loss)
            grads.append(torch.ones_like(loss))
        if g_ring is not None:  # what this segment hands on: its ring, read by the next
            for (k, v), (gk, gv) in zip(cache.kv, g_ring, strict=True):
                for out, grad in ((k[:, :, p:], gk), (v[:, :, p:], gv)):
                    if grad is not None and out.requires_grad:
                        outs.append(out)
                        grads.append(grad)
        if g_state is not None and s_out is not None and s_out.requires_grad:
            outs.append(s_out)
            grads.append(g_state)
        if outs:
            torch.autograd.backward(outs, grads)
        g_ring = [(rk.grad, rv.grad) for rk, rv in ring]
        del ring, outs, grads, loss, logits  # before the next segment's recompute
        g_state = s_in.grad if a > 0 and s_in is not None and s_in.requires_grad else None
