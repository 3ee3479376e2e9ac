"""Dynamic sampling: zero-signal groups dropped, the step refilled from the stream."""

from __future__ import annotations

import json

import pytest

from pte_ray.commands import train
from pte_ray.controller.batch import Batch
from pte_ray.controller.refill import _join, _take, signal_groups
from pte_ray.records import ReferenceLogprobs, Rollouts, Scores
from pte_ray.rl.data import Example
from pte_ray.run.rollout_log import read_rollouts


def _scored(rewards: list[float], g: int, tag: int) -> tuple[Batch, Scores, ReferenceLogprobs]:
    n = len(rewards)
    ex = [Example(f"p{tag}-{k}", "1", tag * 10 + k, "f:1") for k in range(n // g)]
    ro = Rollouts(
        [[tag, i] for i in range(n)],
        [[-1.0, -2.0]] * n,
        [[]] * n,
        [[]] * n,
        ["stop"] * n,
        [f"t{tag}-{i}" for i in range(n)],
        [0] * n,
        1.0,
    )
    batch = Batch(ex, [[tag]] * n, ["1"] * n, ro, {"epoch": 0, "index": tag}, 1.0, {})
    ref = ReferenceLogprobs([[-0.5, float(i)] for i in range(n)])
    return batch, Scores(rewards, ["ok"] * n), ref


def test_groups_with_signal_are_taken_and_joined_in_order():
    g = 2
    first = _scored([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], g, 1)  # groups 0 and 2 have no signal
    assert signal_groups(first[1], g) == [1]
    more = _scored([0.0, 1.0, 1.0, 1.0], g, 2)
    batch, scores, ref = _join([_take(first, [1], g), _take(more, [0], g)], more[0])
    assert [e.index for e in batch.examples] == [11, 20]
    assert batch.rollouts.texts == ["t1-2", "t1-3", "t2-0", "t2-1"]
    assert scores.rewards == [0.0, 1.0, 0.0, 1.0] and ref.logprobs[2] == [-0.5, 0.0]
    assert batch.cursor == {"epoch": 0, "index": 2} and batch.rollout_s == 2.0
    assert len(batch.prompts) == len(batch.answers) == 4


@pytest.mark.slow  # the tiny model (built once) and three steps
def test_drop_zero_adv_learns_only_groups_with_signal(ray_cluster, tmp_path):
    out = tmp_path / "run"
    over = [
        "train.steps=3",
        "train.save_every=3",
        "grpo.drop_zero_adv=true",
        "grpo.max_refill=3",
        f"output_dir={out}",
    ]
    assert train.main(None, over) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["zero_adv_groups"] <= 1.0 and "refill_rounds" in m for m in rows)
    logged = read_rollouts(out).to_pylist()
    for step in (1, 2, 3):
        mine = [r for r in logged if r["step"] == step]
        groups = {r["group"] for r in mine}
        learned = rows[step - 1]["groups_learned"]
        assert len(groups) == learned <= 8
        with_signal = [k for k in groups if len({r["reward"] for r in mine if r["group"] == k}) > 1]
        # every group learned has signal, unless the refills ran out
        assert len(with_signal) == learned or rows[step - 1]["refill_rounds"] == 3
    assert any(m["zero_adv_groups"] > 0 for m in rows) or all(m["refill_rounds"] == 0 for m in rows)
