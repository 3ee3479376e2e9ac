"""Metrics proven end to end: a few real training steps, then every declared series read back
from the node's Prometheus endpoint (``ray start --metrics-export-port``), tagged by role and
worker; the Grafana board references only series the code exports."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from pte_ray.actors.metrics import METRICS, prometheus_names
from pte_ray.config import load_config
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir

BOARD = Path(__file__).parent.parent / "cluster" / "grafana" / "pte-ray.json"
# Every counter is exported at 0 from the start, so every series is there; but the SFT stage's
# (tests/test_stages.py reads it from metrics.jsonl).
NEEDS_OTHER_STAGE = {"nll"}


def _series(url: str) -> dict[str, list[dict[str, str]]]:
    """Prometheus text format -> name -> the label sets of its samples."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
        if m and m.group(1).startswith("ray_pte_ray_"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            out.setdefault(m.group(1), []).append(labels)
    return out


def test_every_role_exports_its_series_to_prometheus(ray_cluster, small_run, task_file, tmp_path):
    over = [
        *small_run,
        "grpo.kl_coef=0.05",
        "train.steps=3",
        f"output_dir={tmp_path / 'run'}",
        "train.profile_steps=[2]",
        "train.eval_every=1",
        f"train.eval_bench={task_file}",
        "train.eval_limit=4",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        ctl.publish()
        ctl.train_step(0)
        # a lost rollout worker: its next call goes back to the queue, Ray restarts it
        aid, info = next(iter(ctl.roles.rollout.info.items()))
        os.kill(info.pid, signal.SIGKILL)
        ctl.publish()
        ctl.train_step(1)
        # read while the actors live: a gauge leaves the endpoint with its process
        want = {
            n
            for n in prometheus_names()
            if n.removeprefix("ray_pte_ray_").removesuffix("_total") not in NEEDS_OTHER_STAGE
        }
        deadline, got = time.monotonic() + 60, {}
        while time.monotonic() < deadline:  # the agent exports each second (conftest)
            got = _series(ray_cluster["metrics"])
            if want <= set(got):
                break
            time.sleep(2)
    finally:
        ctl.shutdown()
    assert want <= set(got), f"missing in Prometheus: {sorted(want - set(got))}"
    _every_panel_has_data(got)
    roles = {lab.get("role") for samples in got.values() for lab in samples}
    assert {"rollout", "reward", "reference", "learner", "controller"} <= roles
    for name in ("ray_pte_ray_tokens_per_s", "ray_pte_ray_loss", "ray_pte_ray_reference_latency_s"):
        workers = [lab for lab in got[name] if lab.get("role") != "controller"]
        assert workers and all(lab["worker"] not in ("", "driver") for lab in workers), name
    statuses = {lab["status"] for lab in got["ray_pte_ray_verifier_status_total"]}
    assert statuses, "no verifier status counted"
    assert {lab["phase"] for lab in got["ray_pte_ray_phase_s"]} >= {"rollout", "learn", "step"}
    # step 2 was profiled (rollout and learner), step 1 not
    traces = sorted(p.name for p in (tmp_path / "run" / "profiles").rglob("*.pt.trace.json.gz"))
    assert [p.parent.name for p in (tmp_path / "run" / "profiles").rglob("*.gz")][0] == (
        "step_000002"
    )
    assert any(t.startswith("rollout-worker") for t in traces), traces
    assert "learner-rank0.pt.trace.json.gz" in traces
    for f in (tmp_path / "run" / "profiles").rglob("*.gz"):
        events = json.loads(gzip.decompress(f.read_bytes()))["traceEvents"]
        assert len(events) > 10, f


def _every_panel_has_data(got: dict[str, list[dict[str, str]]]) -> None:
    """Each query of the board names series with label matchers; a sample with those labels
    must be in the scrape (``nll`` only in an SFT run)."""
    board = json.loads(BOARD.read_text())
    for panel in board["panels"]:
        for t in panel["targets"]:
            for name, labels in re.findall(r"(ray_pte_ray_\w+)(?:\{([^}]*)\})?", t["expr"]):
                if name.removeprefix("ray_pte_ray_") in NEEDS_OTHER_STAGE:
                    continue
                want = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                have = got.get(name, [])
                assert any(want.items() <= lab.items() for lab in have), (panel["title"], name)


def test_a_trace_over_its_cap_is_dropped(tmp_path, caplog):
    import torch

    from pte_ray.run.profile import traced

    with traced(str(tmp_path), "kept", max_mb=50):
        torch.randn(64, 64) @ torch.randn(64, 64)
    with traced(str(tmp_path), "big", max_mb=1e-6):
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.pt.trace.json.gz"]
    assert "profile_max_mb" in caplog.text


def test_grafana_board_loads_and_uses_only_exported_series():
    board = json.loads(BOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(board["panels"]) >= 6 and exprs
    used = {m for e in exprs for m in re.findall(r"\b(ray_pte_ray_\w+)", e)}
    assert used and used <= prometheus_names(), sorted(used - prometheus_names())
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for what in (
        "throughput",
        "reward",
        "staleness",
        "pool size",
        "phase",
        "pool events",
        "verifier timeouts",
    ):
        assert what in titles, what
    for p in board["panels"]:  # a title that names a window names the query's window
        m = re.search(r"per (\d+) min", p["title"])
        for t in p["targets"]:
            if "[" in t["expr"] and m:
                assert f"[{m.group(1)}m]" in t["expr"], p["title"]


def test_an_undeclared_metric_is_an_error():
    from pte_ray.actors import metrics

    with pytest.raises(KeyError, match="'no_such' is not declared"):
        metrics.gauge("no_such", 1.0, "rollout")
    with pytest.raises(KeyError, match="'loss' is not declared as a counter"):
        metrics.count("loss", 1.0, "learner")
    assert set(METRICS) >= {"generated_tokens", "weight_version_lag", "grad_norm"}
