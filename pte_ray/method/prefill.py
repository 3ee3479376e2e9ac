"""Prompt forwards: the first batch's prefill, and a refilled row's (continuous batching).

A GRPO group's G rows share one prompt and start from the same S_0, so their prompt keys/values
and first logits are the same: each distinct prompt runs through the model once and is copied
to its rows. A row whose request ended takes the next queued one (``admit``): rows of one call
end at different lengths, and the decode step reads every weight once whatever the batch, so a
full batch turns the same step into more tokens than the shrunken one dropping rows leaves. The
new request's prompt is prefilled on its own buffers (prompt slots only), copied into the row,
and the rest of the row is zeroed: its clock, ring, eviction bookkeeping and S start afresh
(``BoundedCache.admit``), so it decodes as it would alone and never reads what the row's
previous request left there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache
from pte_ray.method.config import SamplingParams
from pte_ray.method.model import KV, Placement, Transformer
from pte_ray.method.outputs import Live, Outputs
from pte_ray.method.prompt_slots import left_pad, prompt_place
from pte_ray.method.sampling import Noise, sample


@dataclass
class Run:
    """One generate call's fixed parts, which every refill needs."""

    model: Transformer
    adapter: Adapter | None
    cache: BoundedCache
    out: Outputs
    sp: SamplingParams
    noise: Noise
    eos: torch.Tensor
    prompts: list[list[int]]
    pad_id: int
    share: bool


def prompt_forward(
    model: Transformer,
    adapter: Adapter | None,
    kv: list[KV],
    ids: torch.Tensor,
    at: Placement,
    state: torch.Tensor | None,
    of: list[int] | None,
) -> torch.Tensor:
    """Logits [b, P, V] of the prompts ``ids`` [b, P], their keys/values written to ``kv``;
    ``of`` (each row's first twin, ``twins``): each distinct prompt runs once, copied."""
    if of is None or len(set(of)) == len(of):
        return model(ids, at, kv, adapter, state, True)[0]
    dev, firsts = model.device, sorted(set(of))
    reps = torch.tensor(firsts, device=dev)
    back = torch.tensor([firsts.index(i) for i in of], device=dev)  # B x groups: small
    sub = Placement(at.pos[reps], at.slots[reps], at.mask[reps])
    fresh = [(k[reps], v[reps]) for k, v in kv]  # written by the forward
    s = state[:, reps] if state is not None else None
    logits, fresh = model(ids[reps], sub, fresh, adapter, s, True)
    for (k, v), (k1, v1) in zip(kv, fresh, strict=True):
        k.copy_(k1[back])
        v.copy_(v1[back])
    return logits[back]


def _padded(prompts: list[list[int]], pad_id: int, p_max: int) -> torch.Tensor:
    """[b, p_max] left-padded ids (the prompt region is sized for every prompt of the call)."""
    ids = left_pad(prompts, pad_id)
    return F.pad(ids, (p_max - ids.shape[1], 0), value=pad_id)


def twins(prompts: list[list[int]], share: bool) -> list[int] | None:
    """Each row's first row with the same prompt (None: no sharing)."""
    if not share:
        return None
    first: dict[tuple[int, ...], int] = {}
    return [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]


def distinct_forward(
    run: Run, prompts: list[list[int]], s0: torch.Tensor | None
) -> tuple[torch.Tensor, list[KV], list[int]]:
    """Shared storage: each distinct prompt's forward on buffers of the prompt slots only.
    Returns the logits [b, P, V] of every one of ``prompts``, the keys/values (one row per
    distinct prompt) and each prompt's row in them."""
    model, p_max = run.model, run.cache.p_max
    of = twins(prompts, True)
    firsts = sorted(set(of))
    ids = _padded([prompts[i] for i in firsts], run.pad_id, p_max).to(model.device)
    plen = torch.tensor([len(prompts[i]) for i in firsts], device=model.device)
    kv = model.new_kv(len(firsts), p_max)
    s = s0[:, : len(firsts)] if s0 is not None else None  # S_0: the same for every row
    logits, kv = model(ids, prompt_place(plen, p_max, p_max), kv, run.adapter, s, True)
    back = [firsts.index(i) for i in of]
    return logits[torch.tensor(back, device=model.device)], kv, back


def prefill(run: Run, n_rows: int, horizon: int) -> Live:
    """The first ``n_rows`` prompts' forward (RoPE sized once for ``horizon`` thought tokens)
    and their first tokens."""
    model, adapter, cache = run.model, run.adapter, run.cache
    prompts = run.prompts[:n_rows]
    state = adapter.initial_state(n_rows) if adapter is not None else None
    state = state.contiguous() if state is not None else None
    model.reserve_positions(cache.p_max + horizon + 1)
    if cache.ring is not None:
        logits, kv, src = distinct_forward(run, prompts, state)
        cache.put_prompts(list(range(n_rows)), prompts, kv, src)
    else:
        ids = _padded(prompts, run.pad_id, cache.p_max).to(model.device)
        at, of = cache.prompt_placement(), twins(prompts, run.share)
        logits = prompt_forward(model, adapter, cache.kv, ids, at, state, of)
    idx = torch.arange(n_rows, device=model.device)
    tok, lp = sample(logits[:, -1], run.sp, run.noise.draw(idx, 0))
    return Live(idx, list(range(n_rows)), tok, lp, state)


def admit(run: Run, live: Live, rows: list[int], reqs: list[int]) -> Live:
    """Rows ``rows`` (finished) take requests ``reqs``: prefill, copy in, first token."""
    model, adapter, cache, dev = run.model, run.adapter, run.cache, run.model.device
    prompts = [run.prompts[r] for r in reqs]
    plen = torch.tensor([len(p) for p in prompts], device=dev)
    s0 = adapter.initial_state(len(rows)).contiguous() if adapter is not None else None
    src: list[int] = []
    if cache.ring is not None:
        logits, kv, src = distinct_forward(run, prompts, s0)
    else:
        kv = model.new_kv(len(rows), cache.p_max)
        ids = _padded(prompts, run.pad_id, cache.p_max).to(dev)
        at = prompt_place(plen, cache.p_max, cache.p_max)
        logits = prompt_forward(model, adapter, kv, ids, at, s0, twins(prompts, run.share))
    req_t = torch.tensor(reqs, device=dev)
    tok, lp = sample(logits[:, -1], run.sp, run.noise.draw(req_t, 0))
    cache.admit(rows, plen.tolist(), kv, prompts, src)
    run.out.record(req_t, tok, lp, 0, run.eos)
    r = torch.tensor(rows, device=dev)
    idx, tok_all, lp_all = live.idx.clone(), live.tok.clone(), live.lp.clone()
    idx[r], tok_all[r], lp_all[r] = req_t, tok, lp
    state = live.state
    if state is not None and s0 is not None:
        state = state.clone()
        state[:, r] = s0
    host = list(live.rows)
    for i, q in zip(rows, reqs, strict=True):
        host[i] = q
    return Live(idx, host, tok_all, lp_all, state)
