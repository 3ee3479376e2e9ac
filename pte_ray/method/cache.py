"""The bounded KV cache: prompt region + per-row thought ring, static shapes, no re-allocation.

Layout of every layer's buffer ``[B, n_kv, P_max + C, head_dim]``: slots ``[0, P_max)`` hold the
left-padded prompts (row i's prompt in ``[P_max - P_i, P_max)``, padding never valid), slots
``[P_max, P_max + C)`` are the thought ring. Row i may hold ``cap_i`` thought tokens
(``budget`` in mode ``thought``; ``budget - P_i`` in mode ``total``, so rows evict at different
steps). The ring is a slot pool: a write table says which ring slot thought token t goes to.
Under ``window`` eviction that is ``t % cap_i`` (the oldest go); under ``rkv`` the ``E`` slots
an eviction frees (chosen by ``eviction.py``, recorded, sorted) take the next ``E`` tokens, so a
replay given the record rebuilds the same cache. An eviction only clears validity bits and reads
the evicted slots out before they are overwritten; keys are stored post-RoPE at their original
positions, so a token's slot never changes what attention computes.

Every row advances one token per step, so the whole eviction schedule is known on the host from
the prompt lengths alone: deciding when to evict never reads anything back from the device. A
row's clock is the batch's minus the step its request started at: a row that finished can take
a queued request (``admit``: continuous batching), which starts its own clock, ring and
validity afresh; the buffers are sized at the start for every prompt the call will hold.
With ``share`` a GRPO group's rows keep one copy of their prompt (``shared_kv.py``), the slot
numbers unchanged. Each forward gets its positions, write slots and mask as one ``Placement``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from pte_ray.method.config import CacheConfig
from pte_ray.method.eviction import rkv_choose
from pte_ray.method.model import Obs, Placement, Transformer
from pte_ray.method.prompt_slots import left_pad, prompt_place, prompt_valid
from pte_ray.method.shared_kv import PromptPool, layers

__all__ = ["BoundedCache", "Evicted", "left_pad", "prompt_place"]


def _capacity(cfg: CacheConfig, row: int, prompt_len: int, max_new_tokens: int) -> int:
    """Row ``row``'s thought capacity; a prompt the cache cannot hold names its row."""
    try:
        return cfg.thought_capacity(prompt_len, max_new_tokens)
    except ValueError as e:
        raise ValueError(f"row {row}: {e}") from None


@dataclass
class Evicted:
    keys: torch.Tensor  # [L, B, E, d_kv], heads flattened as cached (post-RoPE)
    values: torch.Tensor  # [L, B, E, d_kv]
    valid: torch.Tensor  # [B, E] which entries are real evictions
    rows: torch.Tensor  # [B] bool, rows that evicted
    slots: torch.Tensor | None = None  # [B, E] ring offsets evicted (rkv: sorted), the record


class BoundedCache:
    """Buffers, validity mask and the host-side ring bookkeeping of one batch."""

    def __init__(
        self,
        model: Transformer,
        prompt_lens: list[int],
        cfg: CacheConfig,
        max_new_tokens: int,
        write: torch.Tensor | None = None,
        queued: list[int] = (),
        slack: int = 0,
        share: bool = False,
    ) -> None:
        """``write`` [B, >= max_new_tokens]: the ring offset of each thought token, given by
        replay (from the rollout's record); by default ``t % cap_i``, rewritten by each
        ``evict`` that is told which slots go. ``queued``: lengths of prompts that take a row
        later (``admit``), which the buffers are sized for too; ``slack``: steps a finished
        row may run on before it is seen finished; ``share``: ``shared_kv.py``."""
        if not prompt_lens or min(prompt_lens) < 1:
            raise ValueError(f"every prompt needs at least one token, got lengths {prompt_lens}")
        self.cfg, self.model, dev = cfg, model, model.device
        self.max_new = max_new_tokens
        self.prompt_lens = list(prompt_lens)
        every = self.prompt_lens + list(queued)
        self.p_max = max(every)
        caps_all = [_capacity(cfg, i, p, max_new_tokens) for i, p in enumerate(every)]
        self.caps = caps_all[: len(prompt_lens)]
        self.evict_n = [cfg.evicted_at_once(p, max_new_tokens) for p in prompt_lens]
        self.n_slots = self.p_max + max(caps_all)
        b = len(prompt_lens)
        self.kv: list = [] if share else model.new_kv(b, self.n_slots)
        self.ring = model.new_kv(b, self.n_slots - self.p_max) if share else None  # shared:
        self.pool: PromptPool | None = None  # the prompts' copies, each row's entry and prompt
        self.owner = torch.zeros(b, dtype=torch.long, device=dev)
        self.row_prompt: list[tuple[int, ...] | None] = [None] * b
        self.plen_t = torch.tensor(prompt_lens, device=dev)
        self.valid = prompt_valid(self.plen_t, self.p_max, self.n_slots)
        self.cap_t = torch.tensor(self.caps, device=dev)
        self.t = 0  # decode steps so far: thought tokens written by a row that started at 0
        self.start = [0] * b  # the step each row's request started at (refilled rows: later)
        self.start_t = torch.zeros(b, dtype=torch.long, device=dev)
        self.count = [0] * b  # thought tokens each row holds now
        self.n_table = max_new_tokens + max(self.evict_n, default=0) + 1 + slack
        self.write = self._write_table(write, self.n_table, dev)
        self.q_obs: list[torch.Tensor] | None = None  # R-KV's query ring (rollout)

    def _write_table(self, given: torch.Tensor | None, n: int, dev: torch.device) -> torch.Tensor:
        """[B, n]: n covers every token plus the E entries an eviction writes ahead."""
        t = torch.arange(n, device=dev)
        table = torch.remainder(t[None], self.cap_t[:, None])
        if given is not None:
            m = min(n, given.shape[1])
            table[:, :m] = given[:, :m].to(dev)
        return table

    @property
    def batch(self) -> int:
        return len(self.prompt_lens)

    def prompt_placement(self) -> Placement:
        """Positions, write slots [0, P_max) and the causal mask of the prompt forward."""
        return prompt_place(self.plen_t, self.p_max, self.n_slots)

    def local(self) -> torch.Tensor:
        """[B] each row's own thought index: tokens its request has written."""
        return self.t - self.start_t

    @property
    def refilled(self) -> bool:
        return any(self.start)

    def due(self) -> list[int]:
        """Rows that must evict before the next thought token is written (a row holding its
        capacity: the steps ``CacheConfig.schedule`` lists)."""
        if not self.cfg.bounded:
            return []
        return [i for i, (c, cap) in enumerate(zip(self.count, self.caps)) if c >= cap]

    def evict(self, rows: list[int], chosen: torch.Tensor | None = None) -> Evicted:
        """Read out and invalidate ``evict_n`` thought tokens of ``rows``: the oldest, or the
        ring offsets ``chosen`` [B, E] (sorted; entries of other rows are ignored), which the
        next E tokens of each row then refill."""
        dev = self.model.device
        n = [self.evict_n[i] if i in rows else 0 for i in range(self.batch)]
        if chosen is None:
            oldest = [self.t - s - c for s, c in zip(self.start, self.count)]  # each row's oldest
            ring = [
                self.p_max + (start + torch.arange(k)) % cap
                for start, k, cap in zip(oldest, n, self.caps)
            ]
            idx = pad_sequence(ring, batch_first=True).to(dev)  # [B, E] slots, 0 past n
        e_max = (idx if chosen is None else chosen).shape[1]
        valid = (torch.arange(e_max)[None] < torch.tensor(n)[:, None]).to(dev)  # [B, E]
        if chosen is not None:
            idx = torch.where(valid, self.p_max + chosen, 0)
            for i in rows:
                lt = self.t - self.start[i]
                self.write[i, lt : lt + e_max] = chosen[i]
        for i in rows:
            self.count[i] -= self.evict_n[i]
        row_mask = valid.any(dim=1)
        a = self.model.args
        bufs, at = (self.ring, (idx - self.p_max).clamp(min=0)) if self.ring else (self.kv, idx)
        gather = at[:, None, :, None].expand(-1, a.n_kv_heads, -1, a.head_dim)

        def take(buf: torch.Tensor) -> torch.Tensor:  # [B, n_kv, E, hd] -> [B, E, d_kv]
            return buf.gather(2, gather).transpose(1, 2).reshape(self.batch, e_max, a.kv_dim)

        keys = torch.stack([take(k) for k, _ in bufs])
        values = torch.stack([take(v) for _, v in bufs])
        self.valid.scatter_(1, idx, ~valid & self.valid.gather(1, idx))
        return Evicted(keys, values, valid, row_mask, idx - self.p_max)

    def step_inputs(self, n: int) -> Placement:
        """Positions, ring slots and mask [B, n, S] for the next ``n`` thought tokens.

        The caller guarantees no row needs to evict inside these ``n`` tokens. Marks the slots
        valid and advances the bookkeeping, so call it once per forward.
        """
        dev = self.model.device
        j = torch.arange(n, device=dev)
        if self.refilled:
            at = self.local()[:, None] + j[None]
            pos, slots = self.plen_t[:, None] + at, self.p_max + self.write.gather(1, at)
        else:
            pos = self.plen_t[:, None] + self.t + j[None]
            slots = self.p_max + self.write[:, self.t : self.t + n]
        if n == 1:
            self.valid.scatter_(1, slots, True)
            mask = self.valid[:, None, :]
        else:
            before = self.valid[:, None, :].expand(-1, n, -1)
            causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            own = torch.zeros_like(before).scatter_(
                2, slots[:, None, :].expand(-1, n, -1), causal[None].expand(self.batch, -1, -1)
            )
            mask = before | own
            self.valid.scatter_(1, slots, True)
        self.t += n
        self.count = [c + n for c in self.count]
        return Placement(pos, slots, mask)

    def select(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep only ``rows`` (finished rows stop costing compute)."""
        if self.ring is not None:
            self.ring = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.ring]
            self.owner = self.owner.index_select(0, rows)
            self.row_prompt = [self.row_prompt[i] for i in rows_host]
            self.kv = layers(self.pool, self.ring, self.owner)
        else:
            self.kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv]
        self.valid = self.valid.index_select(0, rows)
        self.plen_t = self.plen_t.index_select(0, rows)
        self.cap_t = self.cap_t.index_select(0, rows)
        self.write = self.write.index_select(0, rows)
        self.start_t = self.start_t.index_select(0, rows)
        if self.q_obs is not None:
            self.q_obs = [q.index_select(0, rows) for q in self.q_obs]
        for name in ("prompt_lens", "caps", "evict_n", "count", "start"):
            old = getattr(self, name)
            setattr(self, name, [old[i] for i in rows_host])

    def put_prompts(self, rows: list[int], prompts: list[list[int]], kv: list, src: list[int]):
        """Shared storage: rows ``rows`` read ``prompts``; one the pool does not hold is
        written from row ``src[j]`` of ``kv`` (per layer [k, n_kv, P_max, hd], a prefill's)."""
        if self.pool is None:
            self.pool = PromptPool.sized(kv, len({tuple(p) for p in prompts}))
        entries = self.pool.assign(self.row_prompt, rows, prompts, kv, src)
        dev = self.owner.device
        self.owner[torch.tensor(rows, device=dev)] = torch.tensor(entries, device=dev)
        self.kv = layers(self.pool, self.ring, self.owner)

    def admit(self, rows: list[int], prompt_lens: list[int], kv: list, prompts=(), src=()) -> None:
        """Rows ``rows`` start new requests with prompts of ``prompt_lens``: their prompt
        keys/values ``kv`` (per layer [k, n_kv, P_max, hd], from their prefill; shared: one per
        distinct prompt, row ``src[j]`` for ``prompts[j]``) go in, the rest of their buffers is
        zeroed, their clock, ring and validity start afresh."""
        dev = self.model.device
        r = torch.tensor(rows, device=dev)
        plen = torch.tensor(prompt_lens, device=dev)
        if self.ring is not None:
            for k, v in self.ring:
                k[r], v[r] = 0, 0
            self.put_prompts(rows, list(prompts), kv, list(src))
        else:
            pad = (0, 0, 0, self.n_slots - self.p_max)
            for (k, v), (k1, v1) in zip(self.kv, kv, strict=True):
                k[r], v[r] = F.pad(k1, pad), F.pad(v1, pad)
        self.valid[r] = prompt_valid(plen, self.p_max, self.n_slots)
        for i, p in zip(rows, prompt_lens, strict=True):
            self.prompt_lens[i], self.count[i], self.start[i] = p, 0, self.t
            self.caps[i] = _capacity(self.cfg, i, p, self.max_new)
            self.evict_n[i] = self.cfg.evicted_at_once(p, self.max_new)
        self.plen_t[r], self.start_t[r] = plen, self.t
        self.cap_t[r] = torch.tensor([self.caps[i] for i in rows], device=dev)
        t = torch.arange(self.write.shape[1], device=dev)
        self.write[r] = torch.remainder(t[None], self.cap_t[r][:, None])

    def held(self) -> torch.Tensor:
        """[B, C] the thought index each ring slot holds (-1: never written), from the write
        table: one op at an eviction instead of bookkeeping at every step."""
        n = self.t - min(self.start)
        t = torch.arange(n, device=self.write.device).expand(self.batch, -1)
        if self.refilled:  # a row's table past its own clock is not written yet
            t = torch.where(t < self.local()[:, None], t, -1)
        empty = torch.full((self.batch, max(self.caps)), -1, dtype=torch.long, device=t.device)
        return empty.scatter_reduce(1, self.write[:, :n], t, "amax")

    def rkv_choice(self, due: list[int]) -> torch.Tensor:
        """R-KV's ring offsets [B, E] to free, sorted (only the ``due`` rows' are used)."""
        assert self.q_obs is not None, "rkv_choice needs the query ring (cache.eviction=rkv)"
        n_evict = self.evict_n[due[0]]  # rkv: every row evicts the same number (config checks)
        t = self.local()[:, None] if self.refilled else self.t
        args = (self.valid, self.held(), self.p_max, t, n_evict, self.cfg.rkv)
        return rkv_choose(self.keys(), self.q_obs, *args)

    def keys(self) -> Iterator[torch.Tensor]:
        """Each layer's keys [B, n_kv, S, hd] in the unshared layout, one layer at a time."""
        if self.ring is None:
            return (k for k, _ in self.kv)
        return (layer.full(layer.rk, layer.pk) for layer in self.kv)

    def observer(self) -> Obs | None:
        """The query ring for the forward of the next token, when R-KV will read it: only in
        the ``rkv.window`` steps before some row's next eviction (else None: the forward skips
        the capture)."""
        if not self.cfg.rkv_on:
            return None
        w = self.cfg.rkv.window
        if all(cap - c > w for c, cap in zip(self.count, self.caps, strict=True)):
            return None
        if self.q_obs is None:
            a, dev, dt = self.model.args, self.model.device, self.model.dtype
            shape = (self.batch, a.n_heads, w, a.head_dim)
            self.q_obs = [torch.zeros(shape, dtype=dt, device=dev) for _ in range(a.n_layers)]
        # per row: its own clock's slot, so a refilled row fills its ring as it would alone
        return self.q_obs, torch.remainder(self.local(), w)

    def detach_(self) -> None:
        """Cut the graph of cache contents at a segment boundary (truncated backprop)."""
        self.kv = [(k.detach(), v.detach()) for k, v in self.kv]
