"""Ray dashboard metrics (``ray.util.metrics``) shared by every role.

Metric objects are created once per process and name; every value carries a ``role`` tag so the
dashboard can split rollout / reward / reference / learner / controller series.
"""

from __future__ import annotations

from ray.util import metrics as ray_metrics

_GAUGES: dict[str, ray_metrics.Gauge] = {}
_COUNTERS: dict[str, ray_metrics.Counter] = {}

DESCRIPTIONS = {
    "tokens_per_s": "generated tokens per second",
    "evictions": "cache evictions per sequence",
    "reward_mean": "mean reward of the step",
    "timeouts": "verifier items that timed out",
    "queue_depth": "shards waiting for a pool actor",
    "queue_wait_s": "seconds the oldest shard waited",
    "pool_size": "actors in a pool",
    "weight_version_lag": "learner version minus the version a rollout used",
    "step_s": "controller step time",
    "weight_version": "adapter version loaded",
    "pool_retries": "calls put back in a pool's queue (lost or hung actor)",
    "pool_timeouts": "calls that ran past train.call_timeout_s",
    "pool_restarts": "actors back in service after Ray restarted them",
    "pool_replacements": "actors dead for good, replaced by fresh ones",
    "pool_events": "pool decisions by kind: up, ready, down, failed, lost, hung, back, replaced",
}


def gauge(name: str, value: float, role: str, **tags: str) -> None:
    g = _GAUGES.get(name)
    if g is None:
        keys = ("role", *sorted(tags))
        g = _GAUGES[name] = ray_metrics.Gauge(
            f"pte_ray_{name}", description=DESCRIPTIONS.get(name, name), tag_keys=keys
        )
    g.set(float(value), tags={"role": role, **tags})


def count(name: str, value: float, role: str, **tags: str) -> None:
    c = _COUNTERS.get(name)
    if c is None:
        keys = ("role", *sorted(tags))
        c = _COUNTERS[name] = ray_metrics.Counter(
            f"pte_ray_{name}_total", description=DESCRIPTIONS.get(name, name), tag_keys=keys
        )
    if value > 0:
        c.inc(float(value), tags={"role": role, **tags})
