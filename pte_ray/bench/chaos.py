"""``pte-ray bench chaos``: a seeded killer SIGKILLs processes of every role while a run trains;
the run must finish with the adapter an undisturbed run of the same seed ends with.

Two runs of one config and seed: undisturbed, then under chaos. The killer draws a schedule up
front (seeded): kills of rollout, reward and reference workers and of learner ranks at random
steps and delays, one of a learner rank *together with every rollout worker* (what losing a GPU
node does) and one of a learner rank while a checkpoint is being written. It reads the pids it
needs when it strikes (restarted actors have new ones). Then: every step's rows are in the
rollout files whole and once, on the step's weights, and the final adapters are equal
(``torch.equal``), in synchronous mode. With ``train.max_staleness >= 1`` worker kills still
change nothing, but a learner loss drops the prefetched batch and the resumed step draws its
batch on the checkpoint's weights where the undisturbed run used a version older: the adapters
part ways from the first learner loss on, and only the row checks apply (versions within the
staleness bound).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROLES = ("rollout", "reward", "reference", "learner")
# a strike that finds every process of its role restarting (a loaded machine) looks again this
# long: a kill that hits nothing tests nothing
STRIKE_PATIENCE_S = 10.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=40, help="steps of each run")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs in the chaos run")
    p.add_argument("--seed", type=int, default=0, help="seed of the run and of the killer")
    p.add_argument("--out", default=None, help="directory of both runs (default a temp dir)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the runs' config")


def schedule(kills: int, steps: int, seed: int) -> list[tuple[int, float, str]]:
    """Per kill: (steps done since the previous kill, fraction of a step to wait then, target).
    Kills fall on distinct steps in ``1..steps-2`` and count redone steps too, so each lands
    in a run that is making progress and all land before it ends. Targets cycle through the
    roles; one is ``node`` (a learner rank and every rollout worker at once), one
    ``checkpoint`` (a learner rank while a checkpoint is written)."""
    if not 2 <= kills <= steps - 2:
        raise ValueError(f"chaos needs 2 <= kills <= steps - 2, got {kills} kills, {steps} steps")
    rng = random.Random(seed)
    at = sorted(rng.sample(range(1, steps - 1), kills))
    targets = [ROLES[i % len(ROLES)] for i in range(kills)]
    node, ckpt = rng.sample(range(kills), 2)
    targets[node], targets[ckpt] = "node", "checkpoint"
    gaps = [b - a for a, b in zip([0, *at], at)]
    return [(g, rng.random(), t) for g, t in zip(gaps, targets)]


class Killer(threading.Thread):
    """Carries out a schedule against a running controller's roles (same process: it reads
    the controller's step and its roles' pids when it strikes; restarted actors have new ones)."""

    def __init__(self, ctl: Any, plan: list[tuple[int, float, str]], step_s: float) -> None:
        super().__init__(daemon=True)
        self.ctl, self.plan = ctl, list(plan)
        self.step_s = step_s  # an undisturbed step's wall time: the unit of the delays
        self.done: list[tuple[int, str, int]] = []  # (step, target, processes killed)
        self.stop = threading.Event()
        self.progress = 0  # steps done, redone ones too
        self._seen = ctl.state.step

    def _watch(self) -> None:
        step = self.ctl.state.step
        self.progress += max(step - self._seen, 0)
        self._seen = step

    def _wait(self, steps: int, until: Any = None) -> bool:
        """Until ``steps`` more steps are done (or ``until()`` holds); False once stopped."""
        goal = self.progress + steps
        while self.progress < goal and not (until is not None and until()):
            if self.stop.wait(0.002):
                return False
            self._watch()
        return True

    def _writing(self) -> bool:
        return any(self.ctl.run.ckpt_root.glob(".step_*"))

    def _pids(self, target: str) -> list[int]:
        roles = self.ctl.roles
        if target in ("learner", "checkpoint"):
            return [roles.learners.info[-1].pid]
        if target == "node":
            return [roles.learners.info[0].pid, *(i.pid for i in roles.rollout.info.values())]
        pool = getattr(roles, target)
        if pool is None:  # a role this config does not start
            return []
        busy = sorted(pool.info, key=lambda a: not pool.members[a].busy)  # mid-call first
        return [pool.info[a].pid for a in busy[:1]]

    def _strike(self, target: str) -> None:
        if target == "checkpoint":  # a checkpoint being written: a rank dies mid-save
            if not self._wait(4, self._writing) or not self._writing():
                self.done.append((self.ctl.state.step, "checkpoint_missed", 0))
                return
        n, deadline = 0, time.monotonic() + STRIKE_PATIENCE_S
        while not n and time.monotonic() < deadline and not self.stop.is_set():
            n = self._kill(target)  # 0: its processes were all restarting; look again
            if not n:
                self.stop.wait(0.05)
        self.done.append((self.ctl.state.step, target, n))

    def _kill(self, target: str) -> int:
        """SIGKILLs the target's processes as they are now; how many it hit."""
        pids, n = [], 0
        try:
            pids = self._pids(target)
        except (RuntimeError, KeyError, AttributeError, IndexError):  # changed under us
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                n += 1
            except ProcessLookupError:
                continue
        return n

    def run(self) -> None:
        for gap, frac, target in self.plan:
            if not self._wait(gap) or self.stop.wait(frac * self.step_s):
                return
            self._strike(target)


def _train(
    cfg_over: list[str], out: Path, plan: list | None, step_s: float = 1.0
) -> tuple[dict, list]:
    from pte_ray.config import load_config
    from pte_ray.controller.loop import fit
    from pte_ray.controller.step import Controller
    from pte_ray.run.run_dir import RunDir

    cfg = load_config(None, [*cfg_over, f"train.output_dir={out}"])
    ctl = Controller(cfg, RunDir.open(cfg, None))
    killer = Killer(ctl, plan, step_s) if plan else None
    t0 = time.perf_counter()
    try:
        if killer is not None:
            killer.start()
        fit(ctl)
    finally:
        if killer is not None:
            killer.stop.set()
        ctl.shutdown()
    s = ctl.state
    totals = {
        "learner_restarts": s.learner_restarts,
        "steps_redone": s.steps_redone,
        "wall_s": time.perf_counter() - t0,
    }
    return totals, (killer.done if killer else [])


# Every role twice (a killed worker's items go to its twin), two learner ranks, a checkpoint
# every 2 steps (a lost group redoes at most 2), and calls that fail fast on this small model.
DEFAULTS = [
    "learner.num_learners=2",
    "learner.num_cpus=0.2",
    "grpo.kl_coef=0.05",
    "rollout.num_workers=2",
    "reward.num_workers=2",
    "reference.num_workers=2",
    "rollout.num_cpus=0.2",
    "reward.num_cpus=0.1",
    "reference.num_cpus=0.1",
    "train.save_every=2",
    "train.max_retries=4",
    "train.call_timeout_s=120",
    "train.prompts_per_step=4",
    "grpo.group_size=4",
    "sampling.max_new_tokens=96",
]


def check_rows(run: Path, steps: int, groups: int, g: int, staleness: int = 0) -> int:
    """Every step's rows whole (each group once, all its samples) and on the step's weights
    (at most ``staleness`` versions older); returns the rows checked. Raises naming the step
    otherwise."""
    from pte_ray.run.rollout_log import read_rollouts

    rows = read_rollouts(run).to_pylist()
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    if sorted(by_step) != list(range(1, steps + 1)):
        raise ValueError(f"{run}: steps with rows {sorted(by_step)}, want 1..{steps}")
    for step, rs in by_step.items():
        sizes = Counter((r["group"], r["prompt_index"]) for r in rs)
        if len(rs) != groups * g or len(sizes) != groups or set(sizes.values()) != {g}:
            raise ValueError(f"{run}: step {step} holds {len(rs)} rows in groups {sizes}")
        if not all(step - 1 - staleness <= r["version"] <= step - 1 for r in rs):
            versions = sorted({r["version"] for r in rs})
            raise ValueError(f"{run}: step {step} rows on versions {versions}")
    return len(rows)


def same_adapter(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "adapter.safetensors")), load_file(str(b / "adapter.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import ray

    from pte_ray.config import load_config

    over = [*DEFAULTS, f"train.steps={args.steps}", f"train.seed={args.seed}", *args.overrides]
    over.append(f"train.max_learner_restarts={args.kills}")
    cfg = load_config(None, over)
    out = Path(args.out or tempfile.mkdtemp(prefix="pte-chaos-"))
    plan = schedule(args.kills, args.steps, args.seed)
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    calm, _ = _train(over, out / "undisturbed", None)
    calm_rows = (out / "undisturbed" / "metrics.jsonl").read_text().splitlines()
    step_s = sum(json.loads(x)["step_s"] for x in calm_rows) / len(calm_rows)
    stormy, done = _train(over, out / "chaos", plan, step_s)
    g, groups = cfg.grpo.group_size, cfg.train.prompts_per_step
    rows = check_rows(out / "chaos", args.steps, groups, g, cfg.train.max_staleness)
    metrics = [json.loads(x) for x in (out / "chaos" / "metrics.jsonl").read_text().splitlines()]
    last = f"checkpoints/step_{args.steps:06d}"
    pools = ("rollout", "reward", "reference")
    result = {
        "bench": "chaos",
        "steps": args.steps,
        "seed": args.seed,
        "kills_planned": len(plan),
        "kills": sum(t != "checkpoint_missed" for _, t, _ in done),
        "processes_killed": sum(n for _, _, n in done),
        "kills_by_target": dict(Counter(t for _, t, _ in done)),
        "learner_restarts": stormy["learner_restarts"],
        "steps_redone": stormy["steps_redone"],
        "retries": {p: sum(m[f"{p}_retries"] for m in metrics) for p in pools},
        "worker_restarts": {p: sum(m[f"{p}_restarts"] for m in metrics) for p in pools},
        "rows_checked": rows,
        # > 0: the adapter moved every step, so equal adapters are not equal by standing still
        "grad_norm_min": min(m["grad_norm"] for m in metrics),
        "adapter_bit_identical": same_adapter(out / "undisturbed" / last, out / "chaos" / last),
        "wall_s_undisturbed": calm["wall_s"],
        "wall_s_chaos": stormy["wall_s"],
        "strikes": [{"step": st, "target": t, "processes": n} for st, t, n in done],
        "out": str(out),
    }
    # also on disk: Ray prints its own lines about the killed workers on stdout
    (out / "chaos.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
