"""Learner: one rank of the DeepSpeed data-parallel group that trains the adapter with GRPO.

Segment replay back-propagates once per segment, which does not fit DeepSpeed's one
``backward`` per micro-step. So each step replays into a plain *shadow* copy of the adapter
(gradients accumulate there, micro-batch by micro-batch), then hands DeepSpeed one surrogate
loss ``sum(p * g)`` whose gradient is exactly that accumulated gradient: DeepSpeed then does
what it is for (ZeRO partitioning, all-reduce over ranks, clipping, the optimizer) unchanged.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from datetime import timedelta
from math import isnan
from pathlib import Path
from typing import Any

import torch

from pte_ray.actors import metrics
from pte_ray.actors.learner_setup import (
    accumulate_into,
    deepspeed_config,
    lr_schedule,
    param_groups,
    peak_mb,
)
from pte_ray.actors.weights import Snapshot, pack
from pte_ray.config import Config
from pte_ray.engines.torch_engine import pick_device, resolve_dtype
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_adapter, load_base, save_adapter
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec
from pte_ray.records import (
    LearnerShard,
    LearnStats,
    LossStats,
    SFTShard,
    WorkerInfo,
)
from pte_ray.rl.objective import GRPOObjective, Objective, SFTObjective
from pte_ray.run.models import resolve_model
from pte_ray.run.profile import traced


class Learner:
    def __init__(
        self, cfg: Config, model_spec: str, rank: int, world: int, addr: str, port: int
    ) -> None:
        import deepspeed

        self.cfg = cfg  # validated once, by the controller
        self.rank, self.world = rank, world
        device = pick_device(self.cfg.learner.num_gpus)
        os.environ.update(
            MASTER_ADDR=addr,
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK="0",
        )
        backend = "nccl" if device == "cuda" else "gloo"
        if not torch.distributed.is_initialized():
            # A collective whose peer died fails after this instead of gloo/NCCL's 30 min: the
            # controller then restarts the group (train.max_learner_restarts).
            timeout = timedelta(seconds=self.cfg.train.call_timeout_s)
            torch.distributed.init_process_group(
                backend, rank=rank, world_size=world, timeout=timeout
            )
        self.model_path = resolve_model(model_spec)  # on this node (run/models.py)
        dtype = resolve_dtype(self.cfg.model.dtype, device)
        self.model = load_base(self.model_path, dtype, device)
        acfg = self.cfg.adapter_config()
        if not acfg.has_adapter:
            raise ValueError(
                "adapter.method=base has nothing to train; use lora, lora_c, global_only or pte"
            )
        adapter = Adapter(self.model.args, acfg, self.model.dtype, device)
        if self.cfg.train.init_adapter:  # a stage's checkpoint: this run continues from it
            load_adapter(adapter, self.cfg.train.init_adapter)
        self.shadow = copy.deepcopy(adapter)
        # Replay runs hundreds of backwards per step; summing them in a bf16 ``.grad`` loses
        # ~2.6% (measured), so each backward's gradient is moved into an fp32 accumulator.
        self.grad_acc = [torch.zeros_like(q, dtype=torch.float32) for q in self.shadow.parameters()]
        for q, acc in zip(self.shadow.parameters(), self.grad_acc):
            q.register_post_accumulate_grad_hook(accumulate_into(acc))
        o = self.cfg.optim
        ds_cfg = deepspeed_config(self.cfg, self.model.dtype)
        self.engine, _, _, _ = deepspeed.initialize(
            model=adapter,
            model_parameters=param_groups(adapter, o.lr, o.encoder_lr_scale),
            config=ds_cfg,
            lr_scheduler=lambda opt: lr_schedule(opt, self.cfg),
        )
        self.version = 0

    def ready(self) -> WorkerInfo:
        return WorkerInfo.here(
            "learner", str(self.rank), device=str(self.model.device), model_path=self.model_path
        )

    def train_step(self, shard: LearnerShard) -> LearnStats:
        """One GRPO step on this rank's shard (all ranks call it together)."""
        g, k = self.cfg.grpo, self.cfg.learner.mini_batches
        behavior = g.behavior
        if behavior == "auto":  # half precision: rollout and replay disagree by ~1e-2
            behavior = "learner" if self.model.dtype != torch.float32 else "rollout"
        old = None
        if behavior == "learner" and k > 1:  # pi_old before the first of k updates
            old = self._logprobs(GRPOObjective(shard, g))
        job = GRPOObjective(
            shard, g, self.cfg.distill, self.cfg.sampling.temperature, behavior, old
        )
        return self._step(job, k)

    def sft_step(self, shard: SFTShard) -> LearnStats:
        """One supervised step on this rank's targets: one optimizer step, teacher-forced."""
        return self._step(SFTObjective(shard), 1)

    def _step(self, job: Objective, k: int) -> LearnStats:
        """``k`` optimizer steps over the shard's rows.

        Each mini-batch's loss is normalised by its size summed over ranks (one all-reduce), so
        ranks with uneven shards still weigh every token alike.
        """
        t0 = time.perf_counter()
        n = len(job.completions)
        bounds = [round(n * j / k) for j in range(k + 1)]
        parts: list[tuple[LossStats, float]] = []
        diff = 0.0
        with traced(job.profile, f"learner-rank{self.rank}", self.cfg.train.profile_max_mb):
            for j in range(k):
                stats, d = self._optimizer_step(job, range(bounds[j], bounds[j + 1]))
                diff = d if j == 0 else diff  # later mini-batches see updated weights on purpose
                parts.append((stats, 1.0))
        stats = LossStats.combine(parts, sum_loss=False)
        stats = replace(stats, loss=stats.loss / self.world)  # ranks sum to the batch's loss
        self.version += 1
        norm = self.engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else float("nan")
        me = {"worker": str(self.rank)}
        metrics.gauge("learner_step_s", time.perf_counter() - t0, "learner", **me)
        metrics.gauge("loss", stats.loss, "learner", **me)
        metrics.gauge("kl", 0.0 if isnan(stats.kl) else stats.kl, "learner", **me)
        metrics.gauge("grad_norm", 0.0 if isnan(grad_norm) else grad_norm, "learner", **me)
        return LearnStats(stats, grad_norm, diff, n, self.version, peak_mb(self.model.device))

    def _optimizer_step(self, job: Objective, part: range) -> tuple[LossStats, float]:
        """Replay ``part`` micro-batch by micro-batch into the shadow, then one DeepSpeed step."""
        live = list(self.engine.module.parameters())
        with torch.no_grad():
            for s, p, acc in zip(self.shadow.parameters(), live, self.grad_acc):
                s.copy_(p)
                s.grad = None
                acc.zero_()
        # on the collective's device: NCCL serves only CUDA tensors, gloo any
        total = torch.tensor([job.size(part)], device=self.model.device)
        torch.distributed.all_reduce(total)  # this mini-batch's size over all ranks
        parts: list[tuple[LossStats, float]] = []
        diff = 0.0
        mb = self.cfg.learner.micro_batch
        for lo in range(part.start, part.stop, mb):
            stats, d, local = self._micro_batch(job, slice(lo, min(part.stop, lo + mb)), total)
            diff = max(diff, d)
            parts.append((stats, local))
        # Every parameter gets a gradient, zero where replay left none (an empty part, a frozen
        # path): under ZeRO-2 every rank must reduce the same buckets, or the ranks hang.
        surrogate = sum((p * acc.to(p.dtype)).sum() for p, acc in zip(live, self.grad_acc))
        self.engine.backward(surrogate)
        self.engine.step()
        return LossStats.combine(parts, sum_loss=True), diff

    def _micro_batch(
        self, job: Objective, sl: slice, total: torch.Tensor
    ) -> tuple[LossStats, float, float]:
        """Replay one micro-batch with its share of the loss: (stats, replay diff, weight)."""
        local = job.size(range(*sl.indices(len(job.completions))))
        # DeepSpeed averages gradients over ranks: scale by world so the sum is global.
        loss_fn = job.loss(sl, local / max(float(total), 1e-12) * self.world, self.model.device)
        res = self._replay(job, sl, self.shadow, loss_fn)
        big, mean = job.replay_diff(sl, res.logprobs)
        return replace(loss_fn.stats(), replay_mean_diff=mean), big, local

    def _replay(self, job: Objective, sl: slice, adapter: Any, loss_fn: Any = None) -> Any:
        """Segment replay of rows ``sl`` (with grad into ``adapter`` when given a loss)."""
        cfg, comps = self.cfg, job.completions[sl]
        steps, slots = job.record(sl)
        # a target may be longer than any rollout (SFT): a full cache must still hold it
        longest = max(len(c) for c in comps)
        req = DecodeRequest(job.prompts[sl], cfg.cache_config(), job.pad_id)
        spec = ReplaySpec(
            cfg.sampling.temperature,
            max(cfg.sampling.max_new_tokens, longest),
            steps,
            slots,
            cfg.replay.grad,
        )
        return replay(self.model, adapter, req, comps, spec, loss_fn)

    def _logprobs(self, job: Objective) -> list[list[float]]:
        """The live adapter's log-probs of every row, no grad: the learner's own pi_old."""
        out: list[list[float]] = []
        mb, n = self.cfg.learner.micro_batch, len(job.completions)
        with torch.no_grad():
            for lo in range(0, n, mb):
                res = self._replay(job, slice(lo, min(n, lo + mb)), self.engine.module)
                comps = job.completions[lo : lo + mb]
                out += [res.logprobs[i, : len(c)].tolist() for i, c in enumerate(comps)]
        return out

    def snapshot(self) -> Snapshot:
        """Rank 0: the adapter, versioned and packed (``LearnerGroup.publish`` puts it in the
        object store from the controller, so a version outlives the learner that made it)."""
        return pack(self.engine.module.state_dict(), self.version)

    def optimizer_lrs(self) -> list[float]:
        """Each optimizer parameter group's learning rate, as DeepSpeed's optimizer holds it."""
        return [float(g["lr"]) for g in self.engine.optimizer.param_groups]

    def state_digest(self) -> dict[str, float]:
        """Sums of every adapter tensor: lets tests and the controller compare ranks cheaply."""
        return {k: float(v.double().sum()) for k, v in self.engine.module.state_dict().items()}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items()}

    def save(self, ckpt_dir: str, meta: dict[str, Any]) -> None:
        """All ranks: DeepSpeed state (optimizer partitions); rank 0 also the adapter files."""
        d = Path(ckpt_dir)
        self.engine.save_checkpoint(
            str(d / "deepspeed"), tag="state", client_state={"version": self.version}
        )
        if self.rank == 0:
            save_adapter(self.engine.module, d, {**meta, "version": self.version})

    def load(self, ckpt_dir: str) -> int:
        _, client = self.engine.load_checkpoint(str(Path(ckpt_dir) / "deepspeed"), tag="state")
        self.version = int((client or {}).get("version", 0))
        return self.version
