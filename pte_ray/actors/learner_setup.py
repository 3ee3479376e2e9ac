"""How a learner rank's DeepSpeed engine is built: parameter groups, its config, the learning-rate
schedule, the fp32 gradient accumulator, and the memory figure it reports.

Kept apart from ``learner.py`` (what a step does) because it is set once and read rarely.
"""

from __future__ import annotations

from typing import Any

import torch

from pte_ray.config import Config
from pte_ray.rl.schedule import lr_factor


def peak_mb(device: torch.device) -> float:
    """This learner's peak memory so far: CUDA allocations, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def param_groups(adapter: torch.nn.Module, lr: float, encoder_scale: float) -> list[dict]:
    """The LoRA factors at ``lr``; the thought encoder (if any) at ``lr * encoder_scale``."""
    enc = [p for n, p in adapter.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in adapter.named_parameters() if not n.startswith("encoder.")]
    return [{"params": rest}] + ([{"params": enc, "lr": lr * encoder_scale}] if enc else [])


def accumulate_into(acc: torch.Tensor):
    """A post-accumulate-grad hook: add the fresh gradient to ``acc`` in fp32, clear ``.grad``."""

    def hook(p: torch.Tensor) -> None:
        assert p.grad is not None
        acc.add_(p.grad.float())
        p.grad = None

    return hook


def deepspeed_config(cfg: Config, dtype: torch.dtype) -> dict[str, Any]:
    """One optimizer step per RL mini-batch: replay already accumulated the gradient."""
    o = cfg.optim
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "weight_decay": o.weight_decay,
                "torch_adam": True,
            },
        },
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": cfg.learner.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 1 << 30,
    }


def lr_schedule(optimizer: Any, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """``optim.schedule`` over every optimizer step of the run (DeepSpeed steps it and keeps
    its state in checkpoints, so a resumed run continues on the same curve)."""
    o, t = cfg.optim, cfg.train
    total = t.steps * (cfg.learner.mini_batches if t.stage == "grpo" else 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
    )
