"""The cluster manifests hold the configs they serve: at ``rollout.max_workers`` every role
fits in the cluster's largest size, and every single actor fits on some node type (else the
pool would ask the autoscaler for workers it can never place)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pte_ray.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "cluster").glob("*.yaml"))


def _served(path: Path) -> list[Path]:
    m = re.search(r"^# serves: (.+)$", path.read_text(), re.M)
    assert m, f"{path.name}: no '# serves: launch/configs/...' line"
    return [ROOT / p for p in m.group(1).split()]


def _nodes(path: Path) -> list[tuple[dict[str, float], int]]:
    """(resources of one node, how many the cluster may have at most) per node type."""
    doc = yaml.safe_load(path.read_text())
    if "available_node_types" in doc:  # Ray cluster launcher
        return [
            (dict(t.get("resources", {})), max(t.get("max_workers", 0), 1 if n == "head" else 0))
            for n, t in doc["available_node_types"].items()
        ]
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])  # RayJob or RayCluster
    groups = [(spec["headGroupSpec"], 1)]
    groups += [(g, g["maxReplicas"]) for g in spec["workerGroupSpecs"]]
    out = []
    for group, count in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = float(group.get("rayStartParams", {}).get("num-cpus", limits.get("cpu", 0)))
        out.append(({"CPU": cpu, "GPU": float(limits.get("nvidia.com/gpu", 0))}, count))
    return out


def _actors(cfg: Config) -> list[dict[str, float]]:
    """Every actor at the pools' largest sizes, as resource bundles."""
    lc, rc, wc, fc = cfg.learner, cfg.rollout, cfg.reward, cfg.reference
    out = [{"CPU": lc.num_cpus, "GPU": lc.num_gpus}] * lc.num_learners
    out += [{"CPU": rc.num_cpus, "GPU": rc.num_gpus}] * (rc.max_workers or rc.num_workers)
    out += [{"CPU": wc.num_cpus, "GPU": 0.0}] * wc.num_workers
    if cfg.reference_pool:
        out += [{"CPU": fc.num_cpus, "GPU": fc.num_gpus}] * fc.num_workers
    return out


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_holds_the_configs_it_serves(manifest):
    nodes = _nodes(manifest)
    for path in _served(manifest):
        cfg = load_config(path)
        actors = _actors(cfg)
        for res in ("CPU", "GPU"):
            need = sum(a[res] for a in actors)
            have = sum(n.get(res, 0.0) * k for n, k in nodes)
            assert need <= have, f"{manifest.name} / {path.name}: {need} {res} > {have}"
        for a in actors:
            assert any(all(a[r] <= n.get(r, 0.0) for r in a) for n, k in nodes if k), (
                f"{manifest.name} / {path.name}: no node type holds an actor of {a}"
            )


CONFIGS = sorted({c for m in MANIFESTS for c in _served(m)})


def test_every_node_runs_the_image_the_recipe_builds_and_mounts_the_shared_storage():
    docker = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:", docker, re.M)  # a CUDA base
    assert "launch/constraints.txt" in docker and '-e ".[loggers]"' in docker
    for path in (ROOT / "cluster").glob("kuberay-*.yaml"):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for pod in pods:
            (c,) = pod["template"]["spec"]["containers"]
            assert c["image"].endswith("/pte-ray:latest") and c["workingDir"] == "/opt/pte-ray"
            assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"]
    launcher = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    assert launcher["file_mounts"] == {"~/pte-ray": "."}
    setup = " ".join(launcher["setup_commands"])
    assert "constraints.txt" in setup and "pte-ray[loggers]" in setup


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_configs_keep_data_and_runs_on_shared_storage(config):
    cfg = load_config(config)
    assert cfg.data.train.startswith("/mnt/shared/") and cfg.train.output_dir.startswith(
        "/mnt/shared/"
    )
    env = yaml.safe_load((ROOT / "launch" / "runtime_env.yaml").read_text())
    assert not any(x.endswith((".parquet", ".jsonl", ".json")) for x in env["excludes"])
