"""``pte-ray train``: open the run directory, connect to (or start) Ray, run the loop.

Everything the run writes is either appended a line at a time (metrics.jsonl) or renamed into
place when complete (rollouts, checkpoints), so a crash never leaves anything half-written that
``--resume auto`` would trip over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pte_ray.config import Config, dump_config, load_config
from pte_ray.progress import log_events_to_stderr
from pte_ray.run.prepare import prepare
from pte_ray.run.run_dir import RunDir

RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a submitted job's entrypoint


def _check_output_dir(cfg: Config, resume: str | None) -> None:
    """Under ``ray job submit`` the working directory is a temporary copy on the head: a run
    written there is lost with the job. Ask for a directory on storage that outlives it."""
    if cfg.train.output_dir is None and resume in (None, "auto") and RAY_JOB_ENV in os.environ:
        raise ValueError(
            "under ray job submit, runs/ would land in the job's temporary working directory: "
            "set train.output_dir to shared storage (e.g. output_dir=/mnt/shared/runs/NAME)"
        )


def main(config: str | None, overrides: list[str], resume: str | None = None) -> int:
    """`pte-ray train`: returns a process exit code; errors name their cause."""
    import ray

    from pte_ray.controller.loop import fit
    from pte_ray.controller.loop import resume as resume_from
    from pte_ray.controller.sft import SFTController
    from pte_ray.controller.step import Controller
    from pte_ray.run.loggers import StepLoggers, check_wandb

    log_events_to_stderr()  # pool events and restarts in the job's log
    cfg = load_config(config, overrides)  # conflicting settings: an error here
    _check_output_dir(cfg, resume)
    if "wandb" in cfg.train.loggers:
        check_wandb(cfg.train.wandb_mode)
    # the data (every row), the model spec, the stage's checkpoints: before Ray and before the
    # run directory exists, so a typo leaves nothing behind
    data = prepare(cfg)
    run = RunDir.open(cfg, resume)
    dump_config(cfg, run.path / "config.yaml")
    # a missing logger package fails here, before Ray or any actor starts
    loggers = StepLoggers(cfg.train.loggers, run.path, cfg.model_dump(mode="json"))
    address = cfg.train.ray_address or os.environ.get("RAY_ADDRESS")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=True, include_dashboard=None)
    controller = None
    try:
        controller = (SFTController if cfg.train.stage == "sft" else Controller)(cfg, run, data)
        controller.step_loggers = loggers
        # --resume PATH: that checkpoint; --resume auto: the newest complete one
        ckpt = Path(resume) if resume not in (None, "auto") else None
        ckpt = ckpt or (run.latest_checkpoint() if resume else None)
        if ckpt is not None:
            resume_from(controller, ckpt)
            print(f"resumed from {ckpt} at step {controller.state.step}", file=sys.stderr)
        summary = fit(controller)
        f, l_ = summary["first"], summary["last"]
        key = "nll" if cfg.train.stage == "sft" else "reward_mean"
        if f and l_:
            print(f"{key} {f[key]:.3f} -> {l_[key]:.3f}; run dir {run.path}")
        return 0
    finally:
        loggers.close()
        if controller is not None:
            controller.shutdown()
        if started:
            ray.shutdown()
