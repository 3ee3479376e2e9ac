"""`pte-ray compare`: methods x seeds trained on the real system, evaluated, tabulated, plotted."""

from __future__ import annotations

import json

import pytest
import yaml

from pte_ray.commands.compare import compare, print_table


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
    ]
    out = tmp_path / "cmp"
    methods = ["lora_c", "pte", "pte:exact", "base"]
    summary = compare(None, over, methods, [0], [str(task_file)], str(out))
    assert set(summary) == set(methods)
    for run, grad in (("pte-seed0", "truncated"), ("pte-exact-seed0", "exact")):
        resolved = yaml.safe_load((out / run / "config.yaml").read_text())
        assert resolved["replay"]["grad"] == grad and resolved["adapter"]["method"] == "pte"
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
