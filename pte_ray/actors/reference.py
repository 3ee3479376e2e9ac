"""ReferenceWorker: the frozen base model's full-context log-probs (the KL anchor)."""

from __future__ import annotations

import time

from pte_ray.actors import metrics
from pte_ray.config import Config
from pte_ray.engines.choose import reference_engine
from pte_ray.engines.torch_engine import pick_device
from pte_ray.records import ReferenceLogprobs, ReferenceRequest, WorkerInfo
from pte_ray.run.models import resolve_model
from pte_ray.run.teacher import teacher_adapter


class ReferenceWorker:
    def __init__(self, cfg: Config, model_spec: str, worker_id: int) -> None:
        self.cfg = cfg  # validated once, by the controller
        self.worker_id = str(worker_id)
        self.model_path = resolve_model(model_spec)  # on this node (run/models.py)
        device = pick_device(self.cfg.reference.num_gpus)
        teacher = teacher_adapter(self.cfg)  # reference.adapter's settings, or none
        self.engine = reference_engine(self.cfg, self.model_path, device, teacher)

    def ready(self) -> WorkerInfo:
        e = self.engine
        return WorkerInfo.here(
            "reference", self.worker_id, device=e.device, model_path=self.model_path, engine=e.name
        )

    def logprobs(self, req: ReferenceRequest) -> ReferenceLogprobs:
        t0 = time.perf_counter()
        out, ids, tops = self.engine.full_context_topk(
            req.prompts,
            req.completions,
            self.cfg.sampling.temperature,
            self.cfg.reference.micro_batch,
            req.topk,
        )
        wall = time.perf_counter() - t0
        metrics.gauge("reference_latency_s", wall, "reference", worker=self.worker_id)
        return ReferenceLogprobs(out, ids, tops)
