"""`pte-ray compare`: methods x seeds trained on the real system, evaluated, tabulated, plotted."""

from __future__ import annotations

import json

import pytest
import yaml

from pte_ray.commands.compare import compare, print_table
from pte_ray.run.rollout_log import read_rollouts


@pytest.mark.slow  # four trainings + evals
def test_compare_trains_evaluates_and_tabulates(ray_cluster, random_ckpt, task_file, tmp_path):
    over = [
        f"model.path={random_ckpt('qwen2')}",
        f"data.train={task_file}",
        "train.steps=2",
        "train.save_every=2",
        "train.prompts_per_step=2",
        "grpo.group_size=2",
        "sampling.max_new_tokens=16",
        "cache.budget=8",
        "cache.rkv.window=4",
    ]
    out = tmp_path / "cmp"
    methods = ["lora_c", "pte", "pte:exact@rkv", "base"]
    summary = compare(None, over, methods, [0], [str(task_file)], str(out))
    assert set(summary) == set(methods)
    for run, grad, ev in (
        ("pte-seed0", "truncated", "window"),
        ("pte-exact-rkv-seed0", "exact", "rkv"),
    ):
        resolved = yaml.safe_load((out / run / "config.yaml").read_text())
        assert resolved["replay"]["grad"] == grad and resolved["adapter"]["method"] == "pte"
        assert resolved["cache"]["eviction"] == ev
    # the R-KV run's rollouts carry their record to the learner and to disk
    rows = read_rollouts(out / "pte-exact-rkv-seed0").to_pylist()
    assert all(len(r["evicted_slots"] or []) == r["evictions"] for r in rows)
    assert any(r["evictions"] for r in rows)
    assert all(r["evicted_slots"] is None for r in read_rollouts(out / "pte-seed0").to_pylist())
    acc = f"{task_file.stem}/mean@1"
    assert all(acc in s for s in summary.values())
    assert summary["pte"]["learner_peak_mb"]["mean"] > 0 and "wall_s" not in summary["base"]
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["runs"]["pte"]) == 1
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "pte-seed0" / "checkpoints").is_dir() and (out / "pte-seed0" / "eval").is_dir()
    assert "| pte |" in print_table(summary)
    with pytest.raises(ValueError, match="unknown"):
        compare(None, over, ["lora-c"], [0], [str(task_file)], str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="unknown.*pte:exactly"):
        compare(None, over, ["pte:exactly"], [0], [str(task_file)], str(tmp_path / "bad"))
    for name in ("lora@rkv", "pte@lru", "base:exact"):
        with pytest.raises(ValueError, match=f"unknown.*{name}"):
            compare(None, over, [name], [0], [str(task_file)], str(tmp_path / "bad"))
