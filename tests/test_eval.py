"""`pte-ray eval`: pass@k, bundled benchmarks, outputs, and bad input that fails cleanly."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pte_ray.cli import main as cli
from pte_ray.commands.evaluate import EvalOptions, eval_config, evaluate, pass_at_k
from pte_ray.config import load_config
from pte_ray.evalsets import problems, resolve_bench
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base, save_adapter


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 * 2) / (5 * 4))
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 1, 6)


@pytest.mark.parametrize(
    ("name", "gold"),
    [
        ("gsm8k-sample", "18"),
        ("math500-sample", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("aime-sample", "204"),
    ],
)
def test_bundled_benchmarks_load_in_their_own_formats(name, gold):
    cfg = load_config(None)
    bench = resolve_bench(name, cfg)
    examples, golds, _ = problems(bench, cfg, None)
    assert len(examples) >= 4 and golds[0] == gold


@pytest.fixture
def checkpoint(random_ckpt, tmp_path):
    """A pte adapter saved the way the learner saves it."""
    model_path = random_ckpt("qwen2")
    cfg = load_config(None, [f"model.path={model_path}", "adapter.rank=4"])
    adapter = Adapter(load_base(model_path).args, cfg.adapter_config())
    meta = {"adapter": cfg.adapter_config().model_dump(mode="json")}
    save_adapter(adapter, tmp_path / "ckpt", meta)
    return model_path, tmp_path / "ckpt"


def test_eval_writes_results_and_every_completion(checkpoint, task_file, tmp_path, capsys):
    model_path, ckpt = checkpoint
    over = [f"model.path={model_path}", "sampling.max_new_tokens=12", "cache.budget=8"]
    args = ["eval", "--adapter", str(ckpt), "--bench", str(task_file), "--bench", "gsm8k-sample"]
    args += ["--limit", "3", "--samples", "2", "--seeds", "0,1", "--out", str(tmp_path / "ev")]
    assert cli(args + over) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["method"] == "pte" and res["seeds"] == [0, 1]
    assert set(res["benchmarks"]) == {task_file.stem, "gsm8k-sample"}
    assert set(res["benchmarks"]["gsm8k-sample"]) == {"mean@2", "pass@1", "pass@2"}
    rows = pq.read_table(tmp_path / "ev" / "completions.parquet").to_pylist()
    assert len(rows) == 2 * 3 * 2 * 2  # benchmarks x problems x samples x seeds
    assert all(r["evictions"] >= 0 and r["status"] for r in rows)
    seed0 = [r["completion"] for r in rows if r["seed"] == 0]
    assert seed0 != [r["completion"] for r in rows if r["seed"] == 1]
    assert "| pte |" in capsys.readouterr().out


def test_eval_bad_input_names_the_problem_and_writes_nothing(checkpoint, tmp_path):
    model_path, ckpt = checkpoint
    out = tmp_path / "out"
    base = [f"model.path={model_path}"]
    bad_col = tmp_path / "bad.jsonl"
    bad_col.write_text(json.dumps({"text": "q", "solution": "1"}) + "\n")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        evaluate(
            eval_config(None, base, None), None, [str(tmp_path / "missing.jsonl")], EvalOptions()
        )
    with pytest.raises(ValueError, match=r"columns \['solution', 'text'\]"):
        evaluate(eval_config(None, base, None), None, [str(bad_col)], EvalOptions())
    with pytest.raises(ValueError, match="pass@4 needs --samples >= 4"):
        opts = EvalOptions(samples=2, ks=(4,), out_dir=str(out))
        evaluate(eval_config(None, base, None), None, ["gsm8k-sample"], opts)
    with pytest.raises(ValueError, match=r"adapter.method='lora_c' does not match .*method='pte'"):
        eval_config(None, [*base, "adapter.method=lora_c"], str(ckpt))
    with pytest.raises(FileNotFoundError, match="no adapter.json"):
        eval_config(None, base, str(tmp_path))
    assert not out.exists()
    (ckpt / "adapter.json").write_text(json.dumps({"adapter": {"method": "pte", "rank": 2}}))
    with pytest.raises(ValueError, match="shape"):  # the tensors say rank 4
        opts = EvalOptions(out_dir=str(out))
        evaluate(eval_config(None, base, str(ckpt)), str(ckpt), ["gsm8k-sample"], opts)
    assert not out.exists()


def test_generate_takes_the_config_and_overrides_of_train(checkpoint, tmp_path, capsys):
    """`pte-ray generate`: the checkpoint's adapter, with cache / sampling from key=value."""
    model_path, ckpt = checkpoint
    args = ["generate", "--adapter", str(ckpt), "--prompt", "1 + 1 =", "--prompt", "2 + 3 ="]
    over = [f"model.path={model_path}", "sampling.max_new_tokens=20", "cache.budget=4"]
    assert cli([*args, *over]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in recs] == ["1 + 1 =", "2 + 3 ="]
    assert all(r["tokens"] <= 20 for r in recs)
    assert any(r["evictions"] > 0 for r in recs)  # budget 4 with up to 20 tokens: it evicted
    assert cli([*args, *over, "cache.budget=1000"]) == 0
    assert all(r["evictions"] == 0 for r in map(json.loads, capsys.readouterr().out.splitlines()))
    # a setting the checkpoint fixes cannot be contradicted; a typo names the key
    assert cli([*args, *over, "adapter.rank=8"]) == 2
    assert cli([*args, *over, "cache.bugdet=4"]) == 2
    err = capsys.readouterr().err
    assert "adapter.rank=8 does not match" in err and "cache.bugdet" in err
