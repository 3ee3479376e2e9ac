"""The chaos bench: its schedule, its row checks (they must catch a lost, doubled or stale row),
and a short run under SIGKILLs of every role that must end bit-identical to an undisturbed one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pte_ray.bench import chaos
from pte_ray.run.rollout_log import RolloutWriter


def test_schedule_is_seeded_and_strikes_every_role():
    plan = chaos.schedule(12, 20, seed=3)
    assert plan == chaos.schedule(12, 20, seed=3)
    assert plan != chaos.schedule(12, 20, seed=4)
    assert len(plan) == 12
    targets = [t for _, _, t in plan]
    assert set(targets) == {*chaos.ROLES, "node", "checkpoint"}
    assert targets.count("node") == targets.count("checkpoint") == 1
    assert all(g >= 1 and 0 <= f < 1 for g, f, _ in plan)
    assert sum(g for g, _, _ in plan) <= 18  # the last kill lands before the last step
    with pytest.raises(ValueError, match="kills <= steps - 2"):
        chaos.schedule(3, 4, seed=0)


def _rows(run: Path, rows: list[tuple[int, int, int, int]]) -> None:
    """(step, group, prompt_index, version) rows, written as the run writes them."""
    w = RolloutWriter(run)
    fill = {"prompt": "p", "completion": "c", "answer": "1", "reward": 0.0, "status": "ok"}
    for step in sorted({r[0] for r in rows}):
        keys = ("step", "group", "prompt_index", "version")
        mine = [dict(zip(keys, r)) | fill | {"evictions": 0, "num_tokens": 1} for r in rows]
        w.write(step, [r for r in mine if r["step"] == step])


def _whole(steps: int) -> list[tuple[int, int, int, int]]:
    return [
        (s, gr, gr + 10, s - 1) for s in range(1, steps + 1) for gr in range(2) for _ in range(3)
    ]


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda rs: rs, None),
        (lambda rs: [r for r in rs if r[0] != 2], r"steps with rows \[1, 3\]"),
        (lambda rs: [*rs, rs[0]], "step 1 holds 7 rows"),
        (lambda rs: rs[:-1], "step 3 holds 5 rows"),
        (lambda rs: [(s, g, p, 0) for s, g, p, _ in rs], "step 2 rows on versions"),
    ],
)
def test_check_rows_catches_lost_doubled_and_stale_rows(tmp_path, edit, error):
    _rows(tmp_path, edit(_whole(3)))
    if error is None:
        assert chaos.check_rows(tmp_path, 3, groups=2, g=3) == 18
    else:
        with pytest.raises(ValueError, match=error):
            chaos.check_rows(tmp_path, 3, groups=2, g=3)


@pytest.mark.slow
def test_chaos_run_ends_bit_identical(ray_cluster, small_run, tmp_path):
    args = argparse.Namespace(
        steps=8, kills=6, seed=0, out=str(tmp_path), overrides=[*small_run, "train.save_every=2"]
    )
    r = chaos.run(args)
    print(json.dumps(r, indent=1))
    assert r["kills"] == 6 and all(s["processes"] for s in r["strikes"]), r
    assert r["learner_restarts"] >= 2, r  # the node kill and the learner kills at least
    assert r["rows_checked"] == 8 * 2 * 4
    assert r["grad_norm_min"] > 0, r  # it trained every step
    assert r["adapter_bit_identical"], r


def test_check_rows_allows_the_staleness_bound_and_no_more(tmp_path):
    _rows(tmp_path, [(s, gr, p, max(s - 2, 0)) for s, gr, p, _ in _whole(3)])
    assert chaos.check_rows(tmp_path, 3, groups=2, g=3, staleness=1) == 18
    with pytest.raises(ValueError, match=r"step 2 rows on versions \[0\]"):
        chaos.check_rows(tmp_path, 3, groups=2, g=3, staleness=0)
