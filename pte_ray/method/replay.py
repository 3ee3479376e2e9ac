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

import torch
from torch.nn.utils.rnn import pad_sequence

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache
from pte_ray.method.config import CacheConfig
from pte_ray.method.eviction import plan_from_record
from pte_ray.method.model import Transformer
from pte_ray.method.replay_exact import exact_group
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.method.segments import Group, LossFn, Replayed, prefill, restart, score, segment

GRAD_MODES = ("truncated", "exact")


def _groups(
    prompts: list[list[int]], cfg: CacheConfig, max_new: int
) -> dict[tuple[int, int], list[int]]:
    """Rows that share a ring capacity (hence an eviction schedule) replay together."""
    out: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        key = (cfg.thought_capacity(len(p), max_new), cfg.evicted_at_once(len(p), max_new))
        out[key].append(i)
    return out


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


def _record_plan(
    rows: list[int],
    completions: list[list[int]],
    cfg: CacheConfig,
    key: tuple[int, int],
    sched: list[int],
    evicted_slots: list[list[list[int]]] | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The write table and evictions of a group under ``rkv`` (None under ``window``)."""
    made = [] if evicted_slots is None else [i for i in rows if evicted_slots[i]]
    if not cfg.rkv_on:
        if made:
            raise ValueError(
                f"row {made[0]} carries evicted_slots (made under cache.eviction=rkv) but "
                "replay runs under cache.eviction=window"
            )
        return None
    t_g = max(len(completions[i]) for i in rows)
    need = {i: [s for s in sched if s < len(completions[i]) - 1] for i in rows}
    for i in rows:
        got = len(evicted_slots[i]) if evicted_slots is not None else 0
        if got != len(need[i]):
            raise ValueError(
                f"row {i}: replayed under cache.eviction=rkv with {len(need[i])} evictions but "
                f"the rollout carries {got} evicted_slots entries (made under window, or under "
                "another cache config?)"
            )
    recs = [evicted_slots[i] if evicted_slots is not None else [] for i in rows]
    return plan_from_record(rows, key[0], key[1], sched, recs, cfg.rkv.window, t_g)


def _check_inputs(prompts: list[list[int]], completions: list[list[int]], grad_mode: str) -> None:
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"replay grad mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if any(len(c) == 0 for c in completions):
        raise ValueError("replay needs at least one completion token per row")


def _empty(completions: list[list[int]], dev: torch.device, topk: int) -> Replayed:
    """Zero log-probs and entropies [B, T_max] (and top-k [B, T_max, k] when asked for) and
    the mask of real completion tokens."""
    b, t_max = len(completions), max(len(c) for c in completions)
    lengths = torch.tensor([len(c) for c in completions], device=dev)
    mask = torch.arange(t_max, device=dev)[None] < lengths[:, None]
    out = Replayed(
        torch.zeros(b, t_max, device=dev), torch.zeros(b, t_max, device=dev), mask, 0, 0.0
    )
    if topk:
        out.topk_ids = torch.zeros(b, t_max, topk, dtype=torch.long, device=dev)
        out.topk_logprobs = torch.zeros(b, t_max, topk, device=dev)
    return out


def replay(
    model: Transformer,
    adapter: Adapter | None,
    req: DecodeRequest,
    completions: list[list[int]],
    spec: ReplaySpec = ReplaySpec(),
    loss_fn: LossFn | None = None,
) -> Replayed:
    """Teacher-forced log-probs of ``completions`` under the rollout's cache evolution.

    With ``loss_fn`` every segment's loss is back-propagated before the next segment runs
    (gradients accumulate in the adapter's ``.grad``); without it, runs without grad. The
    rollout's ``spec.eviction_steps`` are checked against the schedule replay recomputes, so a
    rollout made under another cache config fails loudly instead of training on garbage.
    ``spec.grad_mode``: ``truncated`` (design section 1) or ``exact`` (``replay_exact``:
    nothing detached; the same as truncated where a row never evicts). ``spec.evicted_slots``
    (the rollout's record, needed under ``cache.eviction=rkv``) says which slots each eviction
    freed, so the replayed cache is the rollout's; it is checked against the config.
    """
    prompts, cache_cfg = req.prompts, req.cache
    _check_inputs(prompts, completions, spec.grad_mode)
    dev = model.device
    out = _empty(completions, dev, spec.topk)
    max_new = spec.max_new_tokens or out.mask.shape[1]
    for (cap, e), rows in _groups(prompts, cache_cfg, max_new).items():
        t_g = max(len(completions[i]) for i in rows)
        sched = cache_cfg.schedule(len(prompts[rows[0]]), t_g - 1, max_new)
        if spec.eviction_steps is not None:
            _check_schedule(rows, completions, sched, spec.eviction_steps)
        plan = _record_plan(rows, completions, cache_cfg, (cap, e), sched, spec.evicted_slots)
        seqs = [torch.tensor(completions[i], dtype=torch.long) for i in rows]
        toks = pad_sequence(seqs, batch_first=True, padding_value=req.pad_id)  # [b, t_g]
        g = Group(
            toks.to(dev), torch.tensor(rows, device=dev), sched, spec.temperature, loss_fn, out
        )
        if plan is not None:
            g.write, g.plan = plan[0].to(dev), plan[1].to(dev)
        sub = DecodeRequest([prompts[i] for i in rows], cache_cfg, req.pad_id)
        with torch.set_grad_enabled(loss_fn is not None):
            _replay_group(model, adapter, sub, g, max_new, spec.grad_mode)
    out.logprobs *= out.mask
    out.entropy *= out.mask
    return out


def _replay_group(
    model: Transformer,
    adapter: Adapter | None,
    req: DecodeRequest,
    g: Group,
    max_new: int,
    grad_mode: str,
) -> None:
    """Rows that share one eviction schedule: prefill, then one forward per segment, each
    segment's loss back-propagated before the next runs (truncated back-propagation)."""
    grad = g.loss_fn is not None
    prompts = req.prompts
    cache = BoundedCache(model, [len(p) for p in prompts], req.cache, max_new, g.write)
    pre = prefill(
        model, adapter, cache, prompts, req.pad_id, cache.p_max + g.toks.shape[1] + 1, grad
    )
    if grad and g.sched and grad_mode == "exact":
        exact_group(model, adapter, cache, pre, g)
        pre.backward()
        return
    state = pre.state
    if grad:
        restart(cache, pre.kv)
    for a, z in g.bounds:
        logits, state = segment(model, adapter, cache, state, g, (a, z), carry_state=False)
        loss = score(g, pre.first, logits, a, z)
        if loss is not None and loss.requires_grad:
            loss.backward()
        if grad:
            restart(cache, pre.kv)
    if grad:
        pre.backward()
