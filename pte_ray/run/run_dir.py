"""The run directory: resolved config, metrics.jsonl, rollouts/ (Parquet), checkpoints/.

Checkpoints are built in a dot-prefixed temporary directory and renamed when every rank has
written its part; each lists its files and their sizes, so a checkpoint damaged afterwards
(a file lost or truncated, unreadable JSON) is skipped with a warning by ``latest_checkpoint``
(``--resume auto``, the in-job learner restart), and ``train.keep_last`` prunes old ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pte_ray.atomic import write_text
from pte_ray.config import Config
from pte_ray.run.rollout_log import RolloutWriter

log = logging.getLogger(__name__)

MANIFEST = "files.json"  # in each checkpoint: every file it holds and its size


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
            why = checkpoint_problem(ckpt)
            if why is not None:
                raise FileNotFoundError(f"--resume {resume}: not a usable checkpoint ({why})")
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
        # every file and its size, last: a checkpoint that later loses or truncates one (a
        # rank's optimizer partition, say) is found broken before a resume trips over it
        sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in tmp.rglob("*") if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(sizes, sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a broken one is skipped with a warning)."""
        if not self.ckpt_root.is_dir():
            return []
        out = []
        for p in sorted(self.ckpt_root.glob("step_*")):
            why = checkpoint_problem(p)
            if why is None:
                out.append(p)
            else:
                log.warning("skipping checkpoint %s: %s", p, why)
        return out

    def latest_checkpoint(self) -> Path | None:
        done = self.checkpoints()
        return done[-1] if done else None

    def prune_checkpoints(self, keep_last: int | None) -> None:
        """``train.keep_last``: delete all but the newest complete checkpoints."""
        if keep_last is None:
            return
        for p in self.checkpoints()[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None: it can). A checkpoint is renamed into place
    only when complete, but a disk can still lose or truncate files afterwards."""
    try:
        state = json.loads((ckpt / "controller.json").read_text())
        int(state["step"])
        state["cursor"]
    except FileNotFoundError:
        return "no controller.json"
    except (ValueError, KeyError, TypeError) as e:
        return f"controller.json unreadable ({type(e).__name__}: {e})"
    for need in ("adapter.safetensors", "adapter.json", "deepspeed"):
        if not (ckpt / need).exists():
            return f"missing {need}"
    if (ckpt / "adapter.safetensors").stat().st_size == 0:
        return "adapter.safetensors is empty"
    return _manifest_problem(ckpt)


def _manifest_problem(ckpt: Path) -> str | None:
    """A file the manifest lists that is gone or has another size (checkpoints written before
    the manifest existed have none and pass)."""
    if not (ckpt / MANIFEST).exists():
        return None
    try:
        sizes = json.loads((ckpt / MANIFEST).read_text())
        listed = {str(k): int(v) for k, v in sizes.items()}
    except (ValueError, AttributeError, TypeError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__}: {e})"
    for name, size in sorted(listed.items()):
        f = ckpt / name
        if not f.is_file():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} when written"
    return None
