"""Held-out evaluation during training (``train.eval_every``): greedy, on the rollout pool.

The same workers, engine and verifier as training, on the weights just published, so a curve in
``eval.jsonl`` means what ``pte-ray eval`` of that step's checkpoint would say (greedy). On the
recall task each row carries its distance, and accuracy is reported per distance and for
d >= 2, where only the thought state can carry the value (the window may still hold d = 1's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pte_ray.actors.reward import RewardWorker
from pte_ray.actors.rollout import RolloutWorker
from pte_ray.config import Config
from pte_ray.records import PublishedWeights, RolloutRequest, Rollouts, ScoreRequest, Scores

CHUNK = 16  # prompts per request: the pool hands them to whichever worker is free


@dataclass(frozen=True)
class EvalSet:
    name: str
    prompts: list[list[int]]  # [n][P_i] rendered and tokenized as training prompts are
    answers: list[str]
    distances: list[int | None]  # recall distance per row (None: the set has none)


def default_bench(cfg: Config) -> str | None:
    """``train.eval_bench``, or the tiny task's own held-out split when training on one."""
    from pte_ray.tiny import RECIPES

    if cfg.train.eval_bench is not None:
        return cfg.train.eval_bench
    return cfg.data.train if cfg.data.train in RECIPES else None


def load_eval_set(cfg: Config, tok: Any) -> EvalSet | None:
    """The held-out set, rendered and tokenized before any actor starts (None: no eval)."""
    if not cfg.train.eval_every:
        return None
    spec = default_bench(cfg)
    if spec is None:
        raise ValueError(
            f"train.eval_every={cfg.train.eval_every} needs a held-out set: set train.eval_bench "
            f"(data.train={cfg.data.train!r} has no held-out split of its own)"
        )
    from pte_ray.evalsets import distances, problems, resolve_bench
    from pte_ray.rl.data import render_prompt

    bench = resolve_bench(spec, cfg)
    examples, golds, dcfg = problems(bench, cfg, cfg.train.eval_limit)
    special = not dcfg.apply_chat_template
    ids = [tok(render_prompt(e, dcfg, tok), add_special_tokens=special).input_ids for e in examples]
    dist = distances(bench)[: len(examples)] or [None] * len(examples)
    return EvalSet(bench.name, ids, golds, dist)


def run_eval(roles: Any, es: EvalSet, weights: PublishedWeights | None) -> dict[str, float]:
    """Greedy accuracy of ``weights`` on the set: overall, per distance and for d >= 2."""
    n = len(es.prompts)
    reqs = [
        RolloutRequest(
            es.prompts[i : i + CHUNK], [0] * len(es.prompts[i : i + CHUNK]), weights, greedy=True
        )
        for i in range(0, n, CHUNK)
    ]
    rollouts = Rollouts.concat(roles.rollout.map_rows(RolloutWorker.rollout, reqs))
    scored = [
        ScoreRequest(rollouts.texts[i : i + CHUNK], es.answers[i : i + CHUNK])
        for i in range(0, n, CHUNK)
    ]
    statuses = Scores.concat(roles.reward.map_rows(RewardWorker.score, scored)).statuses
    return accuracy([s == "ok" for s in statuses], es.distances)


def accuracy(correct: list[bool], dist: list[int | None]) -> dict[str, float]:
    """``eval_acc``, ``eval_acc_d{d}`` per distance and ``eval_acc_d2plus`` (where any)."""
    out = {"eval_acc": sum(correct) / max(len(correct), 1)}
    by_d: dict[int, list[bool]] = {}
    for ok, d in zip(correct, dist, strict=True):
        if d is not None:
            by_d.setdefault(d, []).append(ok)
    for d in sorted(by_d):
        out[f"eval_acc_d{d}"] = sum(by_d[d]) / len(by_d[d])
    far = [ok for d, hits in by_d.items() if d >= 2 for ok in hits]
    if far:
        out["eval_acc_d2plus"] = sum(far) / len(far)
    return out
