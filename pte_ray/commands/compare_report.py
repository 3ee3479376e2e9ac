"""`pte-ray compare`'s loop and report: every spec x seed trained (``compare.py``), evaluated
greedy and sampled (and with the fold off), summarised as mean +- std, tabulated and plotted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pte_ray.commands.compare import MODES, Setup, Spec, parse_spec, train_spec
from pte_ray.commands.evaluate import EvalOptions, eval_config, evaluate
from pte_ray.config import load_config

FOLD_OFF = "/fold-off"  # the row of a thought-state adapter evaluated with the fold switched off


def _eval_all(
    setup: Setup, spec: Spec, seed: int, adapter: str | None, benches: list[str], samples: int
) -> dict[str, dict[str, Any]]:
    """{row name: {bench/mode/metric: value}} for the spec (and its fold ablation)."""
    config, over = setup.config, [o for o in setup.overrides if not o.startswith(("sft:",))]
    over = [o.removeprefix("grpo:") for o in over] + [f"train.seed={seed}"]
    over += [f"cache.eviction={spec.eviction}"] if spec.eviction else []
    cfg = eval_config(config, over, adapter)
    ablations = [None] + (["fold"] if setup.ablate_fold and cfg.adapter.dynamic else [])
    out: dict[str, dict[str, Any]] = {}
    base = setup.out / f"{spec.dirname}-seed{seed}" / "eval"
    for ablate in ablations:
        row = spec.name + (FOLD_OFF if ablate else "")
        out[row] = {}
        for mode in MODES:
            where = base / (f"{mode}-{ablate}" if ablate else mode)
            res = _cached_eval(cfg, adapter, benches, samples, seed, where, (mode, ablate))
            for b, m in res["benchmarks"].items():
                out[row] |= {f"{b}/{mode}/{k}": v["mean"] for k, v in m.items()}
    return out


def _cached_eval(cfg, adapter, benches, samples, seed, where: Path, how) -> dict[str, Any]:
    """One evaluation, or its results.json from an earlier (interrupted) comparison."""
    if (where / "results.json").is_file():
        return json.loads((where / "results.json").read_text())
    mode, ablate = how
    greedy = mode == "greedy"
    opts = EvalOptions(
        samples=1 if greedy else samples,
        seeds=(seed,),
        out_dir=str(where),
        ablate=ablate,
        greedy=greedy,
    )
    return evaluate(cfg, adapter, benches, opts)


def compare(
    setup: Setup, methods: list[str], seeds: list[int], benches: list[str], samples: int = 1
) -> dict[str, Any]:
    """Trains and evaluates every spec under every seed; returns (and writes) the summary."""
    specs = [parse_spec(m) for m in methods]  # a bad name or config fails before any run
    over = setup.overrides
    load_config(setup.config, [o.removeprefix("grpo:") for o in over if not o.startswith("sft:")])
    if any("sft" in s.stages for s in specs):
        sft_over = [o.removeprefix("sft:") for o in over if not o.startswith("grpo:")]
        load_config(setup.sft_config or setup.config, [*sft_over, "train.stage=sft"])
    out = setup.out
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for spec in specs:
            adapter, info = train_spec(setup, spec, seed) if spec.stages else (None, {})
            for name, ev in _eval_all(setup, spec, seed, adapter, benches, samples).items():
                rows.setdefault(name, []).append({**info, "seed": seed, "eval": ev})
            _write(out, rows)  # after every run: an interrupted comparison keeps what it has
    return summarise(rows)


def _write(out: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    summary = summarise(rows)
    (out / "compare.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
    plot(summary, out / "compare.png")


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std over seeds of every evaluated metric and run figure, per row."""
    out: dict[str, Any] = {}
    for name, runs in rows.items():
        flat = [r["eval"] | {k: v for k, v in r.items() if k not in ("eval", "seed")} for r in runs]
        keys = dict.fromkeys(k for f in flat for k in f)
        out[name] = {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for k in keys
            if (v := [f[k] for f in flat if k in f])
        }
    return out


def _acc_cols(summary: dict[str, Any], mode: str) -> list[str]:
    keys = dict.fromkeys(k for s in summary.values() for k in s)
    return [k for k in keys if f"/{mode}/" in k and ("/mean@" in k or "/acc@d" in k)]


def print_table(summary: dict[str, Any]) -> str:
    """One table per decoding mode: accuracy columns, then memory and wall time."""
    extra = ["learner_peak_mb", "wall_s"]
    out = []
    for mode in MODES:
        cols = _acc_cols(summary, mode)
        if not cols:
            continue
        heads = [c.split(f"/{mode}/")[1] for c in cols]
        lines = [f"{mode} accuracy (%)", "| method | " + " | ".join(heads + extra) + " |"]
        lines.append("|---" * (len(cols) + len(extra) + 1) + "|")
        for name, s in summary.items():
            acc = [_pct(s.get(c)) for c in cols]
            rest = [f"{s[c]['mean']:.0f}" if c in s else "-" for c in extra]
            lines.append(f"| {name} | " + " | ".join(acc + rest) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _pct(v: dict[str, float] | None) -> str:
    return "-" if v is None else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bars per accuracy column (greedy above, sampled below), one colour per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if _acc_cols(summary, m)]
    if not modes:
        return
    fig, axes = plt.subplots(len(modes), 1, figsize=(12, 3.6 * len(modes)), squeeze=False)
    width = 0.8 / max(1, len(summary))
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        cols = _acc_cols(summary, mode)
        for i, (name, s) in enumerate(summary.items()):
            xs = [j + i * width for j in range(len(cols))]
            ys = [100 * s[c]["mean"] if c in s else 0 for c in cols]
            es = [100 * s[c]["std"] if c in s else 0 for c in cols]
            ax.bar(xs, ys, width, yerr=es, label=name, capsize=2)
        labels = [c.split(f"/{mode}/")[1] for c in cols]
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], labels)
        ax.set_ylabel(f"{mode} accuracy (%)")
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
