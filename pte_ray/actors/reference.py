"""ReferenceWorker: the frozen base model's full-context log-probs (the KL anchor)."""

from __future__ import annotations

import os
from typing import Any

from pte_ray.config import Config
from pte_ray.engines.torch_engine import TorchEngine, pick_device
from pte_ray.method.config import CacheConfig
from pte_ray.records import ReferenceLogprobs, ReferenceRequest


class ReferenceWorker:
    def __init__(self, cfg: dict[str, Any], model_path: str, worker_id: int) -> None:
        self.cfg = Config.model_validate(cfg)
        self.worker_id = str(worker_id)
        device = pick_device(self.cfg.reference.num_gpus)
        # pi_ref has no cache constraint: no adapter, full context.
        self.engine = TorchEngine(
            model_path, None, CacheConfig(budget=None), self.cfg.model.dtype, device
        )

    def ready(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "pid": os.getpid(), **self.engine.info()}

    def logprobs(self, req: ReferenceRequest) -> ReferenceLogprobs:
        return ReferenceLogprobs(
            self.engine.full_context_logprobs(
                req.prompts,
                req.completions,
                self.cfg.sampling.temperature,
                self.cfg.reference.micro_batch,
            )
        )
