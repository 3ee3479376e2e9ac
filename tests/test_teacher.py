"""The teacher (the reference role): its adapter applied with the full cache, its top-k per
position against a direct forward, and the teacher config the SFT stage samples with."""

from __future__ import annotations

import json

import pytest
import torch

from pte_ray.config import load_config
from pte_ray.engines.choose import reference_engine
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base, save_adapter
from pte_ray.method.config import AdapterConfig
from pte_ray.method.model import Placement
from pte_ray.run.teacher import teacher_adapter, teacher_config

PROMPTS = [[5, 9, 11], [20, 21, 22, 23, 24]]
COMPLETIONS = [list(range(50, 62)), list(range(70, 79))]
TEMP = 0.8


def _teacher_dir(tmp_path, model_dir, method: str = "lora"):
    model = load_base(model_dir)
    acfg = AdapterConfig(method=method, rank=4, global_tokens=8, seed=3)
    ad = Adapter(model.args, acfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ad.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    save_adapter(ad, tmp_path / "teacher", {"adapter": acfg.model_dump(mode="json")})
    return tmp_path / "teacher", ad, model


def _direct(model, adapter, k: int):
    """Log-probs and top-k of each completion, one plain causal forward per row."""
    out = []
    for p, c in zip(PROMPTS, COMPLETIONS, strict=True):
        ids = torch.tensor([p + c[:-1]])
        n = ids.shape[1]
        pos = torch.arange(n)[None]
        at = Placement(pos, pos, torch.ones(n, n, dtype=torch.bool).tril()[None])
        model.reserve_positions(n)
        state = adapter.initial_state(1) if adapter is not None else None
        with torch.no_grad():
            logits, _ = model(ids, at, model.new_kv(1, n), adapter, state)
        lp = torch.log_softmax(logits[0, len(p) - 1 :] / TEMP, -1)
        top = lp.topk(k, -1)
        out.append((lp.gather(-1, torch.tensor(c)[:, None])[:, 0], top.indices, top.values))
    return out


def test_reference_applies_the_teacher_adapter_and_returns_its_topk(random_ckpt, tmp_path):
    model_dir = random_ckpt("qwen2")
    path, teacher, model = _teacher_dir(tmp_path, model_dir)
    cfg = load_config(None, [f"model.path={model_dir}", f"reference.adapter={path}"])
    eng = reference_engine(cfg, str(model_dir), "cpu", teacher_adapter(cfg))
    lps, ids, tops = eng.full_context_topk(PROMPTS, COMPLETIONS, TEMP, 1, 5)
    want = _direct(model, teacher, 5)
    base = _direct(model, None, 5)
    for i, (w_lp, w_ids, w_top) in enumerate(want):
        assert torch.allclose(torch.tensor(lps[i]), w_lp, atol=1e-5)
        assert torch.equal(torch.tensor(ids[i]), w_ids)
        assert torch.allclose(torch.tensor(tops[i]), w_top, atol=1e-5)
        assert not torch.allclose(w_lp, base[i][0], atol=1e-3)  # the adapter matters here
    plain = reference_engine(load_config(None, [f"model.path={model_dir}"]), str(model_dir), "cpu")
    got = plain.full_context_topk(PROMPTS, COMPLETIONS, TEMP, 2, 0)[0]
    assert all(torch.allclose(torch.tensor(g), b[0], atol=1e-5) for g, b in zip(got, base))


def test_teacher_config_runs_the_teacher_with_the_full_cache(random_ckpt, tmp_path):
    model_dir = random_ckpt("qwen2")
    path, _, _ = _teacher_dir(tmp_path, model_dir, method="lora_c")
    over = [
        f"model.path={model_dir}",
        f"reference.adapter={path}",
        "train.stage=sft",
        "sft.source=teacher",
        "adapter.method=pte",
        "cache.budget=8",
    ]
    t = teacher_config(load_config(None, over), str(model_dir))
    assert t.adapter.method == "lora" and t.cache_config().budget is None  # plain -> full cache
    assert t.adapter.rank == 4 and t.train.init_adapter == str(path)
    assert t.train.stage == "grpo"
    none = teacher_config(load_config(None, [f"model.path={model_dir}"]), str(model_dir))
    assert none.adapter.method == "base" and none.cache.budget is None


def test_a_teacher_checkpoint_that_is_not_one_is_named(random_ckpt, tmp_path):
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "adapter.json").write_text("{not json")
    cfg = load_config(None, [f"reference.adapter={tmp_path}"])
    with pytest.raises(ValueError, match="reference.adapter=.*adapter.json is not JSON"):
        teacher_config(cfg, str(random_ckpt("qwen2")))
    (tmp_path / "adapter.json").write_text(json.dumps({"adapter": {"method": "pte"}}))
    (tmp_path / "adapter.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter.safetensors"):
        teacher_config(cfg, str(random_ckpt("qwen2")))
