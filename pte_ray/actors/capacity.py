"""Cluster capacity for the rollout pool: what it may grow to, and asking the autoscaler.

Ray's autoscaler adds nodes for actors that wait to be placed, but only once they wait, one
upscaling round at a time; ``request_resources`` tells it up front how many rollout bundles
the pool wants, and a smaller request (or none) releases them when the pool shrinks. A ceiling
the cluster could never hold is an error at start rather than a pool that silently stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ray

from pte_ray.actors.errors import PoolError
from pte_ray.config import Config

log = logging.getLogger(__name__)


def rollout_bundle(cfg: Config) -> dict[str, float]:
    rc = cfg.rollout
    return {k: v for k, v in {"CPU": rc.num_cpus, "GPU": rc.num_gpus}.items() if v > 0}


def _bundle(cpu: float, gpu: float) -> dict[str, float]:
    return {k: v for k, v in {"CPU": cpu, "GPU": gpu}.items() if v > 0}


def fixed_bundles(cfg: Config) -> list[dict[str, float]]:
    """One bundle per actor of every other role (learners, reward, reference): the autoscaler
    weighs a request against the whole cluster's load, so it must see what they take too."""
    lc, wc, fc = cfg.learner, cfg.reward, cfg.reference
    out = [_bundle(lc.num_cpus, lc.num_gpus) for _ in range(lc.num_learners)]
    out += [_bundle(wc.num_cpus, 0.0) for _ in range(wc.num_workers)]
    if cfg.reference_pool:
        out += [_bundle(fc.num_cpus, fc.num_gpus) for _ in range(fc.num_workers)]
    return out


def _fixed_ask(cfg: Config) -> dict[str, float]:
    """Everything but the rollout pool, at its start size."""
    ask = {"CPU": 0.0, "GPU": 0.0}
    lc, wc, fc = cfg.learner, cfg.reward, cfg.reference
    ask["CPU"] += lc.num_learners * lc.num_cpus + wc.num_workers * wc.num_cpus
    ask["GPU"] += lc.num_learners * lc.num_gpus
    if cfg.reference_pool:
        ask["CPU"] += fc.num_workers * fc.num_cpus
        ask["GPU"] += fc.num_workers * fc.num_gpus
    return ask


def check_placeable(cfg: Config) -> None:
    """Error when ``rollout.max_workers`` can never be placed: the cluster is fixed
    (``rollout.request_resources=false``) and too small for it beside the other roles."""
    rc = cfg.rollout
    top = rc.max_workers or rc.num_workers
    have = ray.cluster_resources()
    fixed = _fixed_ask(cfg)
    for res, per in rollout_bundle(cfg).items():
        need = fixed[res] + top * per
        if need <= have.get(res, 0.0) + 1e-9:
            continue
        msg = (
            f"rollout.max_workers={top} needs {need:g} {res} with the other roles; the cluster "
            f"has {have.get(res, 0.0):g}"
        )
        if not rc.request_resources:
            raise PoolError(msg + " and rollout.request_resources=false (it cannot grow)")
        log.warning("%s: the pool will ask Ray's autoscaler for the rest", msg)


def autoscaler_request(cfg: Config) -> Callable[[int], None] | None:
    """``on_resize(n)``: ask the autoscaler for the run at n rollout workers: n rollout bundles
    beside every other role's (0: the pool is gone, the request is released)."""
    if not cfg.rollout.request_resources or not (cfg.rollout.max_workers or 0) > 1:
        return None
    bundle, fixed = rollout_bundle(cfg), fixed_bundles(cfg)

    def on_resize(n: int) -> None:
        from ray.autoscaler.sdk import request_resources

        bundles = [*fixed, *(dict(bundle) for _ in range(n))] if n else []
        request_resources(bundles=bundles)
        log.info(
            "asked Ray's autoscaler for %d rollout bundle(s) of %s beside %d of the other roles",
            n,
            bundle,
            len(fixed),
        )

    return on_resize
