"""`pte-ray compare`: the paper's Table 1 on one config: methods x stages x seeds, trained and
evaluated.

A method spec is ``method[+stage...][:grad][@eviction]``: ``pte`` (GRPO only), ``pte+sft`` (the
supervised stage), ``pte+sft+grpo`` (GRPO from the SFT checkpoint), ``pte+distill`` (GRPO with
on-policy distillation from the full-cache teacher), ``pte+sft+distill``; ``:exact`` /
``:truncated`` sets ``replay.grad`` for every stage of the spec, ``@rkv`` / ``@window`` the
eviction policy. Every run uses the same config, budget and seeds; only the method, the stages
and the seed change. GRPO stages read ``--config``, SFT stages ``--sft-config``; an override
``sft:key=value`` or ``grpo:key=value`` applies to that stage only. A stage prefix shared by two
specs (``pte+sft`` inside ``pte+sft+grpo``) is trained once, and a run directory that already
holds its final checkpoint is reused, so an interrupted comparison continues where it stopped.

Each final adapter is evaluated on the held-out benchmark(s) greedy and sampled (T of the
config), with accuracy per recall distance and for d >= 2 where the benchmark has distances;
with ``--ablate-fold`` every thought-state adapter is evaluated again with the fold switched off
(``name/fold-off``). ``base`` is the untrained model. Per spec: accuracy mean +- std over seeds,
learner peak memory, training wall time (all stages), and first/last training reward.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pte_ray.config import load_config

log = logging.getLogger(__name__)
METHODS = ("lora", "lora_c", "global_only", "pte")
STAGES = ("sft", "grpo", "distill")
GRAD_SUFFIXES = ("truncated", "exact")
EVICTIONS = ("window", "rkv")
MODES = ("greedy", "sampled")


@dataclass(frozen=True)
class Spec:
    name: str
    method: str
    stages: tuple[str, ...]  # () for base; ("grpo",) for a bare method
    grad: str | None
    eviction: str | None

    @property
    def dirname(self) -> str:
        return self.name.replace(":", "-").replace("@", "-")


def parse_spec(name: str) -> Spec:
    """``method[+stage...][:grad][@eviction]``, or an error naming what is wrong."""
    rest, at, eviction = name.partition("@")
    rest, colon, grad = rest.partition(":")
    method, *stages = rest.split("+")
    bad = (
        method not in (*METHODS, "base")
        or (colon and (method == "base" or grad not in GRAD_SUFFIXES))
        or (at and (method in ("lora", "base") or eviction not in EVICTIONS))
        or (method == "base" and stages)
        or any(s not in STAGES for s in stages)
        or len(set(stages)) != len(stages)
        or any(s in ("grpo", "distill") for s in stages[:-1])  # RL is the last stage
    )
    if bad:
        raise ValueError(
            f"--methods: unknown {name!r}; a spec is method[+stage...][:grad][@eviction]: "
            f"method of {', '.join(METHODS)} (or base), stages of {', '.join(STAGES)} (sft "
            f"first, then grpo or distill), grad :{' or :'.join(GRAD_SUFFIXES)} (replay.grad), "
            f"eviction @{' or @'.join(EVICTIONS)} (not for lora: full cache)"
        )
    if method != "base" and not stages:
        stages = ["grpo"]
    return Spec(name, method, tuple(stages), grad or None, eviction or None)


@dataclass(frozen=True)
class Setup:
    """What every run of one comparison shares."""

    config: str | None  # the GRPO stages' config
    sft_config: str | None  # the SFT stage's (None: config with train.stage=sft)
    overrides: list[str]  # every stage, or ``sft:`` / ``grpo:`` scoped
    out: Path
    distill_coef: float  # distill.coef of the +distill stages
    ablate_fold: bool = False  # also evaluate thought-state adapters with the fold off


def stage_overrides(
    setup: Setup, spec: Spec, stage: str, seed: int
) -> tuple[str | None, list[str]]:
    """(config file, overrides) of one stage of one spec."""
    scope = "sft" if stage == "sft" else "grpo"
    over = [o.split(":", 1)[1] if o.startswith(f"{scope}:") else o for o in setup.overrides]
    over = [o for o in over if not o.startswith(("sft:", "grpo:"))]
    over += [f"adapter.method={spec.method}", f"train.seed={seed}"]
    over += [f"replay.grad={spec.grad}"] if spec.grad else []
    over += [f"cache.eviction={spec.eviction}"] if spec.eviction else []
    if stage == "sft":
        return setup.sft_config or setup.config, [*over, "train.stage=sft"]
    over += [f"distill.coef={setup.distill_coef if stage == 'distill' else 0.0}"]
    return setup.config, over


def _finished(run: Path, steps: int) -> Path | None:
    """The run's final checkpoint, if it got there (a run to reuse)."""
    ckpt = run / "checkpoints" / f"step_{steps:06d}"
    return ckpt if (ckpt / "adapter.safetensors").is_file() else None


def _train(config: str | None, over: list[str], run: Path) -> tuple[Path, dict[str, Any]]:
    """Trains one stage into ``run`` (or reuses it); its final checkpoint and run figures."""
    from pte_ray.commands import train

    steps = load_config(config, over).train.steps
    done = _finished(run, steps)
    if done is None:
        t0 = time.perf_counter()
        resume = "auto" if (run / "checkpoints").is_dir() else None
        if resume is None and run.exists():  # stopped before its first checkpoint: start over
            aside = run.with_name(f"{run.name}.stopped-{time.strftime('%Y%m%d-%H%M%S')}")
            run.rename(aside)
            log.warning("%s stopped before its first checkpoint: kept as %s, retrained", run, aside)
        if train.main(config, [*over, f"output_dir={run}"], resume=resume) != 0:
            raise RuntimeError(f"training {run.name} failed")
        done = _finished(run, steps)
        if done is None:
            raise RuntimeError(f"training {run.name} ended without its step-{steps} checkpoint")
        (run / "wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    saved = run / "wall.json"
    wall = json.loads(saved.read_text())["wall_s"] if saved.is_file() else float("nan")
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    info = {"wall_s": wall, "learner_peak_mb": max(r.get("learner_peak_mb", 0.0) for r in m)}
    if "reward_mean" in m[0]:
        info["reward_first10"] = float(np.mean([r["reward_mean"] for r in m[:10]]))
        info["reward_last10"] = float(np.mean([r["reward_mean"] for r in m[-10:]]))
    return done, info


def _prefix(spec: Spec, i: int) -> str:
    """The name of the spec's first ``i + 1`` stages (``pte+sft`` inside ``pte+sft+grpo``),
    with its ``:grad@eviction``; a bare method (GRPO implied) keeps its bare name."""
    head = spec.name.split(":")[0].split("@")[0]
    tail = spec.name[len(head) :]
    if "+" not in head:
        return spec.name
    return "+".join([spec.method, *spec.stages[: i + 1]]) + tail


def train_spec(setup: Setup, spec: Spec, seed: int) -> tuple[str | None, dict[str, Any]]:
    """Every stage of ``spec`` in order, each from the previous one's checkpoint."""
    adapter: Path | None = None
    info: dict[str, Any] = {"wall_s": 0.0, "learner_peak_mb": 0.0}
    for i, stage in enumerate(spec.stages):
        run = setup.out / f"{_prefix(spec, i)}-seed{seed}".replace(":", "-").replace("@", "-")
        config, over = stage_overrides(setup, spec, stage, seed)
        if adapter is not None:
            over.append(f"train.init_adapter={adapter}")
        adapter, got = _train(config, over, run)
        info["wall_s"] += got.pop("wall_s")
        info["learner_peak_mb"] = max(info["learner_peak_mb"], got.pop("learner_peak_mb"))
        info |= got  # the last RL stage's rewards
    return (str(adapter) if adapter else None), info
