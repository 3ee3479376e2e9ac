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
