"""Rollout: batched generation under the bounded cache with thought-state updates.

Prefill once, then one token per step for every live row. Per step the host only decides what
it already knows (which rows evict: the schedule depends on prompt lengths alone); it reads from
the device every ``check_every`` steps to drop finished rows (so they stop costing compute) and
to match stop strings. Outputs stay in preallocated device tensors until the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.model import Transformer
from pte_ray.method.sampling import sample


@dataclass
class Rollout:
    """What one generate call produced, per row (original order)."""

    prompts: list[list[int]]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    eviction_steps: list[list[int]]  # thought-token index t before whose write a row evicted
    finish_reasons: list[str]  # "stop" (EOS / stop string) or "length"
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def evictions(self) -> list[int]:
        return [len(e) for e in self.eviction_steps]


def _stop_cut(tokens: list[int], stops: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """Length of the shortest prefix whose text contains a stop string (0 = none)."""
    if not any(s in decode(tokens) for s in stops):
        return 0
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode(tokens[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


@torch.no_grad()
def generate(
    model: Transformer,
    adapter: Adapter | None,
    prompts: list[list[int]],
    sp: SamplingParams,
    cache_cfg: CacheConfig,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    decode: Callable[[list[int]], str] | None = None,
    step_fn: Callable[..., tuple[torch.Tensor, list]] | None = None,
) -> Rollout:
    """Sample completions for ``prompts`` (token ids). ``decode`` is needed for stop strings.

    ``step_fn`` replaces ``model.forward`` for decode steps (e.g. a ``torch.compile`` of it).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if sp.stop_strings and decode is None:
        raise ValueError("stop_strings need a decode function (the tokenizer's decode)")
    dev = model.device
    b, n_new = len(prompts), sp.max_new_tokens
    cache = BoundedCache(model, [len(p) for p in prompts], cache_cfg, n_new)
    gen = None
    if sp.seed is not None:
        gen = torch.Generator(device=dev).manual_seed(sp.seed)
    state = adapter.initial_state(b) if adapter is not None else None
    state = state.contiguous() if state is not None else None
    eos = torch.tensor(sorted(set(eos_ids) | set(sp.stop_token_ids)) or [-1], device=dev)
    step = step_fn or model.forward

    ids, pos, slots, mask = cache.prefill_inputs(prompts, pad_id)
    model.reserve_positions(cache.p_max + n_new + 1)
    logits, _ = model(ids, pos, cache.kv, slots, mask, adapter, state, True)
    tok, lp = sample(logits[:, -1], sp, gen)

    out_tok = torch.full((b, n_new), pad_id, dtype=torch.long, device=dev)
    out_lp = torch.zeros(b, n_new, dtype=torch.float32, device=dev)
    done_at = torch.full((b,), n_new, dtype=torch.long, device=dev)  # length incl. EOS
    active = torch.arange(b, device=dev)
    active_host = list(range(b))
    evictions: list[list[int]] = [[] for _ in range(b)]
    stop_len = [0] * b
    n_steps = row_steps = 0
    for t in range(n_new):
        out_tok[active, t] = tok
        out_lp[active, t] = lp
        hit = torch.isin(tok, eos)
        done_at[active] = torch.where(hit & (done_at[active] == n_new), t + 1, done_at[active])
        if t == n_new - 1:
            break
        if (t + 1) % sp.check_every == 0:
            live = (done_at[active] == n_new).tolist()
            if sp.stop_strings:
                assert decode is not None
                rows = [i for i, ok in enumerate(live) if ok]
                toks = out_tok[active[rows], : t + 1].tolist() if rows else []
                for i, seq in zip(rows, toks):
                    cut = _stop_cut(seq, sp.stop_strings, decode)
                    if cut:
                        stop_len[active_host[i]] = cut
                        live[i] = False
            if not any(live):
                break
            n_done = len(live) - sum(live)
            if n_done and n_done * 8 >= len(live):
                keep = [i for i, ok in enumerate(live) if ok]
                keep_t = torch.tensor(keep, device=dev)
                cache.select(keep_t, keep)
                active, tok = active[keep_t], tok[keep_t]
                active_host = [active_host[i] for i in keep]
                if state is not None:
                    state = state[:, keep_t]
        due = cache.due()
        if due:
            ev = cache.evict(due)
            for i in due:
                evictions[active_host[i]].append(t)
            if adapter is not None and state is not None:
                state = adapter.fold(state, ev.keys, ev.values, ev.valid, ev.rows)
        pos, slots, mask = cache.step_inputs(1)
        logits, _ = step(tok[:, None], pos, cache.kv, slots, mask, adapter, state, True)
        tok, lp = sample(logits[:, -1], sp, gen)
        n_steps += 1
        row_steps += len(active_host)

    lengths, eos_host = done_at.tolist(), set(eos.tolist())
    all_tok, all_lp = out_tok.tolist(), out_lp.tolist()
    res_tok, res_lp, res_ev, reasons = [], [], [], []
    for i in range(b):
        n = lengths[i]
        reason = "stop" if all_tok[i][n - 1] in eos_host else "length"
        if sp.stop_strings and decode is not None:
            cut = stop_len[i] or _stop_cut(all_tok[i][:n], sp.stop_strings, decode)
            if cut:
                n, reason = min(n, cut), "stop"
        res_tok.append(all_tok[i][:n])
        res_lp.append(all_lp[i][:n])
        res_ev.append([s for s in evictions[i] if s < n - 1])  # only steps that fed a kept token
        reasons.append(reason)
    stats = {
        "decode_steps": float(n_steps),
        "row_steps": float(row_steps),  # rows actually computed, summed over steps
        "tokens": float(sum(len(x) for x in res_tok)),
    }
    return Rollout(prompts, res_tok, res_lp, res_ev, reasons, stats)
