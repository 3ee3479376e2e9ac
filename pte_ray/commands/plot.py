"""`pte-ray plot RUN_DIR`: the run's ``metrics.jsonl`` as PNG figures and a one-page summary.

Written to ``RUN_DIR/plots/`` (or ``--out``): one figure per view a user checks after a run
(reward, response length, KL, throughput, evictions, memory, staleness, phase times) and
``summary.png`` with all of them on one page plus ``summary.md`` with first / last / best values.
A key the run did not record (an older run, no reference pool) leaves its panel out, not the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# figure -> (title, [(metrics.jsonl key, legend)], y label)
VIEWS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
    "reward": ("Reward", [("reward_mean", "mean"), ("reward_std", "std")], "reward"),
    "diagnostics": (
        "GRPO diagnostics",
        [("zero_adv_groups", "groups with equal rewards"), ("truncated_frac", "truncated")],
        "fraction",
    ),
    "length": (
        "Response length",
        [("completion_tokens_mean", "mean"), ("completion_tokens_max", "max")],
        "tokens",
    ),
    "kl": ("KL to the reference", [("kl", "k3 KL"), ("teacher_kl", "k1 to the teacher")], "KL"),
    "sft": ("SFT loss", [("nll", "target NLL"), ("answer_nll", "answer NLL")], "nats / token"),
    "eval": (
        "Held-out accuracy (greedy)",
        [("eval_acc", "all"), ("eval_acc_d2plus", "d >= 2")],
        "accuracy",
    ),
    "throughput": ("Rollout throughput", [("tokens_per_s", "tokens/s")], "tokens / s"),
    "evictions": ("Evictions per sequence", [("evictions_per_seq", "evictions")], "count"),
    "memory": ("Learner peak memory", [("learner_peak_mb", "peak MB")], "MB"),
    "staleness": (
        "Staleness",
        [("staleness_mean", "mean"), ("staleness_max", "max")],
        "versions behind",
    ),
    "phases": (
        "Phase times",
        [
            (k, k.removesuffix("_s"))
            for k in ("rollout_s", "reward_ref_s", "learn_s", "publish_s", "step_s", "wall_s")
        ],
        "seconds",
    ),
}
# Per-step series that are noise around a trend: drawn faint, with their running mean on top.
SMOOTHED = {
    "reward_mean",
    "reward_std",
    "nll",
    "answer_nll",
    "tokens_per_s",
    "kl",
    "teacher_kl",
    "zero_adv_groups",
    "truncated_frac",
    "completion_tokens_mean",
}
# Fractions live on [0, 1]; memory, lengths and times start at 0, so a 2% rise looks like 2%.
UNIT_AXIS = {"diagnostics", "eval"}
ZERO_AXIS = {"memory", "length", "throughput", "evictions", "phases", "staleness"}


def smooth(ys: list[float]) -> list[float]:
    """Trailing mean over a window of ~5% of the run (at least 5 steps)."""
    w = max(5, len(ys) // 20)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - w] if i >= w else 0.0)
        out.append(total / min(i + 1, w))
    return out


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    f = run_dir / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (not a run directory?)")
    rows = []
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}, line {i}: not JSON ({e.msg})") from None
    if not rows:
        raise ValueError(f"{f}: no steps recorded yet")
    return rows


def _draw(ax: Any, rows: list[dict[str, Any]], view: str) -> bool:
    title, series, ylabel = VIEWS[view]
    drawn = False
    for i, (key, legend) in enumerate(series):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        color = f"C{i}"
        if key in SMOOTHED and len(ys) > 10:
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(
                xs, smooth(list(ys)), color=color, linewidth=1.6, label=f"{legend}, running mean"
            )
        else:
            ax.plot(
                xs,
                ys,
                color=color,
                label=legend,
                linewidth=1.2,
                marker="." if len(xs) < 30 else None,
            )
        drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if view in UNIT_AXIS:
        ax.set_ylim(0, 1)
    elif view in ZERO_AXIS:
        ax.set_ylim(bottom=0)
    if drawn:  # beside the data, never over it
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return drawn


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Writes the figures and the summary; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    rows = read_rows(run)
    dest = Path(out) if out else run / "plots"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for view in VIEWS:
        fig, ax = plt.subplots(figsize=(7.5, 3.5))
        if _draw(ax, rows, view):
            fig.tight_layout()
            fig.savefig(dest / f"{view}.png", dpi=100)
            written.append(dest / f"{view}.png")
        plt.close(fig)
    views = [v for v in VIEWS if any(k in r for r in rows for k, _ in VIEWS[v][1])]
    n_rows = -(-len(views) // 3)
    fig, axes = plt.subplots(n_rows, 3, figsize=(20, 3.7 * n_rows), squeeze=False)
    for ax, view in zip(axes.flat, views, strict=False):
        _draw(ax, rows, view)
    for ax in list(axes.flat)[len(views) :]:
        ax.axis("off")  # a view the run has no data for (SFT: no rewards) is left out
    fig.suptitle(f"{run.name}: {len(rows)} steps")
    fig.tight_layout()
    fig.savefig(dest / "summary.png", dpi=90)
    plt.close(fig)
    (dest / "summary.md").write_text(summary_md(run, rows))
    return [*written, dest / "summary.png", dest / "summary.md"]


def summary_md(run: Path, rows: list[dict[str, Any]]) -> str:
    keys = [k for _, series, _ in VIEWS.values() for k, _ in series]
    lines = [
        f"# {run.name}: {len(rows)} steps",
        "",
        "| metric | first | last | min | max |",
        "|---|---|---|---|---|",
    ]
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        if vals:
            lines.append(
                f"| {k} | {vals[0]:.4g} | {vals[-1]:.4g} | {min(vals):.4g} | {max(vals):.4g} |"
            )
    return "\n".join(lines) + "\n"
