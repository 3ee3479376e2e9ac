"""Eval-time ablations of the thought state: ``fold`` runs a pte adapter as global_only (S never
updated from evicted tokens), ``state`` zeroes S (the LoRA adds nothing: the base model)."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.requests import DecodeRequest

PROMPTS = [[5, 9, 11, 12], [20, 21, 22, 23, 24, 25], [40, 41, 42]]


def _adapter(model, method: str, state: dict | None = None) -> Adapter:
    ad = Adapter(model.args, AdapterConfig(method=method, rank=4, global_tokens=8, seed=2))
    if state is not None:
        ad.load_state_dict(state)
        return ad
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in ad.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return ad


def _run(model, adapter) -> tuple[list[list[int]], list[list[float]]]:
    sp = SamplingParams(max_new_tokens=40, greedy=True)
    out = generate(model, adapter, DecodeRequest(PROMPTS, CacheConfig(budget=8)), sp)
    assert all(len(e) >= 3 for e in out.eviction_steps)  # the fold has something to fold
    return out.tokens, out.logprobs


def test_fold_ablation_is_global_only_and_state_ablation_is_base(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    pte = _adapter(model, "pte")
    glob = _adapter(model, "global_only", pte.state_dict())
    live = _run(model, pte)
    as_global = _run(model, glob)
    assert live[1] != as_global[1], "the fold changes nothing here: the test could not fail"
    pte.set_ablation("fold")
    assert _run(model, pte) == as_global
    pte.set_ablation("state")
    base = _run(model, None)
    assert live[1] != base[1]
    assert _run(model, pte) == base
    pte.set_ablation(None)
    assert _run(model, pte) == live


def test_ablation_needs_a_thought_state(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    with pytest.raises(ValueError, match="lora_c has no thought state"):
        _adapter(model, "lora_c").set_ablation("fold")
    with pytest.raises(ValueError, match="must be one of"):
        _adapter(model, "pte").set_ablation("encoder")
