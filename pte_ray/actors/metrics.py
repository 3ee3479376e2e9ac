"""Ray dashboard metrics (``ray.util.metrics``) shared by every role.

Every metric is declared once here (``METRICS``: name -> kind and help); emitting an undeclared
one is an error, so the list is what the code exports and what the Grafana board
(``cluster/grafana/``) may reference (``prometheus_names``). Each value carries a ``role`` tag
(rollout / reward / reference / learner / controller) and, from a worker, its ``worker`` id.
Ray exports them on each node's metrics port as ``ray_pte_ray_<name>`` (counters ``..._total``).
"""

from __future__ import annotations

import logging
import threading

from ray.util import metrics as ray_metrics

log = logging.getLogger(__name__)
_GAUGES: dict[str, ray_metrics.Gauge] = {}
_COUNTERS: dict[str, ray_metrics.Counter] = {}
# Ray (2.60, OpenTelemetry) exports a gauge only in the report interval it was set in: a value
# set once (a worker between calls, the last step's reward) vanished from Prometheus seconds
# later (tests/test_metrics.py saw none of them). So every process re-sets its gauges' last
# values on a daemon thread: a dashboard shows the last known value, as users expect.
_LAST: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_LOCK = threading.Lock()
_REFRESH_S = 2.0
_refresher: threading.Thread | None = None


def _refresh_forever() -> None:
    while True:
        threading.Event().wait(_REFRESH_S)
        with _LOCK:
            last = list(_LAST.items())
        for (name, tags), value in last:
            _GAUGES[name].set(value, tags=dict(tags))


G, C = "gauge", "counter"
METRICS: dict[str, tuple[str, str]] = {
    # rollout workers
    "generated_tokens": (C, "tokens generated"),
    "tokens_per_s": (G, "generated tokens per second (a worker's last call; controller: step)"),
    "evictions": (G, "cache evictions per sequence"),
    "rollout_latency_s": (G, "seconds of a worker's last rollout call"),
    "weight_version": (G, "adapter version loaded (rollout) or published (controller)"),
    # reward and reference workers
    "verifier_status": (C, "scored completions by verifier status"),
    "timeouts": (C, "verifier items that timed out"),
    "reference_latency_s": (G, "seconds of a reference worker's last call"),
    # learner ranks
    "learner_step_s": (G, "seconds of a rank's last RL step"),
    "loss": (G, "GRPO loss of the step"),
    "kl": (G, "k3 KL to the reference policy"),
    "grad_norm": (G, "global gradient norm before clipping"),
    # controller, per step
    "reward_mean": (G, "mean reward of the step"),
    "nll": (G, "SFT stage: token-mean NLL of the step's targets"),
    "zero_adv_groups": (G, "fraction of a step's groups whose rewards were all equal"),
    "truncated_frac": (G, "fraction of a step's completions cut at sampling.max_new_tokens"),
    "completion_tokens": (G, "completion length of a step (tag stat: mean or max)"),
    "eval_accuracy": (G, "held-out greedy accuracy (train.eval_every; subset all or d2plus)"),
    "weight_version_lag": (G, "learner version minus the oldest version a step's rollouts used"),
    "staleness_mean": (G, "versions behind the weights they were learned on, mean over rows"),
    "phase_s": (G, "seconds of a step's phase (rollout, reward_ref, learn, publish, step, wall)"),
    "learner_restarts": (C, "learner groups replaced and resumed in the job"),
    # pools
    "queue_depth": (G, "shards waiting for a pool actor"),
    "queue_wait_s": (G, "seconds the oldest shard waited"),
    "pool_size": (G, "actors in a pool"),
    "pool_retries": (C, "calls put back in a pool's queue (lost or hung actor)"),
    "pool_timeouts": (C, "calls that ran past train.call_timeout_s"),
    "pool_restarts": (C, "actors back in service after Ray restarted them"),
    "pool_replacements": (C, "actors dead for good, replaced by fresh ones"),
    "pool_events": (
        C,
        "pool decisions by kind (up, ready, down, failed, lost, hung, back, replaced, respawn)",
    ),
}


def prometheus_names() -> set[str]:
    """The series names Prometheus holds for the declared metrics."""
    return {f"ray_pte_ray_{n}" + ("_total" if k == C else "") for n, (k, _) in METRICS.items()}


def _declared(name: str, kind: str) -> str:
    if METRICS.get(name, ("", ""))[0] != kind:
        raise KeyError(f"metric {name!r} is not declared as a {kind} in actors/metrics.py")
    return METRICS[name][1]


def _tags(role: str, tags: dict[str, str]) -> dict[str, str]:
    """Every series of a metric carries the same keys, whichever process emits it: role,
    worker (``driver`` for the controller and the pools it runs) and the metric's own. Label
    sets that differ between processes made Ray's exporter drop the gauges (seen in the
    Prometheus test: rollout workers and the controller both set ``tokens_per_s``)."""
    return {"role": role, "worker": "driver", **tags}


def gauge(name: str, value: float, role: str, **tags: str) -> None:
    global _refresher
    full = _tags(role, tags)
    g = _GAUGES.get(name)
    if g is None:
        g = _GAUGES[name] = ray_metrics.Gauge(
            f"pte_ray_{name}", description=_declared(name, G), tag_keys=tuple(sorted(full))
        )
    g.set(float(value), tags=full)
    with _LOCK:
        _LAST[(name, tuple(sorted(full.items())))] = float(value)
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_forever, name="gauges", daemon=True)
            _refresher.start()


def _counter(name: str, full: dict[str, str]) -> ray_metrics.Counter:
    c = _COUNTERS.get(name)
    if c is None:
        c = _COUNTERS[name] = ray_metrics.Counter(
            f"pte_ray_{name}_total", description=_declared(name, C), tag_keys=tuple(sorted(full))
        )
    return c


def count(name: str, value: float, role: str, **tags: str) -> None:
    full = _tags(role, tags)
    c = _counter(name, full)
    if value > 0:
        c.inc(float(value), tags=full)


def zero(name: str, role: str, **tags: str) -> None:
    """Export counter ``name`` at 0 now, so its first event is a visible step from 0 (a series
    that appears at 1 reads as no increase to Prometheus' ``increase``/``rate``)."""
    full = _tags(role, tags)
    try:
        _counter(name, full)._record(0.0, tags=full)  # ``inc`` refuses 0; a private door
    except Exception as e:  # a metric must never stop a run
        log.debug("could not export %s at 0: %s", name, e)


PHASES = ("rollout_s", "reward_ref_s", "learn_s", "publish_s", "eval_s", "step_s", "wall_s")


def export_step(row: dict[str, float]) -> None:
    """The controller's per-step figures from its ``metrics.jsonl`` row."""
    plain = (
        "reward_mean",
        "staleness_mean",
        "tokens_per_s",
        "weight_version",
        "nll",
        "zero_adv_groups",
        "truncated_frac",
    )
    for key in plain:
        if key in row:  # the SFT stage has no rewards or rollouts, GRPO no target NLL
            gauge(key, row[key], "controller")
    for stat in ("mean", "max"):
        if f"completion_tokens_{stat}" in row:
            gauge("completion_tokens", row[f"completion_tokens_{stat}"], "controller", stat=stat)
    if "rollout_version_min" in row:
        # the version learned on (one before the one just published) minus the oldest rollout's
        lag = row["weight_version"] - 1 - row["rollout_version_min"]
        gauge("weight_version_lag", lag, "controller")
    for key in ("eval_acc", "eval_acc_d2plus"):
        if key in row:
            gauge(
                "eval_accuracy",
                row[key],
                "controller",
                subset=key.removeprefix("eval_acc_") if key != "eval_acc" else "all",
            )
    for key in PHASES:
        if key in row:
            gauge("phase_s", row[key], "controller", phase=key.removesuffix("_s"))
