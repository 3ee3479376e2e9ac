"""Segment replay: recompute a rollout's log-probs with grad in O(P + budget) memory.

The completion is cut at its eviction steps. Each segment is one teacher-forced forward against
the bounded cache as it stood during the rollout; after it, the segment's loss is back-propagated
at once and the thought tokens it wrote and the thought state are detached (truncated
back-propagation, design section 1), so nothing of an earlier segment stays in the graph.
Gradient reaches the thought encoder through the state update computed at the segment's start.

What is never detached is what the prefill made: the prompt's keys/values (never evicted, and
changed by the adapter), the initial state S_0 (a function of the global tokens) and the first
token's logits. Every segment reads them, so they enter each segment as leaf copies whose
gradients add up, and one backward through the prefill at the end carries the sum on: the exact
gradient through the whole never-evicted context at O(P) memory, and with no eviction exactly
the gradient of one full-context backward. Rows with the same eviction schedule (all rows in
mode ``thought``; rows of equal prompt length in mode ``total``, which includes every GRPO
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


class _Prefill:
    """The prefill's outputs that every segment reads, as leaves (see the module docstring)."""

    def __init__(self, roots: list[torch.Tensor], n_kv: int, grad: bool) -> None:
        self.roots = roots
        self.leaves = [r.detach().requires_grad_(r.requires_grad) for r in roots] if grad else roots
        self.first = self.leaves[0]  # [b, 1, V] logits of the first completion token
        self.kv = self.leaves[1 : 1 + n_kv]  # per layer k, v: [b, n_kv, P, hd]
        self.state = self.leaves[1 + n_kv] if len(roots) > 1 + n_kv else None  # S_0

    def backward(self) -> None:
        """One backward through the prefill with the gradients the segments left on the leaves."""
        pairs = [(r, x.grad) for r, x in zip(self.roots, self.leaves) if x.grad is not None]
        if pairs:
            torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])


@dataclass
class _Group:
    """Rows that share one eviction schedule, on their way through replay."""

    toks: torch.Tensor  # [b, t_g] completion tokens, pad past each row's length
    rows: torch.Tensor  # [b] the rows' indices in the replay call
    sched: list[int]  # thought-token indices before whose write the rows evict
    temperature: float
    loss_fn: LossFn | None
    out: Replayed

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """Segments (a, z): segment a feeds tokens [a, z) and scores tokens (a, z] (0: [0, z])."""
        t_g = self.toks.shape[1]
        cuts = [0, *self.sched, t_g - 1] if t_g > 1 else [0, 0]
        return list(zip(cuts[:-1], cuts[1:]))


def _prefill(
    model: Transformer,
    adapter: Adapter | None,
    cache: BoundedCache,
    prompts: list[list[int]],
    pad_id: int,
    max_pos: int,
    grad: bool,
) -> _Prefill:
    """The prompt forward, with grad when training: its outputs become the segments' leaves."""
    s0 = adapter.initial_state(len(prompts)) if adapter is not None else None
    ids, pos, slots, pmask = cache.prefill_inputs(prompts, pad_id)
    first, kv = model(ids, pos, cache.kv, slots, pmask, adapter, s0, True, max_pos)
    prompt_kv = [x[:, :, : cache.p_max] for pair in kv for x in pair]
    cache.kv = kv
    return _Prefill([first, *prompt_kv] + ([s0] if s0 is not None else []), len(prompt_kv), grad)


def _segment(
    model: Transformer,
    adapter: Adapter | None,
    cache: BoundedCache,
    state: torch.Tensor | None,
    g: _Group,
    a: int,
    z: int,
    carry_state: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eviction and fold due before token a (S detached unless ``carry_state``), then one
    forward of tokens [a, z). Returns their logits [b, z - a, V] (None if none) and S."""
    if a in g.sched:
        ev = cache.evict(cache.due())
        if adapter is not None and state is not None and adapter.cfg.dynamic:
            s_in = state if carry_state else state.detach()  # the fold itself keeps its grad
            state = adapter.fold(s_in, ev.keys, ev.values, ev.valid, ev.rows)
    if z == a:
        return None, state
    pos, slots, smask = cache.step_inputs(z - a)
    logits, cache.kv = model(g.toks[:, a:z], pos, cache.kv, slots, smask, adapter, state)
    return logits, state


def _score(g: _Group, first: torch.Tensor | None, logits: torch.Tensor | None, a: int, z: int):
    """Log-probs of the segment's scored tokens into ``g.out``; returns its loss (or None)."""
    parts = [x for x in (first if a == 0 else None, logits) if x is not None]
    logits = torch.cat(parts, dim=1)
    cols = slice(0 if a == 0 else a + 1, z + 1)
    logp = token_logprobs(logits, g.toks[:, cols], g.temperature)
    ent = entropy(logits.detach(), g.temperature)
    g.out.logprobs[g.rows, cols] = logp.detach()
    g.out.entropy[g.rows, cols] = ent
    g.out.segments += 1
    if g.loss_fn is None:
        return None
    loss = g.loss_fn(logp, ent, g.rows, cols)
    g.out.loss += float(loss.detach())
    return loss


def _restart(cache: BoundedCache, prompt_kv: list[torch.Tensor]) -> None:
    """Cache for the next segment: the prompt's K/V leaves + the thought region, detached."""
    p = cache.p_max
    it = iter(prompt_kv)
    cache.kv = [
        (
            torch.cat([next(it), k[:, :, p:].detach()], 2),
            torch.cat([next(it), v[:, :, p:].detach()], 2),
        )
        for k, v in cache.kv
    ]


def _check_schedule(
    rows: list[int], completions: list[list[int]], sched: list[int], steps: list[list[int]]
) -> None:
    for i in rows:
        want = [s for s in sched if s < len(completions[i]) - 1]
        if list(steps[i]) != want:
            raise ValueError(
                f"row {i}: rollout evicted at {steps[i][:8]}, replay expects "
                f"{want[:8]}: the rollout used another cache config or prompt"
            )


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
    b, t_max = len(prompts), max(len(c) for c in completions)
    out = Replayed(
        torch.zeros(b, t_max, device=dev),
        torch.zeros(b, t_max, device=dev),
        torch.arange(t_max, device=dev)[None]
        < torch.tensor([len(c) for c in completions], device=dev)[:, None],
        0,
        0.0,
    )
    max_new = max_new_tokens or t_max
    for (cap, e), rows in _groups(prompts, cache_cfg, max_new).items():
        t_g = max(len(completions[i]) for i in rows)
        sched = eviction_schedule(cap, e, t_g - 1)
        if eviction_steps is not None:
            _check_schedule(rows, completions, sched, eviction_steps)
        toks = torch.full((len(rows), t_g), pad_id, dtype=torch.long)
        for j, i in enumerate(rows):
            toks[j, : len(completions[i])] = torch.tensor(completions[i])
        g = _Group(toks.to(dev), torch.tensor(rows, device=dev), sched, temperature, loss_fn, out)
        with torch.set_grad_enabled(loss_fn is not None):
            _replay_group(model, adapter, [prompts[i] for i in rows], g, cache_cfg, max_new, pad_id)
    out.logprobs *= out.mask
    out.entropy *= out.mask
    return out


def _replay_group(
    model: Transformer,
    adapter: Adapter | None,
    prompts: list[list[int]],
    g: _Group,
    cache_cfg: CacheConfig,
    max_new: int,
    pad_id: int,
) -> None:
    """Rows that share one eviction schedule: prefill, then one forward per segment, each
    segment's loss back-propagated before the next runs (truncated back-propagation)."""
    grad = g.loss_fn is not None
    cache = BoundedCache(model, [len(p) for p in prompts], cache_cfg, max_new)
    pre = _prefill(model, adapter, cache, prompts, pad_id, cache.p_max + g.toks.shape[1] + 1, grad)
    state = pre.state
    if grad:
        _restart(cache, pre.kv)
    for a, z in g.bounds:
        logits, state = _segment(model, adapter, cache, state, g, a, z, carry_state=False)
        loss = _score(g, pre.first, logits, a, z)
        if loss is not None and loss.requires_grad:
            loss.backward()
        if grad:
            _restart(cache, pre.kv)
    if grad:
        pre.backward()
