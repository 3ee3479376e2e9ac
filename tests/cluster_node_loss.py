"""Run by ``test_node_loss.py`` in a subprocess: a two-node ``ray.cluster_utils.Cluster``,
one 6-step run on it, node A (the learner's) removed after step 3. Prints ``RESULT {json}``:
the nodes, where the roles were before and after, restarts and redone steps.

``Cluster`` adds and removes nodes from the main thread only, so the controller starts and
trains in a thread while the main thread changes the cluster.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.util import placement_group_table

from pte_ray.config import load_config
from pte_ray.controller.loop import fit
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir


def in_thread(fn: Callable[[], Any], box: dict[str, Any]) -> threading.Thread:
    """``fn()`` in a daemon thread; its result or exception lands in ``box``."""

    def run() -> None:
        try:
            box["out"] = fn()
        except BaseException as e:
            box["err"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def where(ctl: Controller) -> dict[str, list[str]]:
    r = ctl.roles
    return {
        "learner": [i.node_id for i in r.learners.info],
        "rollout": sorted(i.node_id for i in r.rollout.info.values()),
        "reward": [i.node_id for i in r.reward.info.values()],
    }


def start(cluster: Cluster, over: list[str], nodes: dict[str, str]) -> Controller:
    """The roles, with node B added once the learners and rollout worker 0 fill node A (worker
    1 waits for B: it and the rest go there)."""
    cfg, made = load_config(None, over), {}
    t = in_thread(lambda: Controller(cfg, RunDir.open(cfg, None)), made)
    deadline = time.monotonic() + 300
    while not (
        any(p["state"] == "CREATED" for p in placement_group_table().values())
        and ray.available_resources().get("CPU", 0.0) < 1e-6
    ):
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError(f"node A was not filled: {made}")
        time.sleep(0.05)
    nodes["b"] = cluster.add_node(num_cpus=2).node_id
    t.join(600)
    if "out" not in made:
        raise RuntimeError(f"the roles did not start: {made}")
    return made["out"]


def main() -> None:
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": health},
    )
    node_a = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = {"a": node_a.node_id}
    ctl = start(cluster, json.loads(sys.argv[1]), nodes)
    before, ran = where(ctl), {}
    try:
        t = in_thread(lambda: fit(ctl), ran)
        while len(ctl.run.read_metrics()) < 3 and t.is_alive():
            time.sleep(0.02)
        cluster.remove_node(node_a)  # its raylet and every process on it die
        t.join(600)
        if "out" not in ran:
            raise RuntimeError(f"the run did not finish: {ran}")
        after = {"learner": [i.node_id for i in ctl.roles.learners.info]}
        s = ctl.state
    finally:
        ctl.shutdown()
        ray.shutdown()
        cluster.shutdown()
    out = {"nodes": nodes, "before": before, "after": after}
    out |= {"learner_restarts": s.learner_restarts, "steps_redone": s.steps_redone}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
