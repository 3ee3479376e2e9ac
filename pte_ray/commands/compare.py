"""`pte-ray compare`: the paper's Table 1 on one config: methods x seeds, trained and evaluated.

Every method trains with the same config, steps, budget and seeds (only ``adapter.method`` and
``train.seed`` change), then its final checkpoint is evaluated on the held-out benchmark(s) with
the same engine; ``base`` (no adapter, the config's cache) is evaluated once per seed. Reported
per method: accuracy mean +- std over seeds (and per recall distance where the benchmark has
one), learner peak memory, rollout tokens/s and training wall time. ``compare.json`` and
``compare.png`` go into the output folder; each run keeps its own run directory beside them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pte_ray.commands.evaluate import eval_config, evaluate
from pte_ray.config import load_config

METHODS = ("lora", "lora_c", "global_only", "pte")
# "pte:exact" = method pte trained with replay.grad=exact (a bare name keeps the config's mode)
GRAD_SUFFIXES = ("truncated", "exact")
# "pte@rkv" = method pte with cache.eviction=rkv (a bare name keeps the config's policy)
EVICTIONS = ("window", "rkv")


def _split(name: str) -> tuple[str, list[str]]:
    """``method[:grad][@eviction]`` -> the method and its config overrides."""
    rest, _, eviction = name.partition("@")
    method, _, grad = rest.partition(":")
    over = [f"replay.grad={grad}"] if grad else []
    return method, over + ([f"cache.eviction={eviction}"] if eviction else [])


def _bad_name(name: str) -> bool:
    rest, at, eviction = name.partition("@")
    method, colon, grad = rest.partition(":")
    return (
        method not in (*METHODS, "base")
        or (colon and (method == "base" or grad not in GRAD_SUFFIXES))
        or (at and (method == "lora" or eviction not in EVICTIONS))
    )


def _train(config: str | None, overrides: list[str], out: Path) -> dict[str, Any]:
    from pte_ray.commands import train

    t0 = time.perf_counter()
    if train.main(config, [*overrides, f"output_dir={out}"]) != 0:
        raise RuntimeError(f"training {out.name} failed")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall_s": time.perf_counter() - t0,
        "tokens_per_s": float(np.mean([m["tokens_per_s"] for m in metrics])),
        "learner_peak_mb": max(m.get("learner_peak_mb", float("nan")) for m in metrics),
        "reward_first10": float(np.mean([m["reward_mean"] for m in metrics[:10]])),
        "reward_last10": float(np.mean([m["reward_mean"] for m in metrics[-10:]])),
    }


def compare(
    config: str | None,
    overrides: list[str],
    methods: list[str],
    seeds: list[int],
    benches: list[str],
    out_dir: str,
    samples: int = 1,
) -> dict[str, Any]:
    """Trains and evaluates every method under every seed; returns (and writes) the table."""
    bad = [m for m in methods if _bad_name(m)]
    if bad:
        raise ValueError(
            f"--methods: unknown {bad}; choose from {', '.join(METHODS)}, base, each but base "
            f"optionally with :{' or :'.join(GRAD_SUFFIXES)} (the replay gradient mode), each "
            f"but lora (full cache) optionally with @{' or @'.join(EVICTIONS)} (cache.eviction)"
        )
    load_config(config, overrides)  # a bad config fails before any run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for name in methods:
            method, grad = _split(name)
            over = [*overrides, *grad, f"train.seed={seed}"]
            run = out / f"{name.replace(':', '-').replace('@', '-')}-seed{seed}"
            info: dict[str, Any] = {}
            adapter = None
            if method != "base":
                info = _train(config, [*over, f"adapter.method={method}"], run)
                adapter = str(sorted((run / "checkpoints").iterdir())[-1])
            cfg = eval_config(config, over, adapter)
            res = evaluate(cfg, adapter, benches, samples, seeds=[seed], out_dir=str(run / "eval"))
            info["eval"] = {
                b: {k: v["mean"] for k, v in m.items()} for b, m in res["benchmarks"].items()
            }
            rows[name].append(info)
    summary = _summarise(rows)
    (out / "compare.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    _plot(summary, out / "compare.png")
    return summary


def _summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std over seeds of every evaluated metric and run figure, per method."""
    out: dict[str, Any] = {}
    for method, runs in rows.items():
        flat = [
            {f"{b}/{k}": v for b, m in r["eval"].items() for k, v in m.items()}
            | {k: v for k, v in r.items() if k != "eval"}
            for r in runs
        ]
        keys = dict.fromkeys(k for f in flat for k in f)
        out[method] = {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v))}
            for k in keys
            if (v := [f[k] for f in flat if k in f])
        }
    return out


def print_table(summary: dict[str, Any]) -> str:
    """Accuracy columns (mean@n and per distance), then memory, tokens/s, wall time."""
    cols = [k for k in next(iter(summary.values())) if "/mean@" in k or "/acc@d=" in k]
    extra = ["learner_peak_mb", "tokens_per_s", "wall_s"]
    lines = ["| method | " + " | ".join(cols + extra) + " |", "|---" * (len(cols) + 4) + "|"]
    for method, s in summary.items():
        acc = [
            f"{100 * s[c]['mean']:.1f} ± {100 * s[c]['std']:.1f}" if c in s else "-" for c in cols
        ]
        rest = [f"{s[c]['mean']:.0f}" if c in s else "-" for c in extra]
        lines.append(f"| {method} | " + " | ".join(acc + rest) + " |")
    return "\n".join(lines)


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [k for k in next(iter(summary.values())) if "/mean@" in k or "/acc@d=" in k]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cols)), 4))
    width = 0.8 / max(1, len(summary))
    for i, (method, s) in enumerate(summary.items()):
        xs = [j + i * width for j in range(len(cols))]
        ys = [100 * s[c]["mean"] if c in s else 0 for c in cols]
        es = [100 * s[c]["std"] if c in s else 0 for c in cols]
        ax.bar(xs, ys, width, yerr=es, label=method, capsize=3)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
