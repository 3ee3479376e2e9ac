"""Group prompts stored once: a GRPO group's G rows read one copy of their prompt's keys/values.

The G rows of a group start from one prompt and the same S_0, so their prompt keys/values are
equal, and the bounded cache never evicts the prompt region. The storage splits: a prompt pool
``[n_kv, n_p, P_max, hd]`` (one entry per distinct prompt alive in the batch) and each row's
thought ring ``[B, n_kv, C, hd]``; ``owner[b]`` is row b's pool entry. The slot numbering the
cache hands out stays that of the unshared layout (prompt ``[0, P_max)``, ring after it), so the
eviction bookkeeping, the record and replay do not change.

A decode step's attention over the prompt is one GEMM of every row's queries against the whole
pool (head-major, so it is a view), each row masked to its own entry, merged with the ring part
into one softmax: the pool is read once for the batch instead of G times, for n_p times the
prompt FLOPs of a row-by-row read (used only where prompts repeat: at most B/2 distinct).
Anything else (several queries, grad) reads per-row copies (``full``): only the rollout's
one-token, no-grad step runs here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pte_ray.method.attention import step_bias, write_at


@dataclass
class SharedLayer:
    """One layer's pool and rings, what ``Block.attention`` writes to and attends over."""

    pk: torch.Tensor  # [n_kv, n_p, P, hd] prompt keys (post-RoPE)
    pv: torch.Tensor
    rk: torch.Tensor  # [B, n_kv, C, hd] each row's thought ring
    rv: torch.Tensor
    owner: torch.Tensor  # [B] each row's pool entry

    def write(self, idx: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> SharedLayer:
        """New keys/values at cache slots ``idx`` [B, n_kv, T, hd] (ring slots only)."""
        if torch.is_grad_enabled():
            raise RuntimeError("shared prompt storage is for the no-grad rollout step only")
        at = write_at(idx - self.pk.shape[2])
        self.rk[at], self.rv[at] = k.transpose(1, 2), v.transpose(1, 2)
        return self

    def full(self, ring: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """[B, n_kv, P + C, hd]: each row's prompt entry then its ring (the unshared layout)."""
        return torch.cat([pool.index_select(1, self.owner).transpose(0, 1), ring], dim=2)

    def attend(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, H, T, hd] under ``mask`` [B, 1, T, P + C] (boolean, or one query's
        ``step_bias``)."""
        b, h, t, hd = q.shape
        if t != 1 or torch.is_grad_enabled():
            k, v = self.full(self.rk, self.pk), self.full(self.rv, self.pv)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        n_kv, n_p, p, _ = self.pk.shape
        g, w = h // n_kv, n_p * p
        qg = q.view(b, n_kv, g, hd)
        q2 = qg.transpose(0, 1).reshape(n_kv, b * g, hd)
        lp = torch.matmul(q2, self.pk.view(n_kv, w, hd).transpose(-1, -2))  # the pool, once
        lp = lp.view(n_kv, b, g, w).transpose(0, 1)
        lr = torch.matmul(qg, self.rk.transpose(-1, -2))  # [B, n_kv, g, C]
        m = (mask if mask.is_floating_point() else step_bias(mask, q.dtype)).reshape(b, -1)
        other = torch.arange(n_p, device=q.device)[None] != self.owner[:, None]  # [B, n_p]
        pool = m[:, None, :p].masked_fill(other[:, :, None], -torch.inf).reshape(b, w)
        bias = torch.cat([pool, m[:, p:]], dim=-1)[:, None, None, :]
        logits = torch.add(bias, torch.cat([lp, lr], dim=-1), alpha=hd**-0.5)
        probs = torch.softmax(logits, dim=-1).to(self.pv.dtype)
        pp = probs[..., :w].transpose(0, 1).reshape(n_kv, b * g, w)
        op = torch.matmul(pp, self.pv.view(n_kv, w, hd)).view(n_kv, b, g, hd).transpose(0, 1)
        o = op + torch.matmul(probs[..., w:], self.rv)
        return o.reshape(b, h, 1, hd)


class PromptPool:
    """The pool's entries: which prompt each holds, which rows read it; grows when full."""

    def __init__(self, pk: list[torch.Tensor], pv: list[torch.Tensor]) -> None:
        self.pk, self.pv = pk, pv  # per layer [n_kv, n_p, P, hd]
        self.held: list[tuple[int, ...] | None] = [None] * pk[0].shape[1]

    @classmethod
    def sized(cls, kv: list, n: int) -> PromptPool:
        """A pool of ``n`` empty entries shaped like the prefill buffers ``kv``."""
        pk = [k.new_zeros(k.shape[1], n, *k.shape[2:]) for k, _ in kv]
        return cls(pk, [torch.zeros_like(k) for k in pk])

    def assign(
        self,
        row_prompt: list[tuple[int, ...] | None],
        rows: list[int],
        prompts: list[list[int]],
        kv: list,
        src: list[int],
    ) -> list[int]:
        """Rows ``rows`` (of ``row_prompt``, each row's prompt, updated) read ``prompts``: their
        entries, a new one written from row ``src[j]`` of ``kv`` for ``prompts[j]``."""
        keys = [tuple(p) for p in prompts]
        live = {q for i, q in enumerate(row_prompt) if q is not None and i not in rows}
        entries, new = self.place(keys, live)
        for p, e in new.items():
            self.fill(e, p, kv, src[keys.index(p)])
        for i, p in zip(rows, keys, strict=True):
            row_prompt[i] = p
        return entries

    def place(
        self, prompts: list[tuple[int, ...]], live: set[tuple[int, ...]]
    ) -> tuple[list[int], dict[tuple[int, ...], int]]:
        """Each of ``prompts``' pool entry: the one a ``live`` row reads with the same prompt
        (same call: same adapter and S_0, so the same keys/values), else one that no live row
        reads, else a new one. An entry whose rows have all gone is free, never read again
        before it is written. Returns the entries and the ones the caller must write (``fill``)."""
        at = {q: i for i, q in reversed(list(enumerate(self.held))) if q in live}
        keep = set(at.values())
        new: dict[tuple[int, ...], int] = {}
        for p in prompts:
            if p in at:
                continue
            free = [i for i in range(len(self.held)) if i not in keep]
            i = free[0] if free else self._grow()
            keep.add(i)
            at[p] = new[p] = i
        for i in set(range(len(self.held))) - keep:  # free: zeroed, so what a row reads
            self._clear(i)  # through the pool's GEMM with weight 0 is 0 (never inf or nan)
        return [at[p] for p in prompts], new

    def _clear(self, entry: int) -> None:
        if self.held[entry] is not None:
            for k, v in zip(self.pk, self.pv, strict=True):
                k[:, entry], v[:, entry] = 0, 0
            self.held[entry] = None

    def _grow(self) -> int:
        """One more entry in every layer (more distinct prompts alive than the pool holds)."""
        n = len(self.held)
        self.pk = [torch.cat([k, torch.zeros_like(k[:, :1])], 1) for k in self.pk]
        self.pv = [torch.cat([v, torch.zeros_like(v[:, :1])], 1) for v in self.pv]
        self.held.append(None)
        return n

    def fill(self, entry: int, prompt: tuple[int, ...], kv: list, row: int) -> None:
        """Entry ``entry`` takes ``prompt``'s keys/values: row ``row`` of ``kv`` (per layer
        [b, n_kv, P, hd], a prefill's buffers)."""
        for k, v, (k1, v1) in zip(self.pk, self.pv, kv, strict=True):
            k[:, entry] = k1[row]
            v[:, entry] = v1[row]
        self.held[entry] = prompt


def layers(pool: PromptPool, ring: list, owner: torch.Tensor) -> list[SharedLayer]:
    """Every layer's view: the pool's entries, the rows' rings, the rows' owners."""
    parts = zip(pool.pk, pool.pv, ring, strict=True)
    return [SharedLayer(pk, pv, rk, rv, owner) for pk, pv, (rk, rv) in parts]
