"""Optional step loggers beside ``metrics.jsonl``: TensorBoard and Weights & Biases.

``train.loggers`` names them; each gets every numeric key of the step's metrics row (nested
dicts flattened as ``statuses/ok``). W&B runs offline by default, writing under
``RUN_DIR/wandb`` (``wandb sync`` uploads it later; a cluster node rarely reaches the
internet), or online with ``train.wandb_mode=online`` and an API key; TensorBoard
writes event files under ``RUN_DIR/tensorboard``. A logger whose package is missing fails at
start, naming the extra to install, before any actor starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

EXTRA = "pip install 'pte-ray[loggers]' (tensorboard, wandb)"


def flat(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _wandb_key() -> bool:
    """Whether W&B can log in: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def check_wandb(mode: str) -> None:
    """Online W&B needs a key: said before Ray starts, not after the first step."""
    if mode == "online" and not _wandb_key():
        raise ValueError(
            "train.wandb_mode=online needs a W&B API key: export WANDB_API_KEY (or "
            "`wandb login`), or keep train.wandb_mode=offline and `wandb sync` later"
        )


class StepLoggers:
    def __init__(self, kinds: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> None:
        self.tb: Any = None
        self.wandb: Any = None
        if "tensorboard" in kinds:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(f"train.loggers=tensorboard needs tensorboard: {EXTRA}") from e
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in kinds:
            try:
                import wandb
            except ImportError as e:
                raise ImportError(f"train.loggers=wandb needs wandb: {EXTRA}") from e
            train = config.get("train", {})
            mode = train.get("wandb_mode", "offline")
            check_wandb(mode)
            (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
            self.wandb = wandb.init(
                mode=mode,
                dir=str(run_dir),
                project=train.get("wandb_project", "pte-ray"),
                name=run_dir.name,
                config=config,
                reinit="finish_previous",
            )

    def log(self, row: dict[str, Any]) -> None:
        step, values = int(row["step"]), flat(row)
        values.pop("step", None)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
