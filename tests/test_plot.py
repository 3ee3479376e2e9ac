"""`pte-ray plot RUN_DIR`: figures and a summary from metrics.jsonl; bad input named."""

from __future__ import annotations

import json

import pytest

from pte_ray.cli import main as cli
from pte_ray.commands.plot import VIEWS, plot_run

PNG = b"\x89PNG\r\n\x1a\n"


def _row(step: int, **extra) -> dict:
    keys = [k for _, series, _ in VIEWS.values() for k, _ in series]
    row = {k: float(step) / (i + 1) for i, k in enumerate(keys)}
    return {"step": step, **row, "statuses": {"ok": 1}, **extra}


def test_plot_writes_every_view_and_a_summary(tmp_path, capsys):
    rows = [_row(s) for s in range(1, 6)]
    for r in rows:
        r.pop("kl"), r.pop("teacher_kl")  # no reference pool: no KL panel, the rest drawn
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(["plot", str(tmp_path)]) == 0
    out = tmp_path / "plots"
    pngs = {p.stem for p in out.glob("*.png")}
    assert pngs == (set(VIEWS) - {"kl"}) | {"summary"}
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5_000, p
    md = (out / "summary.md").read_text()
    assert "5 steps" in md and "| reward_mean | 1 | 5 | 1 | 5 |" in md and "| kl |" not in md
    assert "wrote" in capsys.readouterr().err


def test_plot_bad_input_names_file_and_line(tmp_path, capsys):
    assert cli(["plot", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps(_row(1)) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not JSON"):
        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()


def test_smoothing_is_a_trailing_mean_and_axes_start_at_zero(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pte_ray.commands.plot import _draw, smooth

    ys = [float(i % 2) for i in range(100)]  # alternating noise around 0.5
    sm = smooth(ys)
    assert sm[0] == 0.0 and all(abs(v - 0.5) <= 0.1 for v in sm[10:])
    rows = [{"step": s, "learner_peak_mb": 800.0 + s, "reward_mean": ys[s]} for s in range(100)]
    for view, bottom in (("memory", 0.0), ("reward", None)):
        fig, ax = plt.subplots()
        assert _draw(ax, rows, view)
        if bottom is not None:
            assert ax.get_ylim()[0] == bottom  # a 12% rise is drawn as one, not a cliff
        else:
            assert len(ax.lines) == 2  # the raw series, faint, and its running mean
        plt.close(fig)
