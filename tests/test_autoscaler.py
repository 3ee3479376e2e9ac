"""Ray's real autoscaler (fake nodes on this machine, Ray's "Testing Autoscaling Locally"): the
rollout pool's ``request_resources`` adds nodes before any worker waits, and releasing the
request lets the idle nodes go; a pool growing past the cluster gets its worker placed.

``AutoscalingCluster.start`` runs ``ray stop --force``, which would kill every Ray cluster on
the machine (this session's, a parallel run's), and its config template is not in the wheel:
the head is started here by hand from the same config, on its own port and temp dir, in a
subprocess (this test process is already connected to the session's cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile, time
    import ray
    from pte_ray.actors.capacity import autoscaler_request
    from pte_ray.actors.pool import Pool, PoolSpec
    from pte_ray.config import load_config

    tmp, port = sys.argv[1], sys.argv[2]
    cpu2 = {"resources": {"CPU": 2, "object_store_memory": 200 * 2**20}, "node_config": {},
            "min_workers": 0, "max_workers": 3}
    conf = {  # what AutoscalingCluster generates (its template is not in the wheel)
        "cluster_name": "fake_multinode", "max_workers": 3, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1, "head_node_type": "ray.head.default",
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{port}"},  # else it assumes port 6379
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu2": cpu2},
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": []}
    cfg_file = os.path.join(tmp, "autoscaling.json")
    open(cfg_file, "w").write(json.dumps(conf))
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
    subprocess.check_call(["ray", "start", "--head", f"--autoscaling-config={cfg_file}",
        "--num-cpus=0", f"--port={port}", f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1",
        "--include-dashboard=false", "--disable-usage-stats"], env=env)
    ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)

    def workers(want, timeout=120):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            n = sum(1 for x in ray.nodes() if x["Alive"] and x["Resources"].get("CPU", 0) > 0)
            if n == want:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise SystemExit(f"never {want} worker nodes (last {n})")

    cfg = load_config(None, ["rollout.num_cpus=2", "rollout.max_workers=2"])
    ask = autoscaler_request(cfg)
    out = {"up_2_s": None}
    ask(2)  # no actor is waiting: only the request can add these nodes
    out["up_2_s"] = workers(2)
    ask(0)  # released: the idle nodes go after idle_timeout_minutes
    out["down_0_s"] = workers(0, timeout=180)

    class W:
        def ready(self):
            return os.getpid()
        def work(self, x):
            time.sleep(0.5)
            return x
    make = lambda i: ray.remote(W).options(num_cpus=2).remote()
    spec = PoolSpec("rollout", 1, min_size=1, max_size=2, scale_up_wait_s=0.2,
                    ready_timeout_s=180)
    pool = Pool(spec, make, on_resize=ask)
    out["pool_map"] = pool.map(W.work, [(i,) for i in range(40)])[:3]
    out["events"] = [e.kind for e in pool.events]
    out["nodes_with_pool"] = sum(1 for x in ray.nodes() if x["Alive"] and x["Resources"].get("CPU"))
    pool.shutdown()
    workers(0, timeout=180)

    # A busy cluster: the learner and the reward worker already fill a node. The request must
    # count them, or the autoscaler sees room that is taken and adds no node for the pool.
    busy = load_config(None, ["rollout.num_cpus=2", "rollout.max_workers=2",
                              "learner.num_cpus=1", "reward.num_cpus=1"])
    ask = autoscaler_request(busy)
    fixed = [ray.remote(W).options(num_cpus=1).remote() for _ in range(2)]
    ray.get([f.ready.remote() for f in fixed], timeout=180)  # placed on a node of their own
    out["busy_nodes_before"] = workers(1)
    ask(2)  # the run at 2 rollout workers: their 2 nodes beside the busy one, asked up front
    out["busy_up_s"] = workers(3)
    pool = Pool(spec, make, on_resize=ask)  # grows onto the nodes that are already there
    out["busy_pool_map"] = pool.map(W.work, [(i,) for i in range(40)])[:3]
    out["busy_events"] = [e.kind for e in pool.events]
    pool.shutdown()  # the request is released: the rollout nodes go, the busy one stays
    out["busy_down_s"] = workers(1, timeout=180)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow  # a second Ray cluster whose autoscaler starts and stops fake nodes
def test_request_resources_scales_the_cluster():
    from conftest import _free_port, _stop_cluster

    tmp = Path(tempfile.mkdtemp(prefix="pte-as-"))  # short: Ray's socket paths are <= 107 bytes
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp), str(_free_port())],
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},  # loopback only, as conftest's
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        _stop_cluster(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and line, done.stderr[-4000:]
    out = json.loads(line[0].removeprefix("RESULT "))
    print(out)
    assert out["up_2_s"] is not None and out["down_0_s"] >= 0
    assert out["pool_map"] == [0, 1, 2]
    assert out["busy_up_s"] is not None and out["busy_pool_map"] == [0, 1, 2]
    assert "up" in out["busy_events"] and out["busy_down_s"] >= 0
    assert (
        out["events"][:2] == ["up", "ready"] and out["nodes_with_pool"] == 3
    )  # the pool's 2 + the other roles' bundles
