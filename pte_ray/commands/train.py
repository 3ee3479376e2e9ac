"""``pte-ray train``: open the run directory, connect to (or start) Ray, run the loop.

Everything the run writes is either appended a line at a time (metrics.jsonl) or renamed into
place when complete (rollouts, checkpoints), so a crash never leaves anything half-written that
``--resume auto`` would trip over.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pte_ray.config import dump_config, load_config
from pte_ray.run.run_dir import RunDir


def main(config: str | None, overrides: list[str], resume: str | None = None) -> int:
    """`pte-ray train`: returns a process exit code; errors name their cause."""
    import ray

    from pte_ray.controller.loop import fit
    from pte_ray.controller.loop import resume as resume_from
    from pte_ray.controller.sft import SFTController
    from pte_ray.controller.step import Controller
    from pte_ray.run.loggers import StepLoggers

    cfg = load_config(config, overrides)
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
        controller = (SFTController if cfg.train.stage == "sft" else Controller)(cfg, run)
        controller.step_loggers = loggers
        # --resume PATH: that checkpoint; --resume auto: the newest complete one
        ckpt = Path(resume) if resume not in (None, "auto") else None
        ckpt = ckpt or (run.latest_checkpoint() if resume else None)
        if ckpt is not None:
            resume_from(controller, ckpt)
            print(f"resumed from {ckpt} at step {controller.step}", file=sys.stderr)
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
