"""R-KV's choice against a slow loop reference, and the record replay rebuilds the cache from.

The reference spells out the formulas of ``pte_ray/method/eviction.py``'s docstring one row,
layer, head and token at a time in fp64, over tokens in position order; the batched scorer
must evict the same set even when the slot pool's layout is shuffled and rows have different
prompt paddings and ring contents.
"""

from __future__ import annotations

import math

import pytest
import torch

from pte_ray.method.config import CacheConfig, RKVConfig
from pte_ray.method.eviction import plan_from_record, rkv_choose, rkv_scores

D = torch.float64


def _ref_row(keys, queries, valid, held, p_max, t, cfg: RKVConfig, n_evict: int) -> list[int]:
    """One row: keys per layer [n_kv, S, hd], queries [H, w, hd], valid [S], held [C]."""
    c = held.shape[0]
    res = [s for s in range(c) if held[s] >= 0 and valid[p_max + s]]
    toks = sorted(res, key=lambda s: int(held[s]))  # resident slots in position order
    cand = [s for s in toks if held[s] < t - cfg.window]
    window = [s for s in toks if held[s] >= t - cfg.window]
    seen = [j for j in range(valid.shape[0]) if valid[j] and (j < p_max or j - p_max not in window)]
    score = {s: 0.0 for s in cand}
    lam = cfg.mix_lambda
    for k, q in zip(keys, queries, strict=True):
        n_kv, h = k.shape[0], q.shape[0]
        for kh in range(n_kv):
            # importance: per window query, max over the group's heads of the logits, softmax
            imp = {j: 0.0 for j in seen}
            for wq in range(q.shape[1]):
                lg = {
                    j: max(
                        float(q[hh, wq] @ k[kh, j])
                        for hh in range(kh * h // n_kv, (kh + 1) * h // n_kv)
                    )
                    / math.sqrt(k.shape[2])
                    for j in seen
                }
                z = sum(math.exp(v) for v in lg.values())
                for j in seen:
                    imp[j] += math.exp(lg[j]) / z / q.shape[1]
            half = cfg.kernel // 2
            pooled = {}
            for n, s in enumerate(cand):  # pool over neighbouring candidates, position order
                pooled[s] = max(
                    imp[p_max + cand[m]]
                    for m in range(max(0, n - half), min(len(cand), n + half + 1))
                )
            # redundancy over resident tokens
            kn = {s: k[kh, p_max + s] / (k[kh, p_max + s].norm() + 1e-8) for s in toks}
            sim = {(i, j): float(kn[i] @ kn[j]) if i != j else 0.0 for i in toks for j in toks}
            for i in toks:
                over = [j for j in toks if j != i and sim[i, j] > cfg.threshold]
                if over:
                    sim[i, over[-1]] = 0.0  # the newest similar token is spared
            mean = {j: sum(sim[i, j] for i in toks) / len(toks) for j in toks}
            zr = sum(math.exp(v) for v in mean.values())
            for s in cand:
                score[s] += (lam * pooled[s] - (1 - lam) * math.exp(mean[s]) / zr) / n_kv
    ranked = sorted(cand, key=lambda s: (score[s], int(held[s])))
    return sorted(ranked[:n_evict])


def _pool(b=3, layers=2, h=4, n_kv=2, hd=8, p_max=5, caps=(12, 10, 12), t=20, gen=None):
    """Random keys/queries and a full ring per row whose tokens sit in a shuffled slot layout."""
    c = max(caps)
    s = p_max + c
    keys = [torch.randn(b, n_kv, s, hd, dtype=D, generator=gen) for _ in range(layers)]
    queries = [torch.randn(b, h, 4, hd, dtype=D, generator=gen) for _ in range(layers)]
    valid = torch.zeros(b, s, dtype=torch.bool)
    held = torch.full((b, c), -1, dtype=torch.long)
    for i, cap in enumerate(caps):
        valid[i, p_max - 2 - i : p_max] = True  # prompts of different lengths
        valid[i, p_max : p_max + cap] = True
        held[i, torch.randperm(cap, generator=gen)] = torch.arange(t - cap, t)
    return keys, queries, valid, held, p_max, t


@pytest.mark.parametrize("lam", [0.1, 0.0, 1.0, 0.5])
def test_scores_match_slow_reference(lam):
    gen = torch.Generator().manual_seed(0)
    cfg = RKVConfig(window=4, mix_lambda=lam, kernel=3)
    keys, queries, valid, held, p_max, t = _pool(gen=gen)
    # plant a duplicate so the neighbour rule has something to do
    for k in keys:
        k[0, :, p_max + 3] = k[0, :, p_max + 5] * 1.5
    got = rkv_choose(keys, queries, valid, held, p_max, t, 3, cfg)
    for i in range(held.shape[0]):
        want = _ref_row(
            [k[i] for k in keys], [q[i] for q in queries], valid[i], held[i], p_max, t, cfg, 3
        )
        assert got[i].tolist() == want, f"row {i}"


def test_choice_ignores_the_slot_layout():
    gen = torch.Generator().manual_seed(1)
    cfg = RKVConfig(window=4)
    keys, queries, valid, held, p_max, t = _pool(gen=gen, caps=(12, 12, 12))
    got = rkv_choose(keys, queries, valid, held, p_max, t, 3, cfg)
    perm = torch.randperm(12, generator=gen)  # move every token to another slot
    keys2 = [k.clone() for k in keys]
    for k2, k in zip(keys2, keys, strict=True):
        k2[:, :, p_max + perm] = k[:, :, p_max : p_max + 12]
    held2 = held.clone()
    held2[:, perm] = held
    got2 = rkv_choose(keys2, queries, valid, held2, p_max, t, 3, cfg)
    tok = held.gather(1, got).sort().values
    assert torch.equal(tok, held2.gather(1, got2).sort().values)


def test_never_evicts_the_window_or_an_empty_slot():
    gen = torch.Generator().manual_seed(2)
    cfg = RKVConfig(window=4)
    keys, queries, valid, held, p_max, t = _pool(gen=gen)
    score, order = rkv_scores(keys, queries, valid, held, p_max, t, cfg)
    got = rkv_choose(keys, queries, valid, held, p_max, t, 6, cfg)
    toks = held.gather(1, got)
    assert (toks >= 0).all() and (toks < t - 4).all()
    assert torch.isinf(score.gather(1, order.argsort(1))[held < 0]).all()


def test_importance_keeps_a_token_the_window_attends_to():
    gen = torch.Generator().manual_seed(3)
    cfg = RKVConfig(window=4, mix_lambda=1.0, kernel=1)
    keys, queries, valid, held, p_max, t = _pool(gen=gen, caps=(12, 12, 12))
    slot = int((held[0] == t - 10).nonzero())
    for k, q in zip(keys, queries, strict=True):
        k[0, :, p_max + slot] = q[0, ::2, 0] * 50  # every query head aligned with this key
    got = rkv_choose(keys, queries, valid, held, p_max, t, 7, cfg)
    assert slot not in got[0].tolist()


def test_redundancy_evicts_the_oldest_copy():
    """Three copies of one key: each token spares its newest similar neighbour, so the newest
    copy carries no redundancy and the oldest the most."""
    gen = torch.Generator().manual_seed(4)
    cfg = RKVConfig(window=2, mix_lambda=0.0)
    keys, queries, valid, held, p_max, t = _pool(gen=gen, caps=(12, 12, 12), hd=32)
    old, mid, new = (int((held[0] == t - d).nonzero()) for d in (11, 8, 5))
    for k in keys:
        k[0, :, p_max + old] = k[0, :, p_max + new]
        k[0, :, p_max + mid] = k[0, :, p_max + new] * 2.0
    got = rkv_choose(keys, queries, valid, held, p_max, t, 1, cfg)
    assert got[0].tolist() == [old]


def test_record_plan_and_its_errors():
    cap, e, w = 8, 2, 4
    sched = [8, 10, 12]
    write, plan = plan_from_record([0], cap, e, sched, [[[0, 3], [1, 2]]], w, 14)
    assert plan.tolist() == [[[0, 3], [1, 2], [4, 5]]]  # the last: the oldest (tokens 4, 5)
    assert write[0, 8:12].tolist() == [0, 3, 1, 2]
    with pytest.raises(ValueError, match="row 5, eviction 0.*2 distinct"):
        plan_from_record([5], cap, e, sched, [[[0, 0]]], w, 14)
    with pytest.raises(ValueError, match="row 0, eviction 1.*window=4"):
        plan_from_record([0], cap, e, sched, [[[0, 3], [6, 7]]], w, 14)  # tokens 6, 7: newest
    with pytest.raises(ValueError, match="outside the ring of 8"):
        plan_from_record([0], cap, e, sched, [[[0, 9]]], w, 14)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eviction": "lru"}, "eviction"),
        ({"eviction": "rkv", "rkv": {"mix_lambda": -0.1}}, "mix_lambda"),
        ({"eviction": "rkv", "rkv": {"mix_lambda": 1.5}}, "mix_lambda"),
        ({"eviction": "rkv", "rkv": {"kernel": 4}}, "kernel"),
        ({"eviction": "rkv", "budget": 8}, "cache.rkv.window=8 must be smaller"),
        ({"eviction": "rkv", "budget": 16, "evict_ratio": 1.0}, "cache.rkv.window"),
    ],
)
def test_bad_rkv_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheConfig(**kwargs)


def test_long_prompt_in_total_mode_names_the_settings():
    cfg = CacheConfig(budget=32, budget_mode="total", eviction="rkv", rkv={"window": 8})
    assert cfg.thought_capacity(16, 64) == 16
    with pytest.raises(ValueError, match="cache.rkv.window=8"):
        cfg.thought_capacity(20, 64)
