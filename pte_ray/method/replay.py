"""Segment replay: recompute a rollout's log-probs with grad in O(P + budget) memory.

The completion is cut at its eviction steps. Each segment is one teacher-forced forward against
the bounded cache as it stood during the rollout; after it, the segment's loss is back-propagated
at once and the cache contents and thought state are detached (truncated back-propagation), so
nothing of an earlier segment stays in the graph. Gradient reaches the thought encoder through
the state update computed at the segment's start. Rows with the same eviction schedule (all rows
in mode ``thought``; rows of equal prompt length in mode ``total``, which includes every GRPO
group) replay together.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache, eviction_schedule
from pte_ray.method.config import CacheConfig
from pte_ray.method.model import Transformer
from pte_ray.method.sampling import entropy, token_logprobs

# loss_fn(logprobs [b, n] with grad, entropy [b, n], rows [b] (original indices), columns) -> loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], torch.Tensor]


@dataclass
class Replayed:
    logprobs: torch.Tensor  # [B, T_max] fp32, detached, 0 past each row's length
    entropy: torch.Tensor  # [B, T_max]
    mask: torch.Tensor  # [B, T_max] bool, real completion tokens
    segments: int
    loss: float  # sum of the loss_fn values (0.0 without one)


def _groups(
    prompts: list[list[int]], cfg: CacheConfig, max_new: int
) -> dict[tuple[int, int], list[int]]:
    """Rows that share a ring capacity (hence an eviction schedule) replay together."""
    e = cfg.evict_count() if cfg.bounded else 0
    out: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        cap = cfg.thought_capacity(len(p), max_new)
        out[(cap, min(e, cap))].append(i)
    return out


def replay(
    model: Transformer,
    adapter: Adapter | None,
    prompts: list[list[int]],
    completions: list[list[int]],
    cache_cfg: CacheConfig,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    eviction_steps: list[list[int]] | None = None,
    loss_fn: LossFn | None = None,
    pad_id: int = 0,
) -> Replayed:
    """Teacher-forced log-probs of ``completions`` under the rollout's cache evolution.

    With ``loss_fn`` every segment's loss is back-propagated before the next segment runs
    (gradients accumulate in the adapter's ``.grad``); without it, runs without grad.
    ``eviction_steps`` (from the rollout) are checked against the schedule replay recomputes,
    so a rollout made under another cache config fails loudly instead of training on garbage.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(len(c) == 0 for c in completions):
        raise ValueError("replay needs at least one completion token per row")
    dev = model.device
    b = len(prompts)
    t_max = max(len(c) for c in completions)
    max_new = max_new_tokens or t_max
    logp_out = torch.zeros(b, t_max, device=dev)
    ent_out = torch.zeros(b, t_max, device=dev)
    lens = torch.tensor([len(c) for c in completions], device=dev)
    mask = torch.arange(t_max, device=dev)[None] < lens[:, None]
    n_segments, total_loss = 0, 0.0
    grad = loss_fn is not None
    for (cap, e), rows in _groups(prompts, cache_cfg, max_new).items():
        t_g = max(len(completions[i]) for i in rows)
        sched = eviction_schedule(cap, e, t_g - 1)
        if eviction_steps is not None:
            for i in rows:
                want = [s for s in sched if s < len(completions[i]) - 1]
                if list(eviction_steps[i]) != want:
                    raise ValueError(
                        f"row {i}: rollout evicted at {eviction_steps[i][:8]}, replay expects "
                        f"{want[:8]}: the rollout used another cache config or prompt"
                    )
        rows_t = torch.tensor(rows, device=dev)
        toks = torch.full((len(rows), t_g), pad_id, dtype=torch.long)
        for j, i in enumerate(rows):
            toks[j, : len(completions[i])] = torch.tensor(completions[i])
        toks = toks.to(dev)
        bounds = [0, *sched, t_g - 1] if t_g > 1 else [0, 0]
        with torch.set_grad_enabled(grad):
            cache = BoundedCache(model, [len(prompts[i]) for i in rows], cache_cfg, max_new)
            state = adapter.initial_state(len(rows)) if adapter is not None else None
            ids, pos, slots, pmask = cache.prefill_inputs([prompts[i] for i in rows], pad_id)
            max_pos = cache.p_max + t_g + 1
            first, cache.kv = model(ids, pos, cache.kv, slots, pmask, adapter, state, True, max_pos)
            cache.detach_()
            for a, z in zip(bounds[:-1], bounds[1:]):
                if a in sched:
                    ev = cache.evict(cache.due())
                    if adapter is not None and state is not None:
                        state = adapter.fold(state.detach(), ev.keys, ev.values, ev.valid, ev.rows)
                parts = [first] if a == 0 else []
                if z > a:
                    pos, slots, smask = cache.step_inputs(z - a)
                    logits, cache.kv = model(
                        toks[:, a:z], pos, cache.kv, slots, smask, adapter, state
                    )
                    parts.append(logits)
                logits = torch.cat(parts, dim=1)
                lo = 0 if a == 0 else a + 1
                cols = slice(lo, z + 1)
                logp = token_logprobs(logits, toks[:, cols], temperature)
                ent = entropy(logits.detach(), temperature)
                if loss_fn is not None:
                    loss = loss_fn(logp, ent, rows_t, cols)
                    if loss.requires_grad:
                        loss.backward()
                    total_loss += float(loss.detach())
                logp_out[rows_t, cols] = logp.detach()
                ent_out[rows_t, cols] = ent
                cache.detach_()
                n_segments += 1
    return Replayed(logp_out * mask, ent_out * mask, mask, n_segments, total_loss)
