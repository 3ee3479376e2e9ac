"""Decode loop: sampling controls, EOS and stop strings, finished rows leave the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import compact_due, finish, generate, rollout_steps
from pte_ray.method.requests import DecodeHooks, DecodeRequest
from pte_ray.method.sampling import CDF_BLOCK, inverse_cdf, sample, token_logprobs

PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)], [7, 7]]
FULL = CacheConfig(budget=None)


@pytest.fixture(scope="module")
def model(random_ckpt):
    return load_base(random_ckpt("qwen2"))


def test_greedy_equals_hf_generate(random_ckpt, model):
    hf = AutoModelForCausalLM.from_pretrained(random_ckpt("qwen2"), dtype=torch.float32)
    out = generate(
        model,
        None,
        DecodeRequest(PROMPTS[:1], FULL),
        SamplingParams(max_new_tokens=24, greedy=True),
    )
    ref = hf.generate(
        torch.tensor(PROMPTS[:1]),
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out.tokens[0] == ref[0, len(PROMPTS[0]) :].tolist()


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    sp = SamplingParams(max_new_tokens=20, temperature=1.0, seed=7)
    a = generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp)
    b = generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp)
    c = generate(
        model,
        None,
        DecodeRequest(PROMPTS, CacheConfig(budget=8)),
        SamplingParams(max_new_tokens=20, seed=8),
    )
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = generate(
        model,
        None,
        DecodeRequest(PROMPTS, CacheConfig(budget=8)),
        SamplingParams(max_new_tokens=20, greedy=True),
    )
    top1 = generate(
        model,
        None,
        DecodeRequest(PROMPTS, CacheConfig(budget=8)),
        SamplingParams(max_new_tokens=20, top_k=1, seed=1),
    )
    assert top1.tokens == greedy.tokens


def test_two_rollouts_stepped_in_turn_equal_each_alone(model):
    """What `bench rollout --ab` relies on: two rollouts interleaved step by step on one model
    (different caches, policies, lengths, one finishing early) do not touch each other."""
    sp_a = SamplingParams(max_new_tokens=30, temperature=1.0, seed=3, check_every=2)
    sp_b = SamplingParams(max_new_tokens=18, temperature=1.0, seed=4)
    rkv = CacheConfig(budget=12, eviction="rkv", rkv={"window": 4})
    eos = [generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp_a).tokens[0][5]]
    alone = [
        generate(
            model,
            None,
            DecodeRequest(PROMPTS, CacheConfig(budget=8)),
            sp_a,
            DecodeHooks(eos_ids=eos),
        )
    ]
    alone.append(generate(model, None, DecodeRequest(PROMPTS[1:], rkv), sp_b))
    assert alone[0].finish_reasons[0] == "stop"  # row 0 ends early and leaves the batch
    gens = [
        rollout_steps(
            model,
            None,
            DecodeRequest(PROMPTS, CacheConfig(budget=8)),
            sp_a,
            DecodeHooks(eos_ids=eos),
        )
    ]
    gens.append(rollout_steps(model, None, DecodeRequest(PROMPTS[1:], rkv), sp_b))
    yielded = [next(g) for g in gens] + [next(g) for g in gens]
    assert yielded == [0, 0, 1, 1]  # the prefill, then one step each
    both = [finish(g) for g in gens]
    assert both[1].evicted_slots and any(both[1].evicted_slots)  # rkv chose slots
    for got, want in zip(both, alone, strict=True):
        assert got.tokens == want.tokens and got.evicted_slots == want.evicted_slots
        assert got.logprobs == want.logprobs and got.finish_reasons == want.finish_reasons


def test_eos_finishes_rows_and_they_leave_the_batch(model):
    sp = SamplingParams(max_new_tokens=40, greedy=True, check_every=2)
    free = generate(model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp)
    # a token some row first emits at step j >= 2: that row must stop right there
    r, j = next(
        (r, j) for r, row in enumerate(free.tokens) for j in range(2, 30) if row[j] not in row[:j]
    )
    eos = free.tokens[r][j]
    out = generate(
        model, None, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp, DecodeHooks(eos_ids=(eos,))
    )
    for i, row in enumerate(free.tokens):  # greedy rows do not depend on each other
        cut = row.index(eos) + 1 if eos in row else len(row)
        assert out.tokens[i] == row[:cut]
        assert out.finish_reasons[i] == ("stop" if eos in row else "length")
        assert out.logprobs[i] == pytest.approx(free.logprobs[i][:cut], abs=1e-5)
    assert out.tokens[r] == free.tokens[r][: j + 1]
    assert out.stats["row_steps"] < len(PROMPTS) * out.stats["decode_steps"]


def test_finished_rows_are_dropped_by_the_one_eighth_rule():
    assert not compact_due(0, 1)
    assert compact_due(1, 8) and compact_due(2, 16) and compact_due(3, 3)
    assert not compact_due(1, 9) and not compact_due(1, 16)


def test_all_rows_finished_stops_early(model):
    sp = SamplingParams(max_new_tokens=64, greedy=True, check_every=4)
    free = generate(model, None, DecodeRequest(PROMPTS, FULL), sp)
    eos = tuple({row[3] for row in free.tokens})
    out = generate(model, None, DecodeRequest(PROMPTS, FULL), sp, DecodeHooks(eos_ids=eos))
    assert all(len(t) <= 4 for t in out.tokens)
    assert out.stats["decode_steps"] < 12


def test_stop_strings_cut_the_completion(random_ckpt, model):
    tok = AutoTokenizer.from_pretrained(random_ckpt("qwen2"))
    sp = SamplingParams(max_new_tokens=30, greedy=True)
    free = generate(model, None, DecodeRequest(PROMPTS[:2], FULL), sp)
    text = tok.decode(free.tokens[0])
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    sp_stop = SamplingParams(max_new_tokens=30, greedy=True, stop_strings=(stop,), check_every=4)
    out = generate(
        model, None, DecodeRequest(PROMPTS[:2], FULL), sp_stop, DecodeHooks(detokenize=tok.decode)
    )
    cut = out.tokens[0]
    assert stop in tok.decode(cut) and stop not in tok.decode(cut[:-1])
    assert out.finish_reasons[0] == "stop" and free.tokens[0][: len(cut)] == cut
    assert len(out.logprobs[0]) == len(cut)


def test_sampler_matches_filtered_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    for sp, allowed in [
        (SamplingParams(temperature=1.0), 6),
        (SamplingParams(temperature=0.5, top_k=3), 3),
        (SamplingParams(temperature=1.0, top_p=0.8), None),
    ]:
        tok, lp = sample(logits, sp, torch.rand(len(logits), 1, generator=gen))
        scaled = logits[0] / sp.temperature
        probs = torch.softmax(scaled, -1)
        if allowed is None:  # smallest prefix of sorted probs reaching top_p
            keep = (probs.cumsum(-1) - probs) <= sp.top_p
            allowed = int(keep.sum())
        want = torch.zeros(6)
        want[:allowed] = probs[:allowed] / probs[:allowed].sum()
        got = torch.bincount(tok, minlength=6).float() / tok.numel()
        assert (got - want).abs().max() < 0.015, (sp, got, want)
        assert torch.allclose(lp, torch.log_softmax(scaled, -1)[tok], atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_log_prob_is_the_learners_bit_for_bit(temperature):
    """The recorded log-prob is the learner's ``token_logprobs`` bit for bit (the log of the
    draw's own softmax would save a pass and lose exact replay by an ulp)."""
    gen = torch.Generator().manual_seed(1)
    logits = 6 * torch.randn(8, 151936, generator=gen)
    sp = SamplingParams(temperature=temperature)
    tok, lp = sample(logits, sp, torch.rand(8, 1, generator=gen))
    assert torch.equal(lp, token_logprobs(logits, tok, temperature))


@pytest.mark.parametrize("vocab", [1000, 1024, 151936])
def test_two_level_search_is_the_full_cdf_search_and_skips_zero_mass(vocab):
    """``inverse_cdf`` draws the token a full-vocabulary CDF in fp64 names for the same uniform,
    and never a token of probability zero, even at u = 0 and u = 1 (its searches stay below
    their totals)."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(4 * torch.randn(16, vocab, generator=gen), -1)
    probs[:, ::7] = 0.0  # masked tokens (top-k / top-p), block edges among them
    probs[:, -CDF_BLOCK - 3 :] = 0.0  # a tail with no mass (and padding when V % 128)
    probs[1, -CDF_BLOCK - 4] = 0.1  # row 1's last token with mass has mass to find
    u = torch.rand(16, 1, generator=gen)
    u[0], u[1] = 0.0, 1.0
    cdf = probs.double().cumsum(-1)
    want = torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True).squeeze(1)
    got = inverse_cdf(probs, u)
    assert torch.equal(got[2:], want[2:])
    assert bool((probs.gather(1, got[:, None]) > 0).all())
    assert int(got[0]) == int((probs[0] > 0).nonzero()[0])  # u = 0: the first token with mass
    assert int(got[1]) == vocab - CDF_BLOCK - 4  # u = 1: the last


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_bad_sampling_params_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("cache", [FULL, CacheConfig(budget=8)], ids=["full", "bounded"])
def test_row_seeds_sample_each_row_as_it_would_alone(model, cache):
    """With row seeds a row's tokens do not depend on its batch: the same prompt + seed gives
    the same completion alone, in another order and beside other rows (the pool may cut a
    step's groups into any chunks, or retry one on another worker)."""
    sp = SamplingParams(max_new_tokens=24, temperature=1.0, check_every=4)
    seeds = (11, 12, 13)
    together = generate(
        model, None, DecodeRequest(PROMPTS[:3], cache), sp.model_copy(update={"row_seeds": seeds})
    )
    for i in range(3):
        alone = generate(
            model,
            None,
            DecodeRequest([PROMPTS[i]], cache),
            sp.model_copy(update={"row_seeds": (seeds[i],)}),
        )
        assert alone.tokens[0] == together.tokens[i]
    flipped = generate(
        model,
        None,
        DecodeRequest(PROMPTS[2::-1][:3], cache),
        sp.model_copy(update={"row_seeds": seeds[::-1]}),
    )
    assert flipped.tokens[::-1] == together.tokens
    other = generate(
        model,
        None,
        DecodeRequest(PROMPTS[:3], cache),
        sp.model_copy(update={"row_seeds": (11, 99, 13)}),
    )
    assert other.tokens[1] != together.tokens[1] and other.tokens[0] == together.tokens[0]
    with pytest.raises(ValueError, match="2 row_seeds for 3 prompts"):
        generate(
            model,
            None,
            DecodeRequest(PROMPTS[:3], cache),
            sp.model_copy(update={"row_seeds": (1, 2)}),
        )


def test_rkv_row_alone_equals_the_row_in_a_batch(random_ckpt):
    """Under R-KV a row's choice reads only its own cache: alone or beside rows with other
    prompt lengths it evicts the same slots and samples the same tokens (fp64, so no batch-
    dependent rounding can flip a near-tie between two scores)."""
    m64 = load_base(random_ckpt("qwen2"), dtype=torch.float64)
    cache = CacheConfig(budget=24, budget_mode="total", eviction="rkv", rkv={"window": 3})
    sp = SamplingParams(max_new_tokens=32, temperature=1.0, check_every=4, row_seeds=(5, 6, 7))
    together = generate(m64, None, DecodeRequest(PROMPTS[:3], cache), sp)
    assert min(together.evictions) >= 2
    for i in range(3):
        one = sp.model_copy(update={"row_seeds": (sp.row_seeds[i],)})
        alone = generate(m64, None, DecodeRequest([PROMPTS[i]], cache), one)
        assert alone.tokens[0] == together.tokens[i]
        assert alone.evicted_slots[0] == together.evicted_slots[i]


RKV8 = CacheConfig(budget=8, eviction="rkv", rkv={"window": 4})


@pytest.mark.slow  # torch.compile of the decode step (~30 s on 2 cores, each)
@pytest.mark.parametrize("cache", [CacheConfig(budget=8), RKV8], ids=["window", "rkv"])
def test_compiled_decode_step_gives_the_eager_tokens(random_ckpt, cache):
    """rollout.compile: the engine's compiled step (static shapes) samples what eager does,
    under the bounded cache, with rows finishing and leaving the batch; under R-KV the
    compiled step also fills the query ring the choice reads."""
    from pte_ray.engines.torch_engine import TorchEngine

    path = str(random_ckpt("qwen2"))
    sp = SamplingParams(max_new_tokens=40, temperature=1.0, row_seeds=(1, 2, 3, 4))
    outs = []
    for compiled in (False, True):
        eng = TorchEngine(path, None, cache, "float32", "cpu", compiled)
        outs.append(eng.sample(PROMPTS, sp))
    assert outs[0].tokens == outs[1].tokens
    assert outs[0].eviction_steps == outs[1].eviction_steps
    assert outs[0].evicted_slots == outs[1].evicted_slots
    lp = [abs(a - b) for x, y in zip(outs[0].logprobs, outs[1].logprobs) for a, b in zip(x, y)]
    assert max(lp) < 1e-4
