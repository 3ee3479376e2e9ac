"""The default run learns: GRPO with PTE raises the tiny model's reward under the bounded cache.

This is the promise of `pte-ray train` with no arguments (README, "Status"), so it is tested on
the real system: the warm-started tiny model, the default config, Ray actors, DeepSpeed. The
full-cache model is right ~75% of the time and loses count of its lines under the 64-token
thought budget (~20%); 80 of the default 150 steps take ~3 min on 2 CPU cores and, measured,
climb from 0.24 (first 10 steps) to 0.60 (last 10). The exact model depends on the machine
(README, "The tiny model"): a build that starts higher still has to gain 0.2.
"""

from __future__ import annotations

import json

import pytest

from pte_ray.commands import train


@pytest.mark.slow  # 80 training steps: ~4 min
def test_default_run_raises_the_reward(ray_cluster, tmp_path):
    out = tmp_path / "run"
    assert train.main(None, ["train.steps=80", "train.save_every=80", f"output_dir={out}"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward_mean"] for m in lines]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last >= first + 0.2 and last >= 0.4, f"first 10 steps {first:.3f}, last 10 {last:.3f}"
    assert all(m["evictions_per_seq"] >= 1 for m in lines)  # it really ran under the budget
