"""Thought encoder + dynamic LoRA: starts at the base model, only the adapter trains."""

from __future__ import annotations

import pytest
import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.cache import BoundedCache, left_pad
from pte_ray.method.checkpoint import load_adapter, load_base, save_adapter
from pte_ray.method.config import TARGETS, AdapterConfig, CacheConfig
from pte_ray.method.layout import ModelArgs
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.method.thought_encoder import rms_normalise


def _logits(model, adapter, prompts):
    cache = BoundedCache(model, [len(p) for p in prompts], CacheConfig(budget=None), 4)
    ids, at = left_pad(prompts, 0), cache.prompt_placement()
    state = adapter.initial_state(len(prompts)) if adapter is not None else None
    with torch.no_grad():
        out, _ = model(ids, at, cache.kv, adapter, state)
    return out


@pytest.mark.parametrize("method", ["lora", "lora_c", "global_only", "pte"])
def test_zero_init_A_starts_at_the_base_model(random_ckpt, method):
    model = load_base(random_ckpt("qwen2"))
    adapter = Adapter(model.args, AdapterConfig(method=method, rank=4, global_tokens=8))
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6]]
    assert torch.equal(_logits(model, adapter, prompts), _logits(model, None, prompts))


def test_state_is_normalised_and_folds_evictions():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 8, 4) * 7
    assert torch.allclose(rms_normalise(x).pow(2).mean(dim=(-2, -1)), torch.ones(3, 2), atol=1e-4)


ARGS = ModelArgs(
    model_type="qwen2",
    vocab_size=64,
    dim=64,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    intermediate=96,
    norm_eps=1e-6,
    qkv_bias=True,
    qk_norm=False,
    tie_embeddings=True,
)  # a model's shape without its weights: the adapter needs no more


def test_config_targets_are_the_layout_parts():
    """``AdapterConfig`` validates target names against what model and adapter fuse."""
    assert TARGETS == tuple(t for g in ARGS.layout.groups for t in g.targets)


def _eviction(b: int, e: int, seed: int = 0):
    """Evicted keys/values [L, b, e, d_kv] and a validity mask with >= 1 entry per row."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(ARGS.n_layers, b, e, ARGS.kv_dim, generator=gen)
    v = torch.randn(k.shape, generator=gen)
    valid = torch.rand(b, e, generator=gen) < 0.6
    valid[:, 0] = True
    return k, v, valid


def test_fold_changes_the_evicting_rows_only():
    adapter = Adapter(ARGS, AdapterConfig(method="pte", rank=4, global_tokens=8))
    b = 4
    # not normalised, so even Norm(S + 0) would differ from S
    state = 3 * torch.randn(ARGS.n_layers, b, 8, 4, generator=torch.Generator().manual_seed(1))
    k, v, valid = _eviction(b, 5)  # every row has evicted entries: only ``rows`` tells them apart
    rows = torch.tensor([True, False, True, False])
    with torch.no_grad():
        new = adapter.fold(state, k, v, valid, rows)
        want = rms_normalise(state + adapter.encoder.encode(k, v, valid))
    assert torch.equal(new[:, ~rows], state[:, ~rows])  # masked rows: bit-identical
    assert torch.equal(new[:, rows], want[:, rows])  # folded rows: Norm(S + Enc(K_e, V_e))
    for i in (0, 2):
        assert not torch.allclose(new[:, i], state[:, i])
    k2, v2 = k.clone(), v.clone()
    k2[:, ~valid] += 100.0  # what the validity mask hides cannot change the fold
    v2[:, ~valid] -= 100.0
    with torch.no_grad():
        assert torch.equal(adapter.fold(state, k2, v2, valid, rows), new)


@pytest.mark.parametrize("method", ["global_only", "lora_c", "lora"])
def test_static_methods_keep_their_state_through_a_fold(method):
    adapter = Adapter(ARGS, AdapterConfig(method=method, rank=4, global_tokens=8))
    state = adapter.initial_state(4)
    if state is None:  # plain LoRA has no state, whatever it is handed back it returns as is
        assert adapter.fold(None, *_eviction(4, 5), torch.ones(4, dtype=torch.bool)) is None
        state = torch.randn(ARGS.n_layers, 4, 4, 4)
    before = state.clone()
    with torch.no_grad():
        out = adapter.fold(state, *_eviction(4, 5), torch.ones(4, dtype=torch.bool))
    assert torch.equal(out, before)


@pytest.mark.parametrize(
    "targets", [("q", "k", "v", "o"), ("q", "v"), ("q", "k", "v", "o", "gate", "up", "down")]
)
def test_only_adapter_parameters_train(random_ckpt, targets):
    model = load_base(random_ckpt("qwen2"))
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdapterConfig(method="pte", rank=4, global_tokens=8, targets=targets)
    adapter = Adapter(model.args, cfg)
    assert not any(p.requires_grad for p in model.parameters())
    trainable = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2)  # no decay: a param moves only by grad
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    prompts, completions = [[1, 2, 3], [4, 5, 6, 7]], [list(range(10, 30)), list(range(30, 45))]
    for _ in range(2):  # step 1 moves A off zero; step 2 then reaches B and the encoder too
        opt.zero_grad()
        replay(
            model,
            adapter,
            DecodeRequest(prompts, CacheConfig(budget=6)),
            completions,
            ReplaySpec(temperature=1.0),
            loss_fn=lambda lp, ent, rows, cols: -lp.sum(),
        )
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_before[k]), f"base tensor {k} changed"
    changed = {k for k, v in adapter.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(before), f"not trained: {sorted(set(before) - changed)[:5]}"
    names = set(adapter.state_dict())
    for t in targets:
        assert f"layers.0.A.{t}" in names
    assert {"encoder.Qg", "encoder.Kg", "encoder.Vg", "encoder.Wq", "encoder.Wk"} <= names


def test_adapter_round_trips_and_rejects_other_shapes(random_ckpt, tmp_path):
    model = load_base(random_ckpt("qwen2"))
    a = Adapter(model.args, AdapterConfig(rank=4, global_tokens=8, seed=1))
    save_adapter(a, tmp_path / "ck", {"step": 3})
    b = Adapter(model.args, AdapterConfig(rank=4, global_tokens=8, seed=2))
    assert load_adapter(b, tmp_path / "ck") == {"step": 3}
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    other = Adapter(model.args, AdapterConfig(rank=8, global_tokens=8))
    with pytest.raises(ValueError, match=r"tensor '.+' has shape .+ the model expects"):
        load_adapter(other, tmp_path / "ck")
    fewer = Adapter(model.args, AdapterConfig(rank=4, global_tokens=8, targets=("q",)))
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter(fewer, tmp_path / "ck")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "prefix"}, "method"),
        ({"rank": 0}, "rank"),
        ({"targets": ("q", "lm_head")}, "targets"),
        ({"global_tokens": 0}, "global_tokens"),
    ],
)
def test_bad_adapter_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)
