"""Replay's gradients against exact fp64 references (values alone can hide a wrong gradient).

(a) With no eviction, segment replay must give exactly the gradient of one plain full-context
forward + backward: nothing is truncated then. (b) With evictions, it must equal a token-by-token
implementation of the design's truncated back-propagation: at each eviction the thought tokens
in the cache and the state S are detached, the fold itself keeps its grad, and the prompt's
keys/values (never evicted) and S_0 of the static ``global_only`` keep theirs.
"""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache, left_pad
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig
from pte_ray.method.model import Placement
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.method.sampling import token_logprobs

PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)]]
COMPLETIONS = [list(range(50, 90)), list(range(60, 85)), list(range(100, 137))]


def _setup(random_ckpt, method: str):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter = Adapter(
        model.args, AdapterConfig(method=method, rank=4, global_tokens=8), dtype=torch.float64
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # A off zero, so every parameter gets a gradient
        for name, p in adapter.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1)
    weights = torch.rand(len(PROMPTS), max(map(len, COMPLETIONS)), generator=gen).double()
    for i, c in enumerate(COMPLETIONS):
        weights[i, len(c) :] = 0.0  # a loss on real tokens only, as GRPO's
    return model, adapter, weights


def _record(cfg: CacheConfig, keep_first: bool, seed: int = 5) -> list[list[list[int]]] | None:
    """A random valid R-KV record per row (None under window): at each eviction, E random
    slots among those holding tokens older than the window; ``keep_first`` spares token 0 to
    the end, so exact replay must rebuild a ring whose oldest survivor is arbitrarily old."""
    if not cfg.rkv_on:
        return None
    gen, e, w, out = torch.Generator().manual_seed(seed), cfg.evict_count(), cfg.rkv.window, []
    for p, c in zip(PROMPTS, COMPLETIONS, strict=True):
        cap = cfg.thought_capacity(len(p), 64)
        write, rec = list(range(cap)) + [0] * 64, []
        for step in cfg.schedule(len(p), len(c) - 1, 64):
            holder = {write[t]: t for t in range(step)}
            cand = [s for s, t in holder.items() if t < step - w and not (keep_first and t == 0)]
            pick = sorted(cand[j] for j in torch.randperm(len(cand), generator=gen)[:e].tolist())
            rec.append(pick)
            write[step : step + e] = pick
        out.append(rec)
    return out


def _grads(adapter: Adapter) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}
    adapter.zero_grad(set_to_none=True)
    return out


def _replay_grads(
    model, adapter, weights, cfg, mode="truncated", record=None
) -> dict[str, torch.Tensor]:
    def loss_fn(lp, ent, rows, cols):
        return -(lp * weights[rows][:, cols]).sum()

    replay(
        model,
        adapter,
        DecodeRequest(PROMPTS, cfg),
        COMPLETIONS,
        ReplaySpec(temperature=1.0, max_new_tokens=64, evicted_slots=record, grad_mode=mode),
        loss_fn,
    )
    return _grads(adapter)


def _full_context_grads(model, adapter, weights) -> dict[str, torch.Tensor]:
    """One teacher-forced forward over prompt + completion per row, one backward."""
    total = 0.0
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        ids = torch.tensor([p + c[:-1]])
        n = ids.shape[1]
        pos = torch.arange(n)[None]  # slot t holds position t: a full cache of exactly n slots
        at = Placement(pos, pos, torch.ones(n, n, dtype=torch.bool).tril()[None])
        state = adapter.initial_state(1)
        model.reserve_positions(n)
        logits, _ = model(ids, at, model.new_kv(1, n), adapter, state)
        lp = token_logprobs(logits[:, len(p) - 1 :], torch.tensor([c]), 1.0)
        total = total - (lp * weights[i, : len(c)]).sum()
    total.backward()
    return _grads(adapter)


def _token_by_token_grads(
    model, adapter, weights, cfg, truncate=True, record=None
) -> dict[str, torch.Tensor]:
    """Bounded-cache decode one token at a time, one backward at the end: the design's truncated
    back-propagation, or with ``truncate=False`` nothing detached (the exact gradient). Under
    R-KV each eviction frees the slots ``record`` names."""
    total = 0.0
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        chosen = iter(record[i]) if record is not None else None
        cache = BoundedCache(model, [len(p)], cfg, 64)
        state = adapter.initial_state(1)
        model.reserve_positions(cache.p_max + 64 + 1)
        ids, at = left_pad([p], 0), cache.prompt_placement()
        logits, cache.kv = model(ids, at, cache.kv, adapter, state, True)
        total = total - weights[i, 0] * token_logprobs(logits, torch.tensor([[c[0]]]), 1.0)[0, 0]
        for t in range(1, len(c)):
            due = cache.due()
            if due and truncate:
                pm = cache.p_max  # earlier thought tokens leave the graph; the prompt stays
                cache.kv = [
                    (
                        torch.cat([k[:, :, :pm], k[:, :, pm:].detach()], 2),
                        torch.cat([v[:, :, :pm], v[:, :, pm:].detach()], 2),
                    )
                    for k, v in cache.kv
                ]
            if due:
                pick = torch.tensor([next(chosen)]) if chosen is not None else None
                ev = cache.evict(due, pick)
                if adapter.cfg.dynamic:
                    s_in = state.detach() if truncate else state
                    state = adapter.fold(s_in, ev.keys, ev.values, ev.valid, ev.rows)
            tok = torch.tensor([[c[t - 1]]])
            logits, cache.kv = model(tok, cache.step_inputs(1), cache.kv, adapter, state)
            lp = token_logprobs(logits, torch.tensor([[c[t]]]), 1.0)[0, 0]
            total = total - weights[i, t] * lp
    total.backward()
    return _grads(adapter)


def _assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        assert g.abs().max() > 0, f"{name}: zero reference gradient"
        rel = (got[name] - g).norm() / g.norm()
        assert rel < 1e-10, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("pte", CacheConfig(budget=64)),  # bounded, but nothing is ever evicted here
        ("global_only", CacheConfig(budget=64)),
        ("lora_c", CacheConfig(budget=64)),
        ("lora", CacheConfig(budget=None)),
    ],
)
def test_no_eviction_replay_equals_one_full_context_backward(random_ckpt, method, cfg):
    model, adapter, weights = _setup(random_ckpt, method)
    _assert_equal(
        _replay_grads(model, adapter, weights, cfg), _full_context_grads(model, adapter, weights)
    )


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("pte", CacheConfig(budget=8)),
        ("pte", CacheConfig(budget=24, budget_mode="total")),  # rows evict at different steps
        ("global_only", CacheConfig(budget=8)),
        ("lora_c", CacheConfig(budget=8, evict_ratio=0.5)),
    ],
)
def test_replay_equals_token_by_token_truncated_backprop(random_ckpt, method, cfg):
    model, adapter, weights = _setup(random_ckpt, method)
    want = _token_by_token_grads(model, adapter, weights, cfg)
    _assert_equal(_replay_grads(model, adapter, weights, cfg), want)


RKV = {"eviction": "rkv", "rkv": {"window": 3}}
EVICTING = [
    ("pte", CacheConfig(budget=8)),  # 3 rows, 3 prompt lengths, 4-8 evictions each
    ("pte", CacheConfig(budget=24, budget_mode="total")),  # rows evict at different steps
    ("global_only", CacheConfig(budget=8)),
    ("lora_c", CacheConfig(budget=8, evict_ratio=0.5)),
    ("pte", CacheConfig(budget=8, **RKV)),  # slots from a random R-KV record
    ("pte", CacheConfig(budget=24, budget_mode="total", **RKV)),
    ("lora_c", CacheConfig(budget=10, evict_ratio=0.5, **RKV)),
]
IDS = ["pte", "pte-total", "global_only", "lora_c", "pte-rkv", "pte-total-rkv", "lora_c-rkv"]


@pytest.mark.parametrize(("method", "cfg"), EVICTING[4:], ids=IDS[4:])
@pytest.mark.parametrize("keep_first", [False, True], ids=["random", "token0-kept"])
def test_rkv_replay_equals_token_by_token_truncated_backprop(random_ckpt, method, cfg, keep_first):
    model, adapter, weights = _setup(random_ckpt, method)
    record = _record(cfg, keep_first)
    want = _token_by_token_grads(model, adapter, weights, cfg, record=record)
    _assert_equal(_replay_grads(model, adapter, weights, cfg, record=record), want)


EXACT = [(m, c, False) for m, c in EVICTING] + [(m, c, True) for m, c in EVICTING[4:]]


@pytest.mark.parametrize(
    ("method", "cfg", "keep_first"), EXACT, ids=IDS + [f"{i}-token0-kept" for i in IDS[4:]]
)
def test_exact_replay_equals_token_by_token_with_nothing_detached(
    random_ckpt, method, cfg, keep_first
):
    model, adapter, weights = _setup(random_ckpt, method)
    record = _record(cfg, keep_first)
    want = _token_by_token_grads(model, adapter, weights, cfg, truncate=False, record=record)
    truncated = _replay_grads(model, adapter, weights, cfg, record=record)
    _assert_equal(_replay_grads(model, adapter, weights, cfg, "exact", record), want)
    # the two modes differ where there are evictions: a truncated result cannot pass above
    assert any((truncated[n] - g).norm() > 1e-3 * g.norm() for n, g in want.items())


@pytest.mark.parametrize("method", ["pte", "global_only", "lora_c"])
def test_exact_equals_truncated_equals_full_context_without_eviction(random_ckpt, method):
    model, adapter, weights = _setup(random_ckpt, method)
    cfg = CacheConfig(budget=64)
    want = _full_context_grads(model, adapter, weights)
    _assert_equal(_replay_grads(model, adapter, weights, cfg, "exact"), want)
    _assert_equal(_replay_grads(model, adapter, weights, cfg, "truncated"), want)


def test_unknown_replay_grad_mode_is_named(random_ckpt):
    model, adapter, weights = _setup(random_ckpt, "pte")
    with pytest.raises(ValueError, match="grad mode.*'exactly'"):
        _replay_grads(model, adapter, weights, CacheConfig(budget=8), "exactly")


def test_plain_lora_has_no_state_and_global_only_keeps_s0(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    lora = Adapter(model.args, AdapterConfig(method="lora_c", rank=4, global_tokens=8))
    assert lora.encoder is None and lora.initial_state(2) is None
    assert lora.layers[0].A["q"].shape == (model.args.q_dim, 4)  # d_out x r, not d_out x G
    glob = Adapter(model.args, AdapterConfig(method="global_only", rank=4, global_tokens=8))
    s0 = glob.initial_state(2)
    k = torch.randn(model.args.n_layers, 2, 3, model.args.kv_dim)
    every = torch.ones(2, 3, dtype=torch.bool)
    folded = glob.fold(s0, k, k, every, torch.ones(2, dtype=torch.bool))
    assert torch.equal(folded, s0)
