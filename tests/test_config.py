"""Config: YAML + dotted overrides, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pte_ray.actors.weights import pack, unpack
from pte_ray.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "launch" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    if not path.stem.startswith("tiny"):  # the paper's settings
        assert (cfg.adapter.rank, cfg.adapter.global_tokens, cfg.cache.evict_ratio) == (
            32,
            32,
            0.25,
        )
        assert (cfg.optim.lr, cfg.optim.grad_clip, cfg.sampling.max_new_tokens) == (1e-5, 1.0, 3072)
        assert cfg.cache.budget == 1024


def test_overrides_parse_as_yaml():
    cfg = load_config(None, ["cache.budget=64", "adapter.targets=[q,v]", "cache.budget_mode=total"])
    assert cfg.cache.budget == 64 and cfg.adapter.targets == ("q", "v")
    assert cfg.cache_config().budget_mode == "total"


def test_output_dir_shorthand_sets_the_run_directory(tmp_path):
    assert load_config(None, ["output_dir=runs/a"]).train.output_dir == "runs/a"
    empty_train = tmp_path / "c.yaml"
    empty_train.write_text("train:\ncache: {budget: 48}\n")
    cfg = load_config(empty_train, ["output_dir=runs/b"])
    assert (cfg.train.output_dir, cfg.cache.budget) == ("runs/b", 48)
    with pytest.raises(ValueError, match="both set"):
        load_config(None, ["output_dir=runs/a", "train.output_dir=runs/b"])


def test_tiny_config_is_the_default_run():
    """`pte-ray train` with no --config and with the shipped tiny.yaml train the same thing."""
    tiny = Path(__file__).resolve().parents[1] / "launch" / "configs" / "tiny.yaml"
    assert load_config(tiny).model_dump() == load_config(None).model_dump()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("cache.bugdet=3", "cache.bugdet"),
        ("cache.evict_ratio=2", "cache.evict_ratio"),
        ("grpo.loss_agg=sum", "grpo.loss_agg"),
        ("learner.zero_stage=3", "learner.zero_stage"),
        ("train.steps", "key=value"),
        ("learner.num_learners=50", "num_learners"),
    ],
)
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_missing_or_bad_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)


def test_weight_snapshot_round_trips_bit_for_bit():
    state = {"a": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "c": torch.randn(2, 2, 2)}
    snap = pack(state, version=7)
    assert snap.version == 7 and len(snap.buckets) == 2
    back = unpack(snap)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_defaults_agree_with_the_design():
    cfg = load_config(None)
    assert cfg.adapter.global_tokens == 32 == cfg.adapter_config().global_tokens
    assert load_config(None, ["adapter.method=global_only"]).cache_config().bounded
    assert not load_config(None, ["adapter.method=lora"]).cache_config().bounded


def test_every_setting_has_one_declaration_with_help(tmp_path):
    """`pte-ray config` prints each key once with its help, and what it prints loads back."""
    from pte_ray.config import Config, annotated_yaml

    cfg = load_config(None, ["cache.budget=32", "adapter.targets=[q,v]", "train.seed=3"])
    for section, model in cfg:
        for key, field in type(model).model_fields.items():
            assert field.description, f"{section}.{key} has no help"
    text = annotated_yaml(cfg)
    assert "  budget: 32  # " in text and "  seed: 3  # " in text
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == cfg
    # the method layer's models are the sections themselves: no second copy to drift
    from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingConfig
    from pte_ray.rl.grpo import GRPOConfig

    fields = Config.model_fields
    assert fields["cache"].annotation is CacheConfig
    assert fields["adapter"].annotation is AdapterConfig
    assert fields["sampling"].annotation is SamplingConfig
    assert fields["grpo"].annotation is GRPOConfig
    from pte_ray.rl.data.schema import DataColumns
    from pte_ray.rl.rewards import RewardConfig

    assert issubclass(fields["data"].annotation, DataColumns)  # + train, max_prompt_tokens
    assert issubclass(fields["reward"].annotation, RewardConfig)  # + the pool's resources
