"""The pieces every replay mode is built from: prefill, one segment, its score.

A rollout's completion is cut at its eviction steps into segments; segment (a, z) evicts what is
due before token a, folds it into the thought state, then feeds tokens [a, z) in one
teacher-forced forward against the bounded cache as it stood during the rollout. What the
prefill made (the prompt's keys/values, never evicted; S_0; the first token's logits) enters
every segment as leaf copies whose gradients add up, and one backward through the prefill at the
end carries the sum on. The replay modes (``replay.py``: truncated; ``replay_exact.py``: exact)
differ only in what they keep of a segment's output for the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache, left_pad
from pte_ray.method.model import Transformer
from pte_ray.method.sampling import entropy, token_logprobs

# loss_fn(logprobs [b, n] with grad, entropy [b, n], rows [b] (original indices), columns) -> loss;
# a loss_fn with ``needs_logits = True`` is also given ``logits=`` [b, n, V] (with grad).
LossFn = Callable[..., torch.Tensor]


@dataclass
class Replayed:
    logprobs: torch.Tensor  # [B, T_max] fp32, detached, 0 past each row's length
    entropy: torch.Tensor  # [B, T_max]
    mask: torch.Tensor  # [B, T_max] bool, real completion tokens
    segments: int
    loss: float  # sum of the loss_fn values (0.0 without one)
    topk_ids: torch.Tensor | None = None  # [B, T_max, k] the k likeliest tokens per position
    topk_logprobs: torch.Tensor | None = None  # [B, T_max, k] their log-probs (at T)


class Prefill:
    """The prefill's outputs that every segment reads, as leaves ."""

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
class Group:
    """Rows that share one eviction schedule, on their way through replay."""

    toks: torch.Tensor  # [b, t_g] completion tokens, pad past each row's length
    rows: torch.Tensor  # [b] the rows' indices in the replay call
    sched: list[int]  # thought-token indices before whose write the rows evict
    temperature: float
    loss_fn: LossFn | None
    out: Replayed
    write: torch.Tensor | None = None  # [b, t_g] ring offset of each thought token (rkv)
    plan: torch.Tensor | None = None  # [b, K, E] ring offsets freed at each eviction (rkv)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """Segments (a, z): segment a feeds tokens [a, z) and scores tokens (a, z] (0: [0, z])."""
        t_g = self.toks.shape[1]
        cuts = [0, *self.sched, t_g - 1] if t_g > 1 else [0, 0]
        return list(zip(cuts[:-1], cuts[1:]))


def prefill(
    model: Transformer,
    adapter: Adapter | None,
    cache: BoundedCache,
    prompts: list[list[int]],
    pad_id: int,
    max_pos: int,
    grad: bool,
) -> Prefill:
    """The prompt forward, with grad when training: its outputs become the segments' leaves."""
    s0 = adapter.initial_state(len(prompts)) if adapter is not None else None
    ids, at = left_pad(prompts, pad_id).to(model.device), cache.prompt_placement()
    model.reserve_positions(max_pos)  # RoPE sized once, before the first forward
    first, kv = model(ids, at, cache.kv, adapter, s0, True)
    prompt_kv = [x[:, :, : cache.p_max] for pair in kv for x in pair]
    cache.kv = kv
    return Prefill([first, *prompt_kv] + ([s0] if s0 is not None else []), len(prompt_kv), grad)


def segment(
    model: Transformer,
    adapter: Adapter | None,
    cache: BoundedCache,
    state: torch.Tensor | None,
    g: Group,
    span: tuple[int, int],
    carry_state: bool,
    logits: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eviction and fold due before token a (S detached unless ``carry_state``), then one
    forward of tokens [a, z) (``span``). Returns their logits [b, z - a, V] (None if none, or
    if not ``logits``: only the cache is updated) and S."""
    a, z = span
    if a in g.sched:
        chosen = g.plan[:, g.sched.index(a)] if g.plan is not None else None
        ev = cache.evict(cache.due(), chosen)
        if adapter is not None and state is not None and adapter.cfg.dynamic:
            s_in = state if carry_state else state.detach()  # the fold itself keeps its grad
            state = adapter.fold(s_in, ev.keys, ev.values, ev.valid, ev.rows)
    if z == a:
        return None, state
    at = cache.step_inputs(z - a)
    out, cache.kv = model(g.toks[:, a:z], at, cache.kv, adapter, state, head=logits)
    return out, state


def score(g: Group, first: torch.Tensor | None, logits: torch.Tensor | None, a: int, z: int):
    """Log-probs of the segment's scored tokens into ``g.out``; returns its loss (or None)."""
    parts = [x for x in (first if a == 0 else None, logits) if x is not None]
    logits = torch.cat(parts, dim=1)
    cols = slice(0 if a == 0 else a + 1, z + 1)
    logp = token_logprobs(logits, g.toks[:, cols], g.temperature)
    ent = entropy(logits.detach(), g.temperature)
    g.out.logprobs[g.rows, cols] = logp.detach()
    g.out.entropy[g.rows, cols] = ent
    g.out.segments += 1
    if g.out.topk_ids is not None:  # a teacher's top-k per position (distillation)
        with torch.no_grad():
            top = torch.log_softmax(logits.detach() / g.temperature, dim=-1)
            vals, ids = top.topk(g.out.topk_ids.shape[-1], dim=-1)
            g.out.topk_ids[g.rows, cols], g.out.topk_logprobs[g.rows, cols] = ids, vals
    if g.loss_fn is None:
        return None
    if getattr(g.loss_fn, "needs_logits", False):
        loss = g.loss_fn(logp, ent, g.rows, cols, logits=logits)
    else:
        loss = g.loss_fn(logp, ent, g.rows, cols)
    g.out.loss += float(loss.detach())
    return loss


def restart(cache: BoundedCache, prompt_kv: list[torch.Tensor]) -> None:
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
