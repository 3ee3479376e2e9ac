"""Our decoder over HF weights equals transformers' own forward (fp32, full cache)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from pte_ray.method.cache import BoundedCache, left_pad
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import CacheConfig
from pte_ray.method.model import ROPE_MIN_POSITIONS

ARCHS = ["qwen2", "qwen3", "llama"]


def _prefill(model, prompts, max_new=8):
    cache = BoundedCache(model, [len(p) for p in prompts], CacheConfig(budget=None), max_new)
    ids, at = left_pad(prompts, pad_id=0), cache.prompt_placement()
    model.reserve_positions(cache.p_max + max_new + 1)
    with torch.no_grad():
        logits, _ = model(ids, at, cache.kv)
    return cache, logits


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_and_decode_match_hf(random_ckpt, arch):
    path = random_ckpt(arch)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = load_base(path, dtype=torch.float32)
    assert model.args.head_dim >= 32
    torch.manual_seed(0)
    seq = torch.randint(3, model.args.vocab_size, (2, 20))
    with torch.no_grad():
        ref = hf(seq).logits
    cache, logits = _prefill(model, seq[:, :12].tolist())
    assert (logits - ref[:, :12]).abs().max() <= 1e-4
    # decode the rest one token at a time against the full cache
    for t in range(12, 20):
        at = cache.step_inputs(1)
        with torch.no_grad():
            step, _ = model(seq[:, t : t + 1], at, cache.kv)
        assert (step[:, 0] - ref[:, t]).abs().max() <= 1e-4, f"{arch} step {t}"


def test_left_padding_is_never_attended(random_ckpt):
    """A short prompt batched with a long one gives the same logits as alone."""
    model = load_base(random_ckpt("qwen2"))
    short, long = [5, 6, 7], list(range(10, 30))
    _, alone = _prefill(model, [short])
    _, batched = _prefill(model, [short, long])
    assert (alone[0, -3:] - batched[0, -3:]).abs().max() <= 1e-5


def test_rope_tables_are_sized_up_front_not_in_forward(random_ckpt):
    model = load_base(random_ckpt("qwen2"))
    n = model._cos.shape[0]
    assert n >= ROPE_MIN_POSITIONS  # short calls need no reserve
    cache, _ = _prefill(model, [[1, 2, 3]])  # reserves 12 positions: the tables stay as they are
    assert model._cos.shape[0] == n
    at = replace(cache.step_inputs(1), pos=torch.tensor([[n]]))  # one past the tables
    with torch.no_grad(), pytest.raises(IndexError):
        model(torch.tensor([[4]]), at, cache.kv)
    assert model._cos.shape[0] == n  # forward only indexes the tables, it never grows them
    model.reserve_positions(n + 1)
    assert model._cos.shape[0] >= n + 1
    with torch.no_grad():
        logits, _ = model(torch.tensor([[4]]), at, cache.kv)
    assert logits.shape == (1, 1, model.args.vocab_size)


def test_unsupported_architecture_is_named(random_ckpt, tmp_path):
    src = random_ckpt("qwen2")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gpt2"):
        load_base(tmp_path)


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_base(tmp_path / "nope")


def test_bf16_checkpoint_loads_in_its_dtype(random_ckpt, tmp_path):
    hf = AutoModelForCausalLM.from_pretrained(random_ckpt("llama"), dtype=torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = load_base(tmp_path)
    assert model.dtype == torch.bfloat16
    _, logits = _prefill(model, [[1, 2, 3, 4]])
    with torch.no_grad():
        ref = hf(torch.tensor([[1, 2, 3, 4]])).logits.float()
    assert (logits - ref).abs().max() <= 0.1  # bf16 rounding only


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_gradients_match_hf_in_fp64(random_ckpt, arch):
    """The gradient through q/k/v, RoPE (q and k rotated as one tensor) and q/k norms equals
    transformers' own autograd in fp64 (equal logits could hide a wrong backward)."""
    path = random_ckpt(arch)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    model = load_base(path, dtype=torch.float64)
    torch.manual_seed(0)
    seq = torch.randint(3, model.args.vocab_size, (2, 10))
    weight = torch.randn(2, 10, model.args.vocab_size, dtype=torch.float64)
    ours = [model.layers[i] for i in (0, len(model.layers) - 1)]
    theirs = [hf.model.layers[i].self_attn for i in (0, len(model.layers) - 1)]
    for blk in ours:
        blk.w["qkv"].requires_grad_(True)
        if model.args.qk_norm:
            blk.q_norm.requires_grad_(True)
            blk.k_norm.requires_grad_(True)
    (hf(seq).logits * weight).sum().backward()
    cache = BoundedCache(model, [10, 10], CacheConfig(budget=None), 1)
    logits, _ = model(seq, cache.prompt_placement(), cache.kv)
    (logits.double() * weight).sum().backward()
    for blk, att in zip(ours, theirs, strict=True):
        want = torch.cat([att.q_proj.weight.grad, att.k_proj.weight.grad, att.v_proj.weight.grad])
        pairs = [(blk.w["qkv"].grad, want)]
        if model.args.qk_norm:
            pairs += [(blk.q_norm.grad, att.q_norm.weight.grad)]
            pairs += [(blk.k_norm.grad, att.k_norm.weight.grad)]
        for got, ref in pairs:  # both models take RMSNorm's statistics in fp32, as HF does:
            assert ref.abs().max() > 0  # ~1e-7 of fp32 rounding, where a wrong backward is O(1)
            assert float((got - ref).norm() / ref.norm()) < 1e-6
