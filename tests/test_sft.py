"""The supervised stage: targets and their weights, the learner's SFT step against an fp64
reference (gradient, across two ranks with uneven shards), and what bad input it refuses."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from safetensors.torch import load_file

from pte_ray.actors.learner import Learner
from pte_ray.config import load_config
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_adapter, load_base, save_adapter
from pte_ray.method.config import AdapterConfig, CacheConfig
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.rl.data.targets import encode_target
from pte_ray.rl.sft import SFTConfig, target_weights
from pte_ray.run.prepare import prepare


def test_target_weights_weigh_the_answer_and_eos():
    text = "1: 2+3=5\n#### 5"
    spans = [(0, 2), (2, 4), (4, 9), (9, 13), (13, 15)]  # "####" starts at 9
    assert target_weights(spans, text, "####", 5.0, eos=True) == [1, 1, 1, 5, 5, 5]
    assert target_weights(spans, text, "####", 5.0, eos=False) == [1, 1, 1, 5, 5]
    assert target_weights(spans, "no marker", "####", 5.0, eos=True) == [1.0] * 6
    # a token that straddles the marker's start counts as the answer's
    assert target_weights([(0, 10), (10, 15)], text, "####", 3.0, eos=False) == [3.0, 3.0]


def test_encoded_target_is_the_solution_then_eos(random_ckpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(random_ckpt("qwen2"))
    sol = "2: 36+9=45\n1: 45+9=54\n#### 54"
    ids, w = encode_target(tok, sol, SFTConfig(answer_weight=4.0), tok.eos_token_id)
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == sol
    assert len(w) == len(ids) and w[-1] == 4.0 and w[0] == 1.0
    k = w.index(4.0)
    assert "####" not in tok.decode(ids[:k]) and tok.decode(ids[: k + 1]).endswith("#")


# A's scale: at 0.1 the LoRA delta makes this random model's fp32 bounded-cache gradient chaotic
# (1e-2 off fp64 in replay alone); at 0.03 fp32 replay is within 2e-5 of fp64.
SCALE = 0.03


def _random_adapter(path, model_dir, method: str = "pte") -> Adapter:
    """A saved adapter whose A is off zero, so every parameter has a gradient."""
    model = load_base(model_dir)
    acfg = AdapterConfig(method=method, rank=4, global_tokens=8, seed=1)
    adapter = Adapter(model.args, acfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * SCALE)
    save_adapter(adapter, path, {"adapter": acfg.model_dump(mode="json")})
    return adapter


def _reference_grad(model_dir, adapter_dir, prompts, comps, weights, cache) -> dict:
    """The SFT loss's gradient in fp64, one replay of the whole batch (exact mode, which the
    replay tests check against a token-by-token decode with nothing detached)."""
    model = load_base(model_dir, dtype=torch.float64)
    meta = json.loads((adapter_dir / "adapter.json").read_text())["adapter"]
    adapter = Adapter(model.args, AdapterConfig(**meta), dtype=torch.float64)
    load_adapter(adapter, adapter_dir)
    w = torch.zeros(len(comps), max(map(len, comps)), dtype=torch.float64)
    for i, row in enumerate(weights):
        w[i, : len(row)] = torch.tensor(row)
    w = w / w.sum()

    def loss_fn(lp, ent, rows, cols):
        return -(lp * w[rows][:, cols]).sum()

    longest = max(map(len, comps))
    replay(
        model,
        adapter,
        DecodeRequest(prompts, cache),
        comps,
        ReplaySpec(temperature=1.0, max_new_tokens=longest, grad_mode="exact"),
        loss_fn,
    )
    return {n: p.grad for n, p in adapter.named_parameters()}


def test_sft_step_gradient_equals_fp64_reference_over_two_ranks(
    ray_cluster, small_run, random_ckpt, tmp_path
):
    from pte_ray.controller.sft import SFTBatch, SFTController
    from pte_ray.run.run_dir import RunDir

    model_dir = random_ckpt("qwen2")
    init = tmp_path / "init"
    _random_adapter(init, model_dir)
    over = [
        *small_run,
        "train.stage=sft",
        "train.prompts_per_step=5",  # 3 + 2 targets: uneven shards
        "learner.num_learners=2",
        "learner.micro_batch=2",  # and gradient accumulation inside each rank
        "adapter.rank=4",
        "adapter.global_tokens=8",
        "sft.answer_weight=3.0",
        "optim.grad_clip=1.0e9",
        "optim.lr=1.0e-3",
        f"train.init_adapter={init}",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    assert cfg.replay.grad == "exact"  # the SFT stage's default
    ctl = SFTController(cfg, RunDir.open(cfg, None))
    try:
        batch: SFTBatch = ctl.collect(0, None)
        shards = ctl.sft_shards(batch, None)
        assert [len(s) for s in shards] == [3, 2]
        assert any(w > 1.0 for s in shards for row in s.weights for w in row)
        before = ray.get(ctl.roles.learners.actors[0].adapter_state.remote())
        stats = ctl.roles.learners.each(Learner.sft_step, [(s,) for s in shards])
        after = ray.get(ctl.roles.learners.actors[1].adapter_state.remote())
    finally:
        ctl.shutdown()
    prompts = [ctl.data.prompt_ids[t.prompt_index] for t in batch.targets]
    comps = [t.ids for t in batch.targets]
    assert max(map(len, comps)) > 2 * cfg.cache.budget  # several evictions per target
    want = _reference_grad(
        model_dir, init, prompts, comps, [t.weights for t in batch.targets], cfg.cache_config()
    )
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in want.values()))
    assert stats[0].grad_norm == pytest.approx(float(norm), rel=1e-4)
    assert stats[0].grad_norm == stats[1].grad_norm
    for name, g in want.items():  # Adam's first step moves each weight by -lr * sign(g)
        step = (after[name] - before[name]).double()
        big = g.abs() > 1e-3 * g.abs().max()
        assert big.any(), name
        assert torch.equal(torch.sign(step[big]), -torch.sign(g[big])), name
    saved = load_file(str(init / "adapter.safetensors"))  # init_adapter was what it started from
    assert all(torch.equal(before[k], saved[k]) for k in saved)


def test_sft_without_a_solution_column_names_the_file_and_columns(small_run, tmp_path):
    rows = tmp_path / "no_solutions.jsonl"
    rows.write_text(json.dumps({"prompt": "Start at 3 and add 2, 2 times.\n", "answer": "7"}))
    cfg = load_config(None, [*small_run, "train.stage=sft", f"data.train={rows}"])
    with pytest.raises(
        ValueError,
        match=r"no_solutions.jsonl has no 'solution' column.*"
        r"\['answer', 'prompt'\].*sft.source=teacher",
    ):
        prepare(cfg)


def test_sft_solution_rows_are_checked(small_run, tmp_path):
    from pte_ray.rl.data import DataError

    rows = tmp_path / "bad.jsonl"
    good = {"prompt": "p\n", "answer": "1", "solution": "#### 1"}
    rows.write_text(json.dumps(good) + "\n" + json.dumps({**good, "solution": ""}) + "\n")
    cfg = load_config(None, [*small_run, "train.stage=sft", f"data.train={rows}"])
    with pytest.raises(DataError, match="bad.jsonl: row 2: 'solution' must be a non-empty"):
        prepare(cfg)


def test_init_adapter_of_another_family_or_shape_is_refused(small_run, random_ckpt, tmp_path):
    _random_adapter(tmp_path / "plain", random_ckpt("qwen2"), method="lora_c")
    cfg = load_config(None, [*small_run, f"train.init_adapter={tmp_path / 'plain'}"])
    with pytest.raises(ValueError, match="holds a 'lora_c' adapter.*thought-state"):
        prepare(cfg)
    _random_adapter(tmp_path / "state", random_ckpt("qwen2"))
    over = [*small_run, f"train.init_adapter={tmp_path / 'state'}", "adapter.global_tokens=8"]
    with pytest.raises(ValueError, match=r"adapter.rank=4; this run has adapter.rank=8"):
        prepare(load_config(None, over))
    with pytest.raises(FileNotFoundError, match="init_adapter=.*no adapter.safetensors"):
        prepare(load_config(None, [*small_run, f"train.init_adapter={tmp_path}"]))


def test_teacher_with_another_vocabulary_is_refused_before_compute(
    small_run, random_ckpt, tmp_path
):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(random_ckpt("qwen2"), other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]  # two tokens swap ids: same size, other ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    over = [*small_run, "grpo.kl_coef=0.1", f"reference.model={other}"]
    prepare(
        load_config(
            None, [*small_run, "grpo.kl_coef=0.1", f"reference.model={random_ckpt('qwen2')}"]
        )
    )
    with pytest.raises(ValueError, match="another vocabulary than the student"):
        prepare(load_config(None, over))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (["cache.eviction=rkv", "cache.rkv.window=4"], "sft with cache.eviction=rkv"),
        (["train.max_staleness=1"], "set train.max_staleness=0"),
        (["adapter.method=base"], "nothing to train"),
    ],
)
def test_sft_config_refuses_what_it_cannot_do(over, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, ["train.stage=sft", *over])


def test_cache_config_of_sft_stage_is_the_methods():
    cfg = load_config(None, ["train.stage=sft", "adapter.method=lora"])
    assert cfg.cache_config() == CacheConfig(budget=None)
    assert cfg.replay.grad == "exact"
    assert load_config(None, ["train.stage=sft", "replay.grad=truncated"]).replay.grad == (
        "truncated"
    )
