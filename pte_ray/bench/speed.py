"""What a timed rollout measured: its speed, evictions and their scoring cost, peak memory;
shared by ``bench rollout`` and its side-by-side ``--ab`` runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pte_ray.bench.common import timed
from pte_ray.bench.memory import PeakMemory
from pte_ray.method.outputs import Generation


def measure(args: argparse.Namespace, gen: Callable[[], Any], n_prompts: int) -> dict[str, Any]:
    """One timed rollout under ``PeakMemory``: its speed, evictions and scoring cost."""
    with PeakMemory(args.device) as mem:
        out, wall = timed(gen, args.device)
    peak = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    return speed(out, wall, n_prompts) | {peak: mem.peak_mb}


def speed(out: Generation, wall: float, n_prompts: int) -> dict[str, Any]:
    """Tokens/s of a rollout that took ``wall`` seconds, its evictions and their scoring cost."""
    n_tok = sum(len(t) for t in out.tokens)
    return {
        "tokens": n_tok,
        "tokens_per_s": n_tok / wall,
        "wall_s": wall,
        "evictions": sum(out.evictions),
        "evictions_per_seq": sum(out.evictions) / n_prompts,
        "refills": int(out.stats.get("refills", 0)),  # requests that took a finished row
        "prompt_copies": int(out.stats.get("prompt_copies", 0)),  # shared: one per group
        **_scoring(out.stats, wall),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median speed (lower median for an even count), with every run's speed."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    mid = ranked[(len(ranked) - 1) // 2]
    return mid | {"repeat": len(runs), "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def _scoring(stats: dict[str, float], wall: float) -> dict[str, float]:
    """What choosing evictions cost (rkv): per eviction (all rows at once) and its share."""
    n = stats.get("evictions_scored", 0)
    if not n:
        return {}
    s = stats["evict_score_s"]
    return {"evictions_scored": n, "score_ms_per_eviction": 1e3 * s / n, "score_share": s / wall}
