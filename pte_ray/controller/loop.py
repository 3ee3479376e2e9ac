"""The loop around steps: prefetch within ``train.max_staleness``, progress, checkpoints, resume.

With ``max_staleness = 0`` every step generates with the weights its previous step published
(synchronous GRPO). With 1, the next step's rollouts run in a background thread while the
learners train on this step's: a prefetched batch older than ``max_staleness`` versions is
dropped and generated afresh, its prompts put back. Checkpoints hold the learners' state and
the data cursor of the last batch learned from, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pte_ray.actors import metrics as dash
from pte_ray.controller.step import Batch, Controller
from pte_ray.run.progress import progress


def resume(ctl: Controller, ckpt: Path) -> None:
    state = json.loads((ckpt / "controller.json").read_text())
    ctl.roles.learners.all("load", str(ckpt))
    ctl.data.stream.restore(state["cursor"])
    ctl.cursor = state["cursor"]
    ctl.step = int(state["step"])
    ctl.run.truncate_metrics(ctl.step)


def checkpoint(ctl: Controller) -> None:
    cfg = ctl.cfg
    meta = {
        "step": ctl.step,
        "adapter": cfg.adapter_config().model_dump(mode="json"),
        "cache": cfg.cache_config().model_dump(mode="json"),
        "model": ctl.data.model_path,
    }
    with ctl.run.checkpoint_dir(ctl.step) as tmp:
        ctl.roles.learners.all("save", str(tmp), meta)
        (tmp / "controller.json").write_text(json.dumps({"step": ctl.step, "cursor": ctl.cursor}))


def _next_batch(ctl: Controller, pending: Future[Batch] | None) -> Batch:
    """The prefetched batch if it is fresh enough, else one generated now."""
    batch = pending.result() if pending is not None else None
    assert ctl.weights is not None
    if batch is not None and ctl.weights.version - min(batch.rollouts.versions) > (
        ctl.cfg.train.max_staleness
    ):
        batch = None  # older than max_staleness: drop it, generate afresh
        ctl.data.stream.restore(ctl.cursor)
    return batch if batch is not None else ctl.collect(ctl.step, ctl.weights)


def _report(m: dict[str, Any], bar: Any) -> None:
    """The step on the Ray dashboard and the progress bar / log line."""
    for k in ("reward_mean", "tokens_per_s", "step_s"):
        dash.gauge(k, m[k], "controller")
    lag = m["weight_version"] - m["rollout_version_min"] - 1
    dash.gauge("weight_version_lag", lag, "controller")
    bar.set_postfix(
        reward=f"{m['reward_mean']:.3f}",
        tok_s=f"{m['tokens_per_s']:.0f}",
        evict=f"{m['evictions_per_seq']:.1f}",
    )
    bar.update(1)


def fit(ctl: Controller) -> dict[str, Any]:
    """Train to ``train.steps``; returns the first and last metrics rows and the run dir."""
    cfg = ctl.cfg
    ctl.publish()  # every worker starts on the same version
    bar = progress(cfg.train.steps, "train", "step", initial=ctl.step)
    first = last = None
    ahead = ThreadPoolExecutor(1) if cfg.train.max_staleness > 0 else None
    pending: Future[Batch] | None = None
    try:
        while ctl.step < cfg.train.steps:
            batch = _next_batch(ctl, pending)
            pending = None
            if ahead is not None and ctl.step + 1 < cfg.train.steps:
                # rollouts for the next step run while the learners train on this one
                pending = ahead.submit(ctl.collect, ctl.step + 1, ctl.weights)
            last = ctl.train_step(ctl.step, batch)
            first = first or last
            ctl.step += 1
            ctl.run.append_metrics(last)
            _report(last, bar)
            if ctl.step % cfg.train.save_every == 0 or ctl.step == cfg.train.steps:
                checkpoint(ctl)
    finally:
        bar.close()
        if ahead is not None:
            ahead.shutdown()
    return {"first": first, "last": last, "run_dir": str(ctl.run.path)}
