"""Shared fixtures: real tiny HF checkpoints on disk, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pte_ray.env import apply_defaults

apply_defaults()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture
def noisy_adapter():
    """``make(model)``: a frozen pte adapter with every parameter moved off its init (A != 0),
    so the state path changes what decode computes."""
    from pte_ray.method.adapter import Adapter
    from pte_ray.method.config import AdapterConfig

    def make(model):
        cfg = AdapterConfig(method="pte", rank=4, global_tokens=8)
        a = Adapter(model.args, cfg, model.dtype, model.device)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in a.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        return a.requires_grad_(False)

    return make


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory):
    """``random_ckpt(arch)`` -> path of a random tiny checkpoint of that architecture."""
    from pte_ray.tiny import random_checkpoint

    made: dict[str, Path] = {}

    def get(arch: str = "qwen2") -> Path:
        if arch not in made:
            made[arch] = random_checkpoint(tmp_path_factory.mktemp(arch), arch=arch, seed=0)
        return made[arch]

    return get


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray head (with the dashboard, for job submission) for the whole session.

    Loopback only (the test command runs inside a network namespace); token auth off because
    nothing outside this machine can reach it.
    """
    import subprocess

    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    port, dash, prom = _free_port(), _free_port(), _free_port()
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    cmd = [
        "ray",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={prom}",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    # metrics reach the node's Prometheus endpoint each second (default 10 s), for test_metrics
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    address, dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
    ray.init(address=address, log_to_driver=False)
    # The state API (ray.util.state) finds its cluster by looking for Ray processes: with
    # another test run's cluster on the machine it finds two and refuses. Point it at this one.
    api_env = "RAY_API_SERVER_ADDRESS"
    old_api = os.environ.get(api_env)
    os.environ[api_env] = dashboard
    try:
        yield {
            "address": address,
            "dashboard": dashboard,
            "metrics": f"http://127.0.0.1:{prom}/metrics",
        }
    finally:
        if old_api is None:
            os.environ.pop(api_env, None)
        else:
            os.environ[api_env] = old_api
        ray.shutdown()
        _stop_cluster(temp_dir)


def _stop_cluster(temp_dir: str) -> None:
    """Stops this session's cluster only. ``ray stop`` would kill every Ray process on the
    machine: another test run's cluster (CI beside a developer's run) or a user's own."""
    import psutil

    roots = [
        p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])
    ]
    procs = set(roots)
    for root in roots:
        try:
            procs.update(root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs), timeout=10)


@pytest.fixture(scope="session")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pte_ray.tiny.task import write_task

    return write_task(tmp_path_factory.mktemp("task") / "train.jsonl", 64, seed=0)


@pytest.fixture
def small_run(random_ckpt, task_file) -> list[str]:
    """The overrides of a seconds-long training run: random tiny checkpoint, the task file,
    2 prompts x 4 samples of 24 tokens under an 8-token budget."""
    return [
        f"model.path={random_ckpt('qwen2')}",
        f"data.train={task_file}",
        "train.prompts_per_step=2",
        "grpo.group_size=4",
        "sampling.max_new_tokens=24",
        "cache.budget=8",
    ]
