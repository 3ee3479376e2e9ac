"""Continuous batching: with fewer rows than prompts, a row whose request ended takes the next
queued one. Every request must decode as it does alone (its own prompt, clock, ring, evictions,
thought state S; fp64, row seeds), replay must reproduce it, and a refilled row must never read
what the row's previous request left there (checked by poisoning a finished row before reuse)."""

from __future__ import annotations

import pytest
import torch

import pte_ray.method.decode as decode
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeHooks, DecodeRequest, ReplaySpec

# two GRPO-like groups, lone prompts of other lengths; limits that end rows at different steps
PROMPTS = [
    [5, 9, 11],
    [5, 9, 11],
    [20 + i for i in range(9)],
    [7, 8],
    [7, 8],
    [40 + i for i in range(14)],
]
LIMITS = [9, 31, 17, 40, 6, 23]
SEEDS = [11, 12, 13, 14, 15, 16]
CONFIGS = {
    "window": CacheConfig(budget=10),
    "window-total": CacheConfig(budget=26, budget_mode="total"),
    "rkv": CacheConfig(budget=12, eviction="rkv", rkv={"window": 4}),
}


def _sp(rows: list[int]) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max(LIMITS),
        row_seeds=[SEEDS[i] for i in rows],
        row_max_new_tokens=[LIMITS[i] for i in rows],
        check_every=4,
    )


def _alone(model, adapter, cache: CacheConfig):
    return [
        generate(model, adapter, DecodeRequest([PROMPTS[i]], cache), _sp([i])) for i in range(6)
    ]


def _poison_before_admit(monkeypatch) -> list[tuple[list[int], bool]]:
    """Wrap the real admit: fill the finished rows' K/V (shared prompts: the pool entries no
    other row reads), query ring and S with NaN first."""
    real, seen = decode.admit, []

    def poisoned(run, live, rows, reqs):
        r, cache = torch.tensor(rows), run.cache
        for k, v in cache.ring if cache.ring is not None else cache.kv:
            k[r] = float("nan")
            v[r] = float("nan")
        if cache.ring is not None:  # shared prompts: the entries only finished rows read
            others = [i for i in range(cache.batch) if i not in rows]
            gone = sorted(set(cache.owner[r].tolist()) - set(cache.owner[others].tolist()))
            for layer in cache.kv:
                layer.pk[:, gone] = float("nan")
                layer.pv[:, gone] = float("nan")
        for q in run.cache.q_obs or []:
            q[r] = float("nan")
        if live.state is not None:
            live.state[:, r] = float("nan")
        seen.append((list(rows), cache.ring is not None))
        return real(run, live, rows, reqs)

    monkeypatch.setattr(decode, "admit", poisoned)
    return seen


@pytest.mark.parametrize("share", [True, False], ids=["shared-prompts", "prompt-per-row"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_refilled_request_decodes_as_it_does_alone(
    random_ckpt, noisy_adapter, monkeypatch, name, share
):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    adapter, cache = noisy_adapter(model), CONFIGS[name]
    alone = _alone(model, adapter, cache)
    admitted = _poison_before_admit(monkeypatch)
    req = DecodeRequest(PROMPTS, cache, batch_rows=2, share_prompts=share)
    out = generate(model, adapter, req, _sp(list(range(6))))
    assert out.stats["refills"] == 4 and sum(len(r) for r, _ in admitted) == 4
    assert all(shared == share for _, shared in admitted)  # the 2 first rows share a prompt
    for i, one in enumerate(alone):
        assert out.tokens[i] == one.tokens[0], f"request {i}"
        diff = (torch.tensor(out.logprobs[i]) - torch.tensor(one.logprobs[0])).abs().max()
        assert diff < 1e-12, f"request {i}: {diff}"
        assert out.eviction_steps[i] == one.eviction_steps[0]
        assert out.evicted_slots[i] == one.evicted_slots[0]
        assert out.finish_reasons[i] == one.finish_reasons[0]
    assert sum(len(e) for e in out.eviction_steps[2:]) >= 4  # refilled rows evicted too
    n = max(LIMITS)
    spec = ReplaySpec.of(out, n)
    res = replay(model, adapter, DecodeRequest(PROMPTS, cache), out.tokens, spec)
    for i, lp in enumerate(out.logprobs):
        assert (res.logprobs[i, : len(lp)] - torch.tensor(lp)).abs().max() < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: refill on GPU")
@pytest.mark.parametrize("name", ["window", "rkv"])
def test_refill_on_cuda_decodes_each_request_as_alone(random_ckpt, noisy_adapter, name):
    """The same on the GPU (fp32: the same tokens, log-probs within 1e-5)."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float32, device="cuda")
    adapter = noisy_adapter(model)
    cache = CONFIGS[name]
    alone = _alone(model, adapter, cache)
    out = generate(model, adapter, DecodeRequest(PROMPTS, cache, batch_rows=2), _sp(list(range(6))))
    assert out.stats["refills"] == 4
    for i, one in enumerate(alone):
        assert out.tokens[i] == one.tokens[0], f"request {i}"
        diff = (torch.tensor(out.logprobs[i]) - torch.tensor(one.logprobs[0])).abs().max()
        assert diff < 1e-5, f"request {i}: {diff}"


def test_a_full_batch_runs_fewer_steps_than_a_shrinking_one(random_ckpt):
    """While requests wait, no row idles: 6 requests on 2 rows take fewer steps than 3 batches
    of 2 run one after another, and every step computes both rows."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    cache = CONFIGS["window"]
    out = generate(model, None, DecodeRequest(PROMPTS, cache, batch_rows=2), _sp(list(range(6))))
    apart = [
        generate(model, None, DecodeRequest(PROMPTS[i : i + 2], cache), _sp([i, i + 1]))
        for i in range(0, 6, 2)
    ]
    assert out.stats["decode_steps"] < sum(g.stats["decode_steps"] for g in apart)
    assert out.stats["row_steps"] >= 2 * out.stats["decode_steps"] - max(LIMITS)
    assert [len(t) for t in out.tokens] == LIMITS  # row limits, no EOS in these ids


def test_batch_rows_is_checked():
    with pytest.raises(ValueError, match="batch_rows=-1"):
        DecodeRequest([[1]], CacheConfig(), batch_rows=-1)


def test_a_queued_prompt_too_long_for_the_cache_names_its_row(random_ckpt):
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    cache = CacheConfig(budget=12, budget_mode="total")
    prompts = [[1, 2], [3, 4], [5] * 12]
    with pytest.raises(ValueError, match="row 2"):
        generate(model, None, DecodeRequest(prompts, cache, batch_rows=1), SamplingParams())


def test_rollout_batch_rows_reaches_the_engine(random_ckpt):
    """rollout.batch_rows: the rollout engine the workers build refills rows, and samples what
    it samples with every row at once (row seeds)."""
    from pte_ray.config import load_config
    from pte_ray.engines.choose import rollout_engine

    path = str(random_ckpt("qwen2"))
    sp = _sp(list(range(6)))
    outs = []
    for rows in (0, 2):
        cfg = load_config(None, ["adapter.method=pte", "cache.budget=10"])
        cfg.rollout.batch_rows = rows
        outs.append(rollout_engine(cfg, path, "cpu").sample(PROMPTS, sp))
    assert outs[1].stats["refills"] == 4 and outs[0].stats["refills"] == 0
    assert outs[0].tokens == outs[1].tokens and outs[0].eviction_steps == outs[1].eviction_steps
    lp = [abs(a - b) for x, y in zip(outs[0].logprobs, outs[1].logprobs) for a, b in zip(x, y)]
    assert max(lp) < 1e-4


def _text(ids: list[int]) -> str:
    """A detokenizer for the random model's ids: one letter each."""
    return "".join(chr(97 + i % 26) for i in ids)


def test_stop_strings_end_refilled_requests_as_they_end_alone(random_ckpt):
    """A row stopped by a stop string is refilled, and every request is cut where it is cut
    alone (the stop strings: two requests' own text, taken midway from a run without them)."""
    model = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    cache = CONFIGS["window"]
    free = _alone(model, None, cache)
    stops = (_text(free[1].tokens[0][10:13]), _text(free[3].tokens[0][20:23]))
    hooks = DecodeHooks(detokenize=_text)

    def sp(rows: list[int]) -> SamplingParams:
        return _sp(rows).model_copy(update={"stop_strings": stops})

    alone = [
        generate(model, None, DecodeRequest([PROMPTS[i]], cache), sp([i]), hooks) for i in range(6)
    ]
    ends = [(len(a.tokens[0]), a.finish_reasons[0]) for a in alone]
    assert sum(n < LIMITS[i] and r == "stop" for i, (n, r) in enumerate(ends)) >= 2, ends
    out = generate(
        model, None, DecodeRequest(PROMPTS, cache, batch_rows=2), sp(list(range(6))), hooks
    )
    assert out.stats["refills"] == 4
    for i, one in enumerate(alone):
        assert out.tokens[i] == one.tokens[0], f"request {i}"
        assert out.finish_reasons[i] == one.finish_reasons[0], f"request {i}"
