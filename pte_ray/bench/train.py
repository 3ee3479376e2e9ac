"""``pte-ray bench train``: the same config trained synchronously and asynchronously, side by side.

Asynchronous rollouts (``train.max_staleness=1``) generate step k+1 while the learners train
on step k; what that buys is the rollout and learner idle time it removes, at the price of
rows one version stale. Each mode runs as its own ``pte-ray train`` process (a fresh Ray
cluster, the same seeds) for ``--steps`` steps; the first ``--warmup`` steps (start-up,
compilation) are left out of the means. One JSON object: per mode the step wall time (publish
to publish), the phase times, idle ratios and staleness, and async / sync ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PHASES = ("wall_s", "step_s", "rollout_s", "reward_ref_s", "learn_s", "publish_s")
RATIOS = ("rollout_idle_ratio", "learner_idle_ratio", "staleness_mean")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config, as for pte-ray train")
    p.add_argument("overrides", nargs="*", help="dotted key=value, as for pte-ray train")
    p.add_argument("--steps", type=int, default=12, help="steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    p.add_argument("--out", default=None, help="where the two runs go (default: a temp dir)")


def _train(args: argparse.Namespace, staleness: int, out: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "pte_ray.cli", "train"]
    cmd += ["--config", args.config] if args.config else []
    run = out / f"staleness{staleness}"
    cmd += [*args.overrides, f"train.steps={args.steps}", f"train.max_staleness={staleness}"]
    cmd += [f"train.output_dir={run}", f"train.save_every={args.steps}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench train: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def summarize(rows: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Means over the measured steps; staleness max and dropped batches over all of them."""
    kept = rows[warmup:] or rows
    out = {k: sum(m[k] for m in kept) / len(kept) for k in (*PHASES, *RATIOS)}
    out["staleness_max"] = max(m["staleness_max"] for m in rows)
    out["dropped_stale"] = sum(m.get("dropped_stale", 0) for m in rows)
    out["steps_measured"] = len(kept)
    out["tokens_per_s"] = sum(m["tokens_per_s"] for m in kept) / len(kept)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps <= args.warmup:
        raise ValueError(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    with tempfile.TemporaryDirectory(prefix="pte-bench-train-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        modes = {f"staleness{s}": summarize(_train(args, s, out), args.warmup) for s in (0, 1)}
    sync, asyn = modes["staleness0"], modes["staleness1"]
    return {
        "bench": "train",
        "steps": args.steps,
        "warmup": args.warmup,
        "overrides": args.overrides,
        "sync": sync,
        "async": asyn,
        "async_over_sync_wall": asyn["wall_s"] / max(sync["wall_s"], 1e-9),
    }
