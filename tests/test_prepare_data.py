"""`pte-ray prepare-data`: a user's copy of MATH (per-problem JSON in topic folders) or GSM8K
(JSONL) becomes train/test Parquet the trainer loads; rows without an answer are counted."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pte_ray.cli import main as cli
from pte_ray.rl.data import DataConfig, load_dataset


def _math_copy(root):
    for i in range(12):
        topic = root / "train" / ("algebra" if i % 2 else "geometry")
        topic.mkdir(parents=True, exist_ok=True)
        sol = f"We add. The answer is $\\boxed{{\\frac{{{i}}}{{2}}}}$." if i != 5 else "No box."
        (topic / f"{i}.json").write_text(
            json.dumps(
                {
                    "problem": f"What is {i}/2?",
                    "level": "Level 1",
                    "type": "Algebra",
                    "solution": sol,
                }
            )
        )


def test_math_folders_become_train_and_test_parquet(tmp_path, capsys):
    _math_copy(tmp_path / "MATH")
    out = tmp_path / "data"
    assert cli(["prepare-data", str(tmp_path / "MATH"), "--out", str(out), "--test-size", "3"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rep["train"], rep["test"], rep["dropped"]) == (8, 3, 1)
    assert rep["dropped_why"] == {"math solution without a \\boxed{} answer": 1}
    rows = pq.read_table(out / "train.parquet").to_pylist()
    assert all(
        r["answer"] == f"\\frac{{{r['prompt'].split()[2].split('/')[0]}}}{{2}}" for r in rows
    )
    assert all("boxed" in r["solution"] and r["source"].endswith(".json:1") for r in rows)
    # what the trainer reads, with the SFT stage's solution column
    examples, _ = load_dataset(DataConfig(path=str(out / "train.parquet")), solutions=True)
    assert len(examples) == 8 and examples[0].solution


def test_gsm8k_jsonl_answers_after_the_marker(tmp_path, capsys):
    src = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": f"Q{i}?", "answer": f"It is <<{i}*1000={i}000>>.\n#### {i},000"}
        for i in range(4)
    ] + [{"question": "Q?", "answer": "no marker"}]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "data"
    assert cli(["prepare-data", str(src), "--out", str(out), "--test-size", "1"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rep["train"], rep["test"], rep["dropped"]) == (3, 1, 1)
    got = (
        pq.read_table(out / "train.parquet").to_pylist()
        + pq.read_table(out / "test.parquet").to_pylist()
    )
    assert sorted(r["answer"] for r in got) == ["0000", "1000", "2000", "3000"]


def test_nothing_usable_is_an_error(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "hello"}))
    assert cli(["prepare-data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "d")]) == 2
    assert "no usable rows" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        from pte_ray.commands.prepare_data import prepare_data

        prepare_data(str(tmp_path / "nope"), str(tmp_path / "d"))
