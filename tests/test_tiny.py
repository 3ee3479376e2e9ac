"""Tiny model, tokenizer and task: real files on disk, loaded back through transformers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pte_ray.config import load_config
from pte_ray.method.requests import DecodeRequest
from pte_ray.tiny import (
    TINY_DIMS,
    TaskSpec,
    TinyRecipe,
    build_tiny,
    build_tiny_task,
    build_tokenizer,
    cache_root,
    make_task,
    random_checkpoint,
    raw_tokenizer,
    write_task,
)
from pte_ray.tiny.task import RecallSpec, recall_distance

TEXTS = [
    "Start at 44 and add 5, 11 times.\n11: 44+5=49\n10: 49+5=54\n#### 99",
    "digits 0123456789 and 3.14159, -7, 1,234,567",
    "  leading spaces, double  spaces,\ttabs\t\tand trailing   ",
    "new\nlines\n\n\nand\r\nwindows",
    "So the answer is \\boxed{\\frac{3}{4}} and \\boxed{x^2+1}.",
    "unicode: héllo wörld, 日本語, Ελληνικά, emoji 🙂🚀, math ∑∫√≤",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|endoftext|>",
    "",
]

# A recipe small enough to build in a few seconds; the full one takes about a minute.
SMALL = TinyRecipe(
    warm_steps=3,
    batch_size=4,
    train_pool=40,
    eval_n=4,
    tokenizer_corpus=100,
    vocab_size=400,
    task=TaskSpec(min_steps=1, max_steps=2),
)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path, arch: str) -> None:
    path = random_checkpoint(tmp_path / arch, arch=arch)
    auto = AutoTokenizer.from_pretrained(path)
    raw = raw_tokenizer()
    for text in TEXTS:
        ids = auto(text).input_ids
        assert ids == raw.encode(text).ids, text
        assert auto.decode(ids) == text
    assert auto.eos_token == auto.pad_token == "<|endoftext|>"
    special = auto.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert special == [0, 1, 2]
    assert 256 < len(auto) <= 1024
    chat = auto.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_build_tokenizer_saves_loadable_files(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok)
    assert loaded("add 5, 11 times").input_ids == tok("add 5, 11 times").input_ids


def test_prompt_and_solution_tokenize_independently() -> None:
    """Rollouts append generated ids to the prompt's ids; that must equal tokenizing the text."""
    raw = raw_tokenizer()
    for row in make_task(200, seed=3) + make_task(50, split="test"):
        joint = raw.encode(row["prompt"] + row["solution"]).ids
        assert raw.encode(row["prompt"]).ids + raw.encode(row["solution"]).ids == joint


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_random_checkpoint_loads_with_realistic_features(tmp_path: Path, arch: str) -> None:
    random_checkpoint(tmp_path / "warm", arch=arch)  # the first call trains the tokenizer
    start = time.perf_counter()
    path = random_checkpoint(tmp_path / "a", arch=arch, seed=1)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed  # ~0.05 s on an idle machine; generous for shared CPUs
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert head_dim >= 32
    assert cfg.model_type == arch
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA exercised
    names = {n for n, _ in model.named_parameters()}
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (arch == "qwen2")
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (arch == "qwen3")
    assert "model.layers.0.self_attn.o_proj.bias" not in names

    same = AutoModelForCausalLM.from_pretrained(random_checkpoint(tmp_path / "b", arch, seed=1))
    other = AutoModelForCausalLM.from_pretrained(random_checkpoint(tmp_path / "c", arch, seed=2))
    w = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(model.state_dict()[w], same.state_dict()[w])
    assert not torch.equal(model.state_dict()[w], other.state_dict()[w])

    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (1, 4, len(AutoTokenizer.from_pretrained(path)))


def test_random_checkpoint_overrides_and_dtype(tmp_path: Path) -> None:
    path = random_checkpoint(tmp_path, num_hidden_layers=2, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert model.config.num_hidden_layers == 2
    assert model.dtype == torch.bfloat16
    assert model.config.hidden_size == TINY_DIMS["hidden_size"]
    with pytest.raises(ValueError, match="head_dim"):
        random_checkpoint(tmp_path / "bad", arch="llama", head_dim=16)


LINE = re.compile(r"^(\d+): (\d+)\+(\d+)=(\d+)$")


def test_make_task_is_deterministic_correct_and_long() -> None:
    train = make_task(2000, seed=0)
    assert train == make_task(2000, seed=0)
    assert train[:50] != make_task(50, seed=1)
    test = make_task(200, seed=0, split="test")
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in make_task(300, 7, "test")})
    assert len({r["prompt"] for r in train}) == 2000
    raw = raw_tokenizer()
    for row in train + test:
        *steps, last = row["solution"].split("\n")
        assert last == f"#### {row['answer']}" and row["solution"].endswith(last)
        start, add, times = map(int, re.findall(r"\d+", row["prompt"]))
        total = start
        for expected_left, line in zip(range(times, 0, -1), steps, strict=True):
            left, a, b, c = map(int, LINE.match(line).groups())
            assert (left, a, b, c) == (expected_left, total, add, total + add)
            total = c
        assert str(total) == row["answer"] == str(start + add * times)
        assert len(raw.encode(row["solution"]).ids) > 64


def test_task_difficulty_knobs() -> None:
    spec = TaskSpec(min_steps=3, max_steps=3, digits=2)
    rows = make_task(100, spec=spec)
    adds = [int(re.findall(r"\d+", r["prompt"])[1]) for r in rows]
    assert max(adds) >= 10 and all(r["solution"].count("\n") == 3 for r in rows)
    with pytest.raises(ValueError):
        TaskSpec(min_steps=5, max_steps=4)
    with pytest.raises(ValueError, match="distinct"):
        make_task(100, spec=TaskSpec(min_steps=1, max_steps=1, start_max=5))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_write_task_round_trips(tmp_path: Path, suffix: str) -> None:
    path = write_task(tmp_path / f"t.{suffix}", 20, seed=4, split="test")
    if suffix == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    assert rows == make_task(20, seed=4, split="test")
    with pytest.raises(ValueError, match="extension"):
        write_task(tmp_path / "t.csv", 2)


@pytest.mark.slow  # builds twice
def test_build_tiny_caches_and_force_rebuilds(tmp_path: Path) -> None:
    path = build_tiny(tmp_path, recipe=SMALL)
    assert path.parent == tmp_path and path.name == f"tiny-{SMALL.digest()}"
    meta = json.loads((path / "pte_ray_tiny.json").read_text())
    assert meta["recipe_hash"] == SMALL.digest()
    assert len(meta["loss_curve"]) == 3 and meta["warm_start_loss"] > 0
    assert 0.0 <= meta["greedy_accuracy"] <= 1.0 and meta["eval_n"] == 4
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)

    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny(tmp_path, recipe=SMALL) == path
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == stamp

    assert build_tiny(tmp_path, force=True, recipe=SMALL) == path
    assert weights.stat().st_mtime_ns != stamp
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [path.name]


@pytest.mark.slow  # two builder processes
def test_concurrent_builders_share_one_build(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from pte_ray.tiny import TaskSpec, TinyRecipe, build_tiny
        recipe = TinyRecipe(warm_steps=20, batch_size=4, train_pool=40, eval_n=4,
                            tokenizer_corpus=100, vocab_size=400, task=TaskSpec(1, 2))
        path = build_tiny({str(tmp_path)!r}, recipe=recipe)
        print(json.loads((path / "pte_ray_tiny.json").read_text())["build_pid"])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    builders = {out[-1] for out in outs}
    assert len(builders) == 1  # the second process waited on the lock and reused the build
    assert builders <= {str(p.pid) for p in procs}


def test_build_tiny_task_files(tmp_path: Path) -> None:
    recipe = TinyRecipe(train_file_n=300, test_file_n=50)
    files = build_tiny_task(tmp_path, recipe=recipe)
    train = [json.loads(line) for line in files["train"].read_text().splitlines()]
    test = [json.loads(line) for line in files["test"].read_text().splitlines()]
    assert (len(train), len(test)) == (300, 50)
    assert {"prompt", "answer", "solution"} <= set(train[0])
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in test)
    stamp = files["train"].stat().st_mtime_ns
    assert build_tiny_task(tmp_path, recipe=recipe) == files
    assert files["train"].stat().st_mtime_ns == stamp


def test_cache_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTE_RAY_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    assert cache_root(tmp_path / "x") == tmp_path / "x"


@pytest.mark.slow  # builds the default model
def test_default_tiny_model_has_room_to_climb() -> None:
    path = build_tiny()  # ~3 min once per machine; the default run and test_learning need it too
    meta = json.loads((path / "pte_ray_tiny.json").read_text())
    # The exact model depends on the machine (README, "The tiny model"): builds seen so far
    # scored sampled / bounded 0.73 / 0.17, 0.89 / 0.30 and 0.92 / 0.016 (2 of 128; its default
    # run still climbed from 0.06 at step 0 to 0.49 by steps 61-70, test_learning). What every
    # build must give: right on most problems with the whole context, far less often under the
    # bounded cache, yet not never (GRPO needs some right samples). That gap is what the default
    # run climbs; whether it does is test_learning's to say, not this proxy's.
    assert meta["eval_budget"] == load_config(None).cache.budget
    assert meta["sampled_accuracy"] >= 0.5
    assert meta["bounded_sampled_accuracy"] > 0
    assert meta["bounded_sampled_accuracy"] <= meta["sampled_accuracy"] - 0.3
    env = meta["environment"]  # what the numbers depend on, recorded with them
    assert env["torch"] == torch.__version__ and env["threads"] >= 1
    assert {"transformers", "tokenizers", "cpu", "cpu_capability", "python"} <= set(env)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    row = make_task(1, seed=0, split="test")[0]
    ids = tok(row["prompt"], return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert re.match(r"\d+: \d+\+\d+=", tok.decode(out[0, ids.shape[1] :]))


def test_recall_task_answer_is_written_once_and_never_restated() -> None:
    rows = make_task(300, seed=0, spec=RecallSpec())
    raw = raw_tokenizer()
    dists = []
    for row in rows:
        s1, a1, k, s2, a2, n = map(int, re.findall(r"\d+", row["prompt"]))
        value, last = s1 + a1 * k, s2 + a2 * n
        assert row["answer"] == f"{last} {value}"  # both: cutting the second count short fails
        assert row["solution"].endswith(f"#### {last} {value}")
        first, second = row["solution"].rsplit("\n", 1)[0].split("\nthen\n")
        assert first.endswith(f"={value}") and len(first.splitlines()) == k
        assert second.endswith(f"={last}") and len(second.splitlines()) == n
        assert first.count(f"={value}") == 1  # written once; the second count's totals
        assert re.findall(r"=(\d+)$", second, flags=re.M) == [  # come from its own start
            str(s2 + a2 * j) for j in range(1, n + 1)
        ]
        dists.append(recall_distance(lambda t: raw.encode(t).ids, row))
    assert make_task(300, seed=0, spec=RecallSpec()) == rows
    test = make_task(100, seed=0, split="test", spec=RecallSpec())
    assert {r["prompt"] for r in rows}.isdisjoint(r["prompt"] for r in test)
    # short second counts leave it in the window; long ones evicted it 1, 2, ... times before
    assert {0, 1, 2, 3} <= set(dists)


def test_recall_distance_counts_evictions_between_value_and_answer() -> None:
    row = {"solution": "a\nthen" + " b" * 200 + "\n#### 5"}  # words are tokens here
    enc = str.split  # the value "a" is thought token 0
    assert recall_distance(enc, {"solution": "x\nthen\n#### 5"}, budget=64, evict_n=16) == 0
    # the answer comes after 201 tokens: evictions before writing tokens 64, 80, ..., 192 (9);
    # token 0 left in the first one, so it was evicted 9 evictions before the answer
    assert recall_distance(enc, row, budget=64, evict_n=16) == 9


@pytest.mark.slow  # builds a 1 GB checkpoint
def test_real_model_shape_builds_and_matches_hf(tmp_path):
    """qwen2.5-0.5b-shape: Qwen2.5-0.5B's shapes (24 layers, GQA 14/2, 151,936-token tied
    head) with random weights, built locally; our decode equals HF's greedy on it."""
    from pte_ray.method.checkpoint import load_base
    from pte_ray.method.config import CacheConfig, SamplingParams
    from pte_ray.method.decode import generate
    from pte_ray.tiny.shapes import shape_checkpoint

    path = shape_checkpoint("qwen2.5-0.5b-shape", cache_dir=tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["vocab_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (
        151936,
        24,
        2,
    )
    ids = [5, 9, 11, 20, 40, 41, 42]
    model = load_base(path, dtype=torch.float32, device="cpu")
    sp = SamplingParams(max_new_tokens=6, greedy=True)
    ours = generate(model, None, DecodeRequest([ids], CacheConfig(budget=None)), sp).tokens[0]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours == ref[0, len(ids) :].tolist()
    with pytest.raises(ValueError, match="unknown model shape 'qwen9-shape'"):
        shape_checkpoint("qwen9-shape", cache_dir=tmp_path)
