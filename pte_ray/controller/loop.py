"""The loop around steps: prefetch within ``train.max_staleness``, progress, checkpoints, resume.

With ``max_staleness = 0`` every step generates with the weights its previous step published
(synchronous GRPO). With 1, the next step's rollouts run in a background thread while the
learners train on this step's: a prefetched batch older than ``max_staleness`` versions is
dropped and generated afresh, its prompts put back. Checkpoints hold the learners' state and
the data cursor of the last batch learned from, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pte_ray.actors.errors import LearnerLost, PoolError
from pte_ray.actors.learner import Learner
from pte_ray.controller.batch import Batch
from pte_ray.controller.step import Controller
from pte_ray.progress import progress, say

log = logging.getLogger(__name__)


def resume(ctl: Controller, ckpt: Path) -> None:
    state = json.loads((ckpt / "controller.json").read_text())
    ctl.roles.learners.all(Learner.load, str(ckpt))
    ctl.data.stream.restore(state["cursor"])
    ctl.state.restore(int(state["step"]), state["cursor"])
    ctl.run.truncate_metrics(ctl.state.step)


def checkpoint(ctl: Controller) -> None:
    cfg, s = ctl.cfg, ctl.state
    meta = {
        "step": s.step,
        "adapter": cfg.adapter_config().model_dump(mode="json"),
        "cache": cfg.cache_config().model_dump(mode="json"),
        "model": ctl.data.model_spec,
    }
    with ctl.run.checkpoint_dir(s.step) as tmp:
        ctl.roles.learners.all(Learner.save, str(tmp), meta)
        (tmp / "controller.json").write_text(json.dumps({"step": s.step, "cursor": s.cursor}))


def _next_batch(ctl: Controller, pending: Future[Batch] | None) -> Batch:
    """The prefetched batch if it is fresh enough, else one generated now."""
    batch = pending.result() if pending is not None else None
    s = ctl.state
    assert s.weights is not None
    if batch is not None and s.weights.version - min(batch.rollouts.versions) > (
        ctl.cfg.train.max_staleness
    ):
        batch = None  # older than max_staleness: drop it, generate afresh
        s.drop_stale()
        ctl.data.stream.restore(s.cursor)
    return batch if batch is not None else ctl.collect(s.step, s.weights)


def _report(m: dict[str, Any], bar: Any) -> None:
    """The step on the progress bar / log line and the optional loggers (the Ray dashboard's
    gauges are set by ``Controller.train_step``)."""
    shown = {
        "reward": ("reward_mean", "{:.3f}"),
        "nll": ("nll", "{:.3f}"),
        "tok_s": ("tokens_per_s", "{:.0f}"),
        "evict": ("evictions_per_seq", "{:.1f}"),
        "eval": ("eval_acc", "{:.3f}"),
    }
    bar.set_postfix(**{k: f.format(m[key]) for k, (key, f) in shown.items() if key in m})
    bar.update(1)


def _steps(ctl: Controller, bar: Any, ahead: ThreadPoolExecutor | None) -> dict[str, Any] | None:
    """Steps until ``train.steps``; returns the last metrics row."""
    cfg, s, last = ctl.cfg, ctl.state, None
    pending: Future[Batch] | None = None
    while s.step < cfg.train.steps:
        try:
            batch = _next_batch(ctl, pending)
            pending = None
            if ahead is not None and s.step + 1 < cfg.train.steps:
                # rollouts for the next step run while the learners train on this one
                pending = ahead.submit(ctl.collect, s.step + 1, s.weights)
            last = ctl.train_step(s.step, batch)
        except PoolError as e:  # the same kind (LearnerLost stays LearnerLost), with the step
            raise type(e)(f"step {s.step + 1}: {e}") from e
        s.advance()
        ctl.run.append_metrics(last)
        if ctl.step_loggers is not None:
            ctl.step_loggers.log(last)
        _report(last, bar)
        if s.step % cfg.train.save_every == 0 or s.step == cfg.train.steps:
            checkpoint(ctl)
            ctl.run.prune_checkpoints(cfg.train.keep_last)
    return last


def _restart_learners(ctl: Controller, cause: LearnerLost, bar: Any) -> None:
    """A new learner group (new rendezvous) resumed from the last complete checkpoint."""
    ckpt = ctl.run.latest_checkpoint()
    if ckpt is None:
        raise PoolError(f"{cause}; no checkpoint to restart the learners from yet") from cause
    ctl.state.learners_replaced()
    msg = (
        f"learner group lost ({cause}); restart {ctl.state.learner_restarts} of "
        f"{ctl.cfg.train.max_learner_restarts} from {ckpt.name}"
    )
    log.info(msg)  # for a configured log; ``say`` is the console line
    say(msg)
    ctl.restart_learners()
    resume(ctl, ckpt)
    bar.n = ctl.state.step  # the redone steps count again (tqdm and LogProgress alike)


def _run(ctl: Controller, bar: Any) -> dict[str, Any] | None:
    """Publish, then steps to the end; a prefetch still running when a step fails is waited
    for and dropped (its prompts come back with the cursor a resume restores)."""
    ahead = ThreadPoolExecutor(1) if ctl.cfg.train.max_staleness > 0 else None
    try:
        # every worker starts on the same version (after a restart: the resumed one, under
        # the new epoch, which workers holding a lost newer version load too)
        ctl.publish()
        return _steps(ctl, bar, ahead)
    finally:
        if ahead is not None:
            ahead.shutdown(cancel_futures=True)


def fit(ctl: Controller) -> dict[str, Any]:
    """Train to ``train.steps``; returns the last metrics row and the run dir.

    A lost learner group (a rank died or hung) is replaced and the run resumes from the last
    checkpoint, up to ``train.max_learner_restarts`` times in one job; a group lost again
    while it restarts spends another restart.
    """
    cfg = ctl.cfg
    bar = progress(cfg.train.steps, "train", "step", initial=ctl.state.step)
    first = ctl.run.read_metrics()[:1]
    lost: LearnerLost | None = None
    try:
        while True:
            try:
                if lost is not None:
                    _restart_learners(ctl, lost, bar)
                    lost = None
                last = _run(ctl, bar)
                break
            except LearnerLost as e:
                if ctl.state.learner_restarts >= cfg.train.max_learner_restarts:
                    raise
                lost = e
    finally:
        bar.close()
    first = first or ctl.run.read_metrics()[:1]
    return {"first": first[0] if first else last, "last": last, "run_dir": str(ctl.run.path)}
