"""RolloutWorker: bounded-cache generation, always on the newest published adapter."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import ObjectLostError, ObjectReconstructionFailedError, OwnerDiedError

from pte_ray.actors import metrics
from pte_ray.actors.errors import WeightsLost
from pte_ray.actors.weights import Snapshot, unpack
from pte_ray.config import Config
from pte_ray.engines.choose import rollout_engine
from pte_ray.engines.torch_engine import pick_device
from pte_ray.records import PublishedWeights, RolloutRequest, Rollouts, WorkerInfo
from pte_ray.run.models import resolve_model
from pte_ray.run.profile import traced


class RolloutWorker:
    def __init__(self, cfg: Config, model_spec: str, worker_id: int) -> None:
        self.cfg = cfg  # validated once, by the controller
        self.worker_id = str(worker_id)
        self.model_path = resolve_model(model_spec)  # on this node (run/models.py)
        device = pick_device(self.cfg.rollout.num_gpus)
        self.engine = rollout_engine(self.cfg, self.model_path, device)
        if self.cfg.train.init_adapter:  # a stage's checkpoint (or the teacher's adapter)
            self.engine.load_dir(self.cfg.train.init_adapter)
        self.version = -1
        self.epoch = -1

    def ready(self) -> WorkerInfo:
        e = self.engine
        return WorkerInfo.here(
            "rollout", self.worker_id, device=e.device, model_path=self.model_path, engine=e.name
        )

    def loaded_versions(self) -> list[str]:
        """The adapter versions the engine holds, oldest first (vLLM: names it serves)."""
        return self.engine.loaded_versions()

    def adapter_state(self) -> tuple[int, dict[str, Any]]:
        """(version, adapter tensors) as loaded: lets callers check a publish landed."""
        return self.version, self.engine.adapter_state()

    def sync(self, weights: PublishedWeights | None) -> int:
        self._sync(weights)
        return self.version

    def _sync(self, weights: PublishedWeights | None) -> None:
        """Load version v before serving: a new or restarted worker catches up here, and after
        a learner restart (a new epoch) so does one holding a newer, lost version."""
        if weights is None or (weights.epoch, weights.version) <= (self.epoch, self.version):
            return
        try:
            snap: Snapshot = ray.get(weights.ref, timeout=self.cfg.train.call_timeout_s)
        except (ObjectLostError, OwnerDiedError, ObjectReconstructionFailedError) as e:
            raise WeightsLost(f"version {weights.epoch}.{weights.version}: {e}") from e
        self.engine.load_state(unpack(snap), tag=f"{weights.epoch}.{snap.version}")
        self.version, self.epoch = snap.version, weights.epoch
        metrics.gauge("weight_version", self.version, "rollout", worker=self.worker_id)

    def rollout(self, req: RolloutRequest) -> Rollouts:
        self._sync(req.weights)
        t0 = time.perf_counter()
        name = f"rollout-worker{self.worker_id}-{time.time_ns()}"  # a worker may take 2 calls
        with traced(req.profile, name, self.cfg.train.profile_max_mb):
            sp = self.cfg.sampling_params(row_seeds=req.seeds, greedy=req.greedy)
            out = self.engine.sample(req.prompts, sp)
        wall = time.perf_counter() - t0
        n_tok = sum(len(t) for t in out.tokens)
        me = {"worker": self.worker_id}
        metrics.count("generated_tokens", n_tok, "rollout", **me)
        metrics.gauge("tokens_per_s", n_tok / max(wall, 1e-9), "rollout", **me)
        metrics.gauge("rollout_latency_s", wall, "rollout", **me)
        metrics.gauge(
            "evictions", sum(out.evictions) / len(req.prompts), "rollout", worker=self.worker_id
        )
        return Rollouts(
            tokens=out.tokens,
            logprobs=out.logprobs,
            eviction_steps=out.eviction_steps,
            evicted_slots=out.evicted_slots or [[] for _ in out.tokens],
            finish_reasons=out.finish_reasons,
            texts=[self.engine.decode(t) for t in out.tokens],
            versions=[self.version] * len(out.tokens),
            wall_s=wall,
        )
