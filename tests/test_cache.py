"""The bounded cache against a slow reference: HF's model with a DynamicCache edited by hand.

The reference keeps the prompt plus the kept thought tokens in HF's own cache, drops the oldest
ones by hand when the budget is reached, and feeds each token at its original position
(P_i + t). Our batched rollout (left-padded, mixed prompt lengths) must give the same log-prob
at every step, and evict at the same steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.requests import DecodeHooks, DecodeRequest

PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24, 25, 26], [40 + i for i in range(12)]]


def _reference(hf, prompt, completion, cfg: CacheConfig, temp: float):
    """Per-step log-probs and eviction steps of one row, one token at a time."""
    p = len(prompt)
    cap = cfg.budget if cfg.budget_mode == "thought" else cfg.budget - p
    n_evict = min(math.ceil(cfg.evict_ratio * cfg.budget), cap)
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt]), past_key_values=cache).logits[0, -1]
        lps = [torch.log_softmax(logits / temp, -1)[completion[0]].item()]
        held, evictions = 0, []
        for t, tok in enumerate(completion[:-1]):
            if held == cap:
                evictions.append(t)
                for layer in cache.layers:  # oldest thought tokens sit right after the prompt
                    layer.keys = torch.cat(
                        [layer.keys[:, :, :p], layer.keys[:, :, p + n_evict :]], 2
                    )
                    layer.values = torch.cat(
                        [layer.values[:, :, :p], layer.values[:, :, p + n_evict :]], 2
                    )
                held -= n_evict
            n = cache.layers[0].keys.shape[2]
            out = hf(
                torch.tensor([[tok]]),
                past_key_values=cache,
                position_ids=torch.tensor([[p + t]]),
                attention_mask=torch.ones(1, n + 1, dtype=torch.long),
            )
            held += 1
            lps.append(torch.log_softmax(out.logits[0, -1] / temp, -1)[completion[t + 1]].item())
    return lps, evictions


CONFIGS = [
    CacheConfig(budget=8, budget_mode="thought", evict_ratio=0.25),
    CacheConfig(budget=24, budget_mode="total", evict_ratio=0.25),
    CacheConfig(budget=6, budget_mode="thought", evict_ratio=1.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["thought", "total-mixed-lengths", "evict-all"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_rollout_matches_hand_edited_hf_cache(random_ckpt, cfg, greedy):
    path = random_ckpt("qwen2")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = load_base(path, dtype=torch.float32)
    sp = SamplingParams(max_new_tokens=40, temperature=0.7, greedy=greedy, seed=3)
    out = generate(model, None, DecodeRequest(PROMPTS, cfg), sp, DecodeHooks(eos_ids=()))
    for i, prompt in enumerate(PROMPTS):
        assert len(out.tokens[i]) == 40
        ref_lp, ref_ev = _reference(hf, prompt, out.tokens[i], cfg, sp.logprob_temperature)
        assert out.eviction_steps[i] == ref_ev and len(ref_ev) >= 2
        diff = (torch.tensor(out.logprobs[i]) - torch.tensor(ref_lp)).abs()
        assert diff.max() <= 1e-4, f"row {i}: max diff {diff.max():.2e} at {int(diff.argmax())}"
    if cfg.budget_mode == "total":  # rows with other prompt lengths evict at other steps
        assert len({out.eviction_steps[i][0] for i in range(len(PROMPTS))}) == len(PROMPTS)


def test_full_cache_never_evicts(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    out = generate(
        model,
        None,
        DecodeRequest(PROMPTS, CacheConfig(budget=None)),
        SamplingParams(max_new_tokens=30, greedy=True),
    )
    assert out.evictions == [0, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": -3}, "budget"),
        ({"evict_ratio": 0.0}, "evict_ratio"),
        ({"evict_ratio": 1.5}, "evict_ratio"),
        ({"budget_mode": "tokens"}, "budget_mode"),
    ],
)
def test_bad_cache_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheConfig(**kwargs)


def test_prompt_longer_than_total_budget_is_named(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    with pytest.raises(ValueError, match="row 2: prompt of 12 tokens does not fit cache.budget=12"):
        generate(
            model,
            None,
            DecodeRequest(PROMPTS, CacheConfig(budget=12, budget_mode="total")),
            SamplingParams(max_new_tokens=4),
        )


def test_empty_prompt_is_named(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    with pytest.raises(ValueError, match="empty prompt"):
        generate(
            model,
            None,
            DecodeRequest([[1, 2], []], CacheConfig()),
            SamplingParams(max_new_tokens=4),
        )


def test_evict_count_has_no_float_error():
    # 0.07 * 100 == 7.000000000000001 in binary floating point; ceil made it 8
    assert CacheConfig(budget=100, evict_ratio=0.07).evict_count() == 7
    assert CacheConfig(budget=64, evict_ratio=0.25).evict_count() == 16
    assert CacheConfig(budget=10, evict_ratio=0.33).evict_count() == 4
    assert CacheConfig(budget=3, evict_ratio=0.01).evict_count() == 1


def _hf_queries(hf, hidden: tuple, pos: int) -> list[torch.Tensor]:
    """Every layer's query [H, hd] of the last token, post-RoPE, from HF's own modules."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    out = []
    for layer, h in zip(hf.model.layers, hidden, strict=False):
        att = layer.self_attn
        x = layer.input_layernorm(h[:, -1:])
        q = att.q_proj(x).view(1, 1, -1, att.head_dim).transpose(1, 2)  # [1, H, 1, hd]
        cos, sin = hf.model.rotary_emb(x, torch.tensor([[pos]]))
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        out.append(q[0, :, 0])
    return out


def _reference_rkv(hf, prompt, completion, record, cfg: CacheConfig, temp: float):
    """Per-step log-probs of one row under R-KV, one token at a time, in HF's cache.

    At each eviction the reference scores its own cache (HF's keys, queries rebuilt from HF's
    layers) with ``rkv_choose`` and drops the chosen thought tokens from every layer; the
    rollout's record must name the same tokens. (A *fresh* HF forward on the kept tokens would
    not be a reference: their K/V saw context since evicted; the hand-edited cache is.)
    """
    from pte_ray.method.eviction import rkv_choose

    p, w = len(prompt), cfg.rkv.window
    cap = cfg.budget if cfg.budget_mode == "thought" else cfg.budget - p
    n_evict = cfg.evict_count()
    cache, held, queries = DynamicCache(config=hf.config), [], []
    lps, evictions, chosen, oldest = [], [], [], []
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), past_key_values=cache)
        lps.append(torch.log_softmax(out.logits[0, -1] / temp, -1)[completion[0]].item())
        for t, tok in enumerate(completion[:-1]):
            if len(held) == cap:
                keys = [layer.keys for layer in cache.layers]
                q = [
                    torch.stack([qs[li] for qs in queries[-w:]], 1)[None] for li in range(len(keys))
                ]
                every = torch.ones(1, keys[0].shape[2], dtype=torch.bool)
                held_t = torch.tensor([held])
                pick = rkv_choose(keys, q, every, held_t, p, t, n_evict, cfg.rkv)[0].tolist()
                evictions.append(t)
                chosen.append(sorted(held[j] for j in pick))
                oldest.append(held[:n_evict])
                kept = list(range(p)) + [p + j for j in range(len(held)) if j not in pick]
                for layer in cache.layers:
                    layer.keys = layer.keys[:, :, kept]
                    layer.values = layer.values[:, :, kept]
                held = [h for j, h in enumerate(held) if j not in pick]
            n = cache.layers[0].keys.shape[2]
            out = hf(
                torch.tensor([[tok]]),
                past_key_values=cache,
                output_hidden_states=True,
                position_ids=torch.tensor([[p + t]]),
                attention_mask=torch.ones(1, n + 1, dtype=torch.long),
            )
            held.append(t)
            queries.append(_hf_queries(hf, out.hidden_states, p + t))
            lps.append(torch.log_softmax(out.logits[0, -1] / temp, -1)[completion[t + 1]].item())
    return lps, evictions, chosen, oldest


def _record_tokens(record: list[list[int]], steps: list[int], cap: int) -> list[list[int]]:
    """The thought indices a row's record evicted (its write table rebuilt on the host)."""
    write, out = list(range(cap)) + [0] * 4096, []
    for step, offs in zip(steps, record, strict=True):
        holder = {write[t]: t for t in range(step)}
        out.append(sorted(holder[s] for s in offs))
        write[step : step + len(offs)] = offs
    return out


RKV_CONFIGS = [
    CacheConfig(budget=16, eviction="rkv", rkv={"window": 4}),
    CacheConfig(budget=32, budget_mode="total", eviction="rkv", rkv={"window": 4}),
]


@pytest.mark.parametrize("cfg", RKV_CONFIGS, ids=["thought", "total-mixed-lengths"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_rkv_rollout_matches_hf_cache_with_the_same_choices(random_ckpt, cfg, greedy):
    path = random_ckpt("qwen2")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    model = load_base(path, dtype=torch.float64)
    sp = SamplingParams(max_new_tokens=48, temperature=0.7, greedy=greedy, seed=3)
    out = generate(model, None, DecodeRequest(PROMPTS, cfg), sp, DecodeHooks(eos_ids=()))
    differs = 0
    for i, prompt in enumerate(PROMPTS):
        lp, ev, chosen, oldest = _reference_rkv(
            hf, prompt, out.tokens[i], out.evicted_slots[i], cfg, sp.logprob_temperature
        )
        assert out.eviction_steps[i] == ev and len(ev) >= 2
        cap = cfg.thought_capacity(len(prompt), 48)
        assert _record_tokens(out.evicted_slots[i], ev, cap) == chosen, f"row {i}"
        assert all(max(c) < s - 4 for c, s in zip(chosen, ev, strict=True))  # window kept
        differs += sum(c != o for c, o in zip(chosen, oldest, strict=True))
        diff = (torch.tensor(out.logprobs[i]) - torch.tensor(lp)).abs()
        assert diff.max() <= 1e-6, f"row {i}: max diff {diff.max():.2e} at {int(diff.argmax())}"
    assert differs >= 1  # R-KV chose other tokens than the window would have, somewhere
