"""`pte-ray bench weights`: time from a publish to every rollout worker serving the new version.

The path a training step takes: the adapter is packed into flat buckets (``actors/weights.py``)
and put in the object store, the ``PublishedWeights`` record goes to each worker's ``sync``,
which fetches the snapshot, unpacks it and copies it into its engine; the clock stops when
every worker has answered with the new version. Real ``RolloutWorker`` actors on the bench's
model; the adapter's rank is chosen so its fp32 tensors weigh ``--size-mb`` (1, 10, 100 MB).
The snapshot is put by the driver here (in a run, by learner rank 0: the same calls).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size-mb", default="1,10,100", help="adapter sizes in MB, comma-separated")
    p.add_argument("--workers", type=int, default=2, help="measure 1..N rollout workers")
    p.add_argument("--repeats", type=int, default=7, help="publishes per point (median kept)")
    p.add_argument("--model", default="tiny", help="model.path of the workers")


def _adapter_state(model_path: str, size_mb: float) -> tuple[dict[str, torch.Tensor], int]:
    """A random lora_c adapter of about ``size_mb`` MB (fp32) on this model, and its rank."""
    from pte_ray.method.adapter import Adapter
    from pte_ray.method.checkpoint import load_base
    from pte_ray.method.config import AdapterConfig

    args = load_base(model_path, torch.float32, "cpu").args
    one = sum(p.numel() for p in Adapter(args, AdapterConfig(method="lora_c", rank=1)).parameters())
    rank = max(1, round(size_mb * 2**20 / (4 * one)))
    ad = Adapter(args, AdapterConfig(method="lora_c", rank=rank, alpha=2.0 * rank))
    return {k: torch.randn_like(v) for k, v in ad.state_dict().items()}, rank


def _point(workers: list[Any], state: dict[str, torch.Tensor], version: int) -> float:
    import ray

    from pte_ray.actors.weights import pack
    from pte_ray.records import PublishedWeights

    t0 = time.perf_counter()
    w = PublishedWeights(version, ray.put(pack(state, version)))
    got = ray.get([x.sync.remote(w) for x in workers], timeout=600)
    wall = time.perf_counter() - t0
    if got != [version] * len(workers):
        raise RuntimeError(f"workers serve versions {got}, expected {version}")
    return wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from pte_ray.actors.rollout import RolloutWorker
    from pte_ray.config import load_config
    from pte_ray.run.models import resolve_model

    if not ray.is_initialized():
        ray.init(num_cpus=max(2, args.workers), log_to_driver=False)
    path = resolve_model(args.model)
    points, version = [], 0
    for size in [float(s) for s in args.size_mb.split(",")]:
        state, rank = _adapter_state(path, size)
        over = [f"model.path={path}", "adapter.method=lora_c", f"adapter.rank={rank}"]
        cfg = load_config(None, over)
        actor = ray.remote(RolloutWorker).options(num_cpus=0.1)
        workers = [actor.remote(cfg, path, i) for i in range(args.workers)]
        ray.get([w.ready.remote() for w in workers], timeout=600)
        mb = sum(v.numel() * v.element_size() for v in state.values()) / 2**20
        for n in range(1, args.workers + 1):
            walls = []
            for _ in range(args.repeats):
                version += 1
                walls.append(_point(workers[:n], state, version))
            points.append(
                {
                    "size_mb": round(mb, 2),
                    "workers": n,
                    "rank": rank,
                    "median_ms": 1e3 * statistics.median(walls),
                    "min_ms": 1e3 * min(walls),
                    "max_ms": 1e3 * max(walls),
                }
            )
        for w in workers:
            ray.kill(w)
    return {"bench": "weights", "model": args.model, "repeats": args.repeats, "points": points}
