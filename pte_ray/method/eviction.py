"""R-KV eviction (arXiv 2505.24133): which thought tokens a full ring gives up.

R-KV keeps what the newest queries attend to (importance) and drops what repeats (redundancy):
``score = lambda * importance - (1 - lambda) * redundancy``, lowest scores go. Importance: the
softmax attention the ``window`` newest queries pay each older key (max over the query heads of
a KV head, mean over the window queries), max-pooled along positions. Redundancy: the key cosine
similarity of a token to the other resident tokens, each token's newest similar neighbour
(cosine > threshold) exempted so the latest copy of a repetition survives, softmaxed over
tokens. Read from the paper and its code, written here for our static slot pool.

Deliberate departures from the reference code, each for a reason:
- one kept set per row, shared by every layer and head (scores: mean over KV heads, sum over
  layers), as R-KV's vLLM/SGLang ports do: one write slot per token keeps one ``Placement`` for
  all layers, the record is E ints per eviction, and PTE folds one token set per eviction;
- pooling and "newest neighbour" act in position order (the reference acts in storage order,
  which after a compaction is score order);
- with no neighbour over the threshold nothing is exempted (the reference zeroes column 0);
- the window newest thought tokens and the prompt are never evicted.
Ties are broken toward the older token by a stable sort, the same on CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pte_ray.method.config import RKVConfig

NEG = float("-inf")


def _importance(q: torch.Tensor, k: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Attention mass [B, n_kv, S] of keys ``k`` [B, n_kv, S, hd] seen by the queries ``q``
    [B, H, w, hd] over the keys ``keep`` [B, S] allows (max over a KV head's query group)."""
    b, h, w, hd = q.shape
    n_kv = k.shape[1]
    qg = (q.float() / math.sqrt(hd)).view(b, n_kv, h // n_kv, w, hd)  # scale the smaller side
    logits = torch.einsum("bngwd,bnsd->bngws", qg, k.float())
    logits = logits.amax(dim=2).masked_fill(~keep[:, None, None, :], NEG)
    return torch.softmax(logits, dim=-1).mean(dim=2)


def _redundancy(k: torch.Tensor, res: torch.Tensor, threshold: float) -> torch.Tensor:
    """Redundancy [B, n_kv, C] of ring keys ``k`` [B, n_kv, C, hd] given **newest first**, over
    the resident tokens ``res`` [B, C] (others: 0 similarity, excluded from the softmax).

    Written for few passes over the [C, C] similarities (the cost of a choice): empty slots get
    a zero key so their similarities are 0 without a mask; newest first, a token's newest
    similar neighbour is the first one over the threshold (a max over a byte view); it is
    taken out of the column sums instead of zeroed in the matrix.
    """
    kf = k.float()
    kn = kf / (kf.norm(dim=-1, keepdim=True) + 1e-8) * res[:, None, :, None]
    sim = kn @ kn.transpose(-1, -2)  # [B, n_kv, C, C], 0 wherever a slot is empty
    sim.diagonal(dim1=-2, dim2=-1).zero_()
    over = sim > threshold
    if threshold < 0:  # zeros (empty slots, the diagonal) would pass a negative threshold
        eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=k.device)
        over &= (res[:, :, None] & res[:, None, :] & ~eye)[:, None]
    u = over.view(torch.uint8)
    # [B, n_kv, C, 1]: the newest j over it (0 if none); max returns the first of equal values
    found, j = u.max(dim=-1, keepdim=True)
    spared = sim.gather(-1, j) * found
    colsum = sim.sum(dim=-2).scatter_add(-1, j.squeeze(-1), -spared.squeeze(-1))
    n_res = res.sum(dim=-1).clamp(min=1)[:, None, None]
    mean = colsum / n_res
    return torch.softmax(mean.masked_fill(~res[:, None], NEG), dim=-1).nan_to_num(0.0)


def _ring_rows(k: torch.Tensor, order: torch.Tensor, p_max: int) -> torch.Tensor:
    """The ring keys [B, n, C, hd] of ``k`` [B, n, S, hd] in ``order`` [B, C]: one row copy
    per key (``gather`` with an index per element costs several times more)."""
    b, n, s, hd = k.shape
    base = torch.arange(b * n, device=k.device).view(b, n, 1) * s + p_max
    rows = (base + order[:, None, :]).reshape(-1)
    return k.reshape(b * n * s, hd).index_select(0, rows).view(b, n, -1, hd)


def rkv_scores(
    keys: list[torch.Tensor],
    queries: list[torch.Tensor],
    valid: torch.Tensor,
    held: torch.Tensor,
    p_max: int,
    t: int,
    cfg: RKVConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [B, C] of the ring's tokens in position order (+inf: not a candidate) and that
    order [B, C] (ring offsets, empty slots last).

    ``keys`` per layer [B, n_kv, S, hd] (all slots), ``queries`` per layer [B, H, w, hd] (the
    window's queries), ``valid`` [B, S] live slots, ``held`` [B, C] thought index in each ring
    slot (-1: never written), ``t`` the thought tokens written so far.
    """
    ring_valid = valid[:, p_max:]
    res = (held >= 0) & ring_valid
    window = res & (held >= t - cfg.window)
    cand = res & ~window
    big = torch.iinfo(torch.long).max
    order = torch.argsort(torch.where(res, held, big), dim=-1, stable=True)  # [B, C]
    res_o, cand_o = res.gather(1, order), cand.gather(1, order)
    not_cand = ~cand_o[:, None]
    keep = valid.clone()
    keep[:, p_max:] &= ~window
    total = torch.zeros(held.shape, dtype=torch.float32, device=held.device)
    lam = cfg.mix_lambda
    newest, res_newest = order.flip(-1), res_o.flip(-1)
    for k, q in zip(keys, queries, strict=True):
        n_kv = k.shape[1]
        idx = order[:, None, :].expand(-1, n_kv, -1)
        imp = _importance(q, k, keep)[..., p_max:].gather(2, idx).masked_fill(not_cand, NEG)
        imp = F.max_pool1d(imp, cfg.kernel, stride=1, padding=cfg.kernel // 2)
        red = _redundancy(_ring_rows(k, newest, p_max), res_newest, cfg.threshold)
        red = red.flip(-1)
        total += (lam * imp.masked_fill(not_cand, 0.0) - (1 - lam) * red).mean(dim=1)
    return total.masked_fill(~cand_o, float("inf")), order


def rkv_choose(
    keys: list[torch.Tensor],
    queries: list[torch.Tensor],
    valid: torch.Tensor,
    held: torch.Tensor,
    p_max: int,
    t: int,
    n_evict: int,
    cfg: RKVConfig,
) -> torch.Tensor:
    """The ``n_evict`` ring offsets [B, E] each row gives up, sorted ascending."""
    score, order = rkv_scores(keys, queries, valid, held, p_max, t, cfg)
    lowest = torch.sort(score, dim=-1, stable=True).indices[:, :n_evict]  # older wins ties
    return torch.sort(order.gather(1, lowest), dim=-1).values


def _simulate(
    row: int,
    cap: int,
    n_evict: int,
    sched: list[int],
    chosen: list[list[int]],
    window: int,
    t_end: int,
) -> tuple[list[int], list[list[int]]]:
    """Replay one row's slot pool from its record on the host: the write table [t_end] and the
    offsets of every eviction in ``sched`` (those past the record, where the row has ended,
    take the oldest non-window tokens: their log-probs are masked). Checks the record."""
    write = list(range(cap)) + [0] * max(0, t_end - cap)
    holder = [-1] * cap
    plan: list[list[int]] = []
    nxt = 0
    for k, step in enumerate(sched):
        for t in range(nxt, step):
            holder[write[t]] = t
        nxt = step
        if k < len(chosen):
            offs = sorted(chosen[k])
            where = f"row {row}, eviction {k} (before thought token {step})"
            if len(offs) != n_evict or len(set(offs)) != n_evict:
                raise ValueError(f"{where}: needs {n_evict} distinct ring offsets, got {offs[:8]}")
            bad = [s for s in offs if not 0 <= s < cap or not 0 <= holder[s] < step - window]
            if bad:
                raise ValueError(
                    f"{where}: offsets {bad[:8]} are outside the ring of {cap}, empty or in "
                    f"the cache.rkv.window={window} newest tokens: a record of another config"
                )
        else:
            old = sorted((h, s) for s, h in enumerate(holder) if 0 <= h < step - window)
            offs = sorted(s for _, s in old[:n_evict])
        plan.append(offs)
        write[step : step + n_evict] = offs
        write = write[:t_end] + [0] * max(0, t_end - len(write))
    return write[:t_end], plan


def plan_from_record(
    rows: list[int],
    cap: int,
    n_evict: int,
    sched: list[int],
    records: list[list[list[int]]],
    window: int,
    t_end: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The write table [b, t_end] and the evictions [b, K, E] of a replay group (rows sharing
    ``sched``) from the rollout's record, checked: a record that could not have been made
    under this config is an error naming the row and the eviction."""
    writes, plans = [], []
    for i, rec in zip(rows, records, strict=True):
        w, p = _simulate(i, cap, n_evict, sched, rec, window, t_end)
        writes.append(w)
        plans.append(p)
    plan = torch.tensor(plans, dtype=torch.long).view(len(rows), len(sched), n_evict)
    return torch.tensor(writes, dtype=torch.long), plan
