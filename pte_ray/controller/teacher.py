"""SFT targets from the full-cache teacher: sample, verify, keep the right ones.

A user's real case: a model that reasons well with the whole context, to be taught to reason
under a bounded one. Before the first SFT step, a short-lived pool of rollout workers runs the
teacher (``reference.model`` + ``reference.adapter``, full cache, on ``reference.engine``) over
the training prompts, ``sft.teacher_samples`` each; the reward pool scores every sample and only
those it verifies (status ok) that ended by themselves (EOS) become targets. The rest are
counted by status, written beside the traces, and never trained on.

The traces go to ``RUN_DIR/teacher/`` (Parquet + a JSON summary), renamed into place when
complete, so a resumed run reuses them and a crash leaves nothing half-written.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pte_ray.actors.reward import RewardWorker
from pte_ray.actors.rollout import RolloutWorker
from pte_ray.atomic import atomic_path
from pte_ray.progress import say
from pte_ray.rl.data.targets import Target

GROUP = 8  # prompts per request to the teacher pool


def teacher_targets(ctl: Any) -> list[Target]:
    """Verified teacher traces as targets, sampled now or read back from a resumed run."""
    d = ctl.run.path / "teacher"
    if not (d / "traces.parquet").is_file():
        _sample(ctl, d)
    summary = json.loads((d / "summary.json").read_text())
    say(f"teacher traces: {summary['kept']} of {summary['samples']} kept ({summary['statuses']})")
    rows = pq.read_table(d / "traces.parquet").to_pylist()
    if not rows:
        raise ValueError(
            f"the teacher verified none of its {summary['samples']} samples "
            f"({summary['statuses']}): nothing to train on; see {d}"
        )
    return [_target(ctl, r) for r in rows]


def _prompts(ctl: Any) -> list[int]:
    """The prompts the teacher samples: the first ``sft.teacher_prompts`` in seeded order."""
    order = np.random.default_rng([ctl.cfg.train.seed, 7]).permutation(len(ctl.data.examples))
    n = ctl.cfg.sft.teacher_prompts or len(order)
    return [ctl.data.examples[i].index for i in order[:n].tolist()]


def _sample(ctl: Any, out: Path) -> None:
    from pte_ray.actors.roles import rollout_pool
    from pte_ray.records import RolloutRequest, Rollouts, ScoreRequest, Scores
    from pte_ray.run.teacher import teacher_config

    cfg, data = ctl.cfg, ctl.data
    k, idx = cfg.sft.teacher_samples, _prompts(ctl)
    say(f"teacher: sampling {k} per prompt for {len(idx)} prompts (full cache)")
    pool = rollout_pool(teacher_config(cfg, data.teacher_spec), data.teacher_spec)
    try:
        rows = [i for i in idx for _ in range(k)]
        seeds = np.random.SeedSequence([cfg.train.seed, 11]).generate_state(len(rows)).tolist()
        reqs = [
            RolloutRequest(
                [data.prompt_ids[i] for i in rows[a : a + GROUP * k]],
                [int(x) for x in seeds[a : a + GROUP * k]],
                None,
            )
            for a in range(0, len(rows), GROUP * k)
        ]
        ro = Rollouts.concat(pool.map_rows(RolloutWorker.rollout, reqs))
    finally:
        pool.shutdown()
    answers = {ex.index: ex.answer for ex in data.examples}
    sc = [
        ScoreRequest(ro.texts[a : a + GROUP * k], [answers[i] for i in rows[a : a + GROUP * k]])
        for a in range(0, len(rows), GROUP * k)
    ]
    statuses = Scores.concat(ctl.roles.reward.map_rows(RewardWorker.score, sc)).statuses
    _write(out, rows, ro, statuses)


def _write(out: Path, rows: list[int], ro: Any, statuses: list[str]) -> None:
    """Kept traces (verified, ended by EOS) to Parquet, every status counted in the summary."""
    counts = Counter(
        s if s != "ok" or ro.finish_reasons[j] == "stop" else "truncated"
        for j, s in enumerate(statuses)
    )
    keep = [j for j, s in enumerate(statuses) if s == "ok" and ro.finish_reasons[j] == "stop"]
    table = pa.Table.from_pylist(
        [
            {"prompt_index": rows[j], "sample": j, "tokens": ro.tokens[j], "text": ro.texts[j]}
            for j in keep
        ],
        schema=pa.schema(
            [
                ("prompt_index", pa.int64()),
                ("sample", pa.int64()),
                ("tokens", pa.list_(pa.int64())),
                ("text", pa.string()),
            ]
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    summary = {"samples": len(rows), "kept": len(keep), "statuses": dict(counts)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "traces.parquet") as tmp:  # last: its presence means complete
        pq.write_table(table, tmp)


def _target(ctl: Any, row: dict[str, Any]) -> Target:
    """A trace as a target: the teacher's own tokens (EOS last), the answer weighted up."""
    ids, cfg, tok = list(row["tokens"]), ctl.cfg.sft, ctl.data.tokenizer
    at = row["text"].find(cfg.answer_marker) if cfg.answer_marker else -1
    first = len(ids)
    if at >= 0:  # the first token whose decoded prefix reaches past the marker's start
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tok.decode(ids[: mid + 1], skip_special_tokens=True)) > at:
                hi = mid
            else:
                lo = mid + 1
        first = lo
    weights = [1.0] * first + [cfg.answer_weight] * (len(ids) - first)
    src = f"teacher:{row['prompt_index']}:{row['sample']}"
    return Target(int(row["prompt_index"]), ids, weights, src)
