"""The run directory: resolved config, metrics.jsonl, rollouts/ (Parquet), checkpoints/.

Checkpoints are built in a dot-prefixed temporary directory and renamed when every rank has
written its part, so ``latest_checkpoint`` only ever sees complete ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pte_ray.atomic import write_text
from pte_ray.config import Config
from pte_ray.run.rollout_log import RolloutWriter


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_file = path / "metrics.jsonl"
        self.ckpt_root = path / "checkpoints"
        self.rollouts = RolloutWriter(path)

    @classmethod
    def open(cls, cfg: Config, resume: str | None) -> RunDir:
        out = cfg.train.output_dir
        if resume not in (None, "auto"):
            ckpt = Path(resume)
            if not (ckpt / "controller.json").is_file():
                raise FileNotFoundError(f"--resume {resume}: not a checkpoint directory")
            return cls(ckpt.parent.parent)
        if out is None:
            runs = Path("runs")
            if resume == "auto":
                found = sorted(p for p in runs.glob("*") if (p / "checkpoints").is_dir())
                if not found:
                    raise FileNotFoundError("--resume auto: no run with a checkpoint under runs/")
                return cls(found[-1])
            out = str(runs / time.strftime("%Y%m%d-%H%M%S"))
        path = Path(out)
        if resume is None and (path / "metrics.jsonl").exists():
            raise ValueError(
                f"train.output_dir {out!r} already holds a run: pass --resume auto to continue "
                "it, or choose another output_dir"
            )
        return cls(path)

    def append_metrics(self, m: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(m) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        lines = self.metrics_file.read_text().splitlines()
        return [json.loads(ln) for ln in lines if ln.strip()]

    def truncate_metrics(self, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint (they will be redone)."""
        keep = [m for m in self.read_metrics() if m.get("step", 0) <= step]
        write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in keep))

    def write_rollouts(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.rollouts.write(step, rows)

    @contextlib.contextmanager
    def checkpoint_dir(self, step: int) -> Iterator[Path]:
        final = self.ckpt_root / f"step_{step:06d}"
        tmp = self.ckpt_root / f".step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def latest_checkpoint(self) -> Path | None:
        if not self.ckpt_root.is_dir():
            return None
        done = sorted(p for p in self.ckpt_root.glob("step_*") if (p / "controller.json").exists())
        return done[-1] if done else None
