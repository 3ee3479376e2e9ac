"""`train.loggers`: TensorBoard event files and an offline W&B run hold every step's figures."""

from __future__ import annotations

import json

import pytest

from pte_ray.commands.train import main as train_main


def test_tensorboard_and_wandb_get_every_step(ray_cluster, small_run, tmp_path, capfd):
    pytest.importorskip("tensorboard", reason="the loggers extra is not installed")
    pytest.importorskip("wandb", reason="the loggers extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    over = [
        *small_run,
        "train.steps=2",
        f"output_dir={run}",
        'train.loggers=["tensorboard","wandb"]',
    ]
    assert train_main(None, over) == 0
    assert "rollout pool: 1 actor(s) ready" in capfd.readouterr().err  # events reach the log
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("reward_mean")]
    assert got == [(r["step"], pytest.approx(r["reward_mean"])) for r in rows]
    assert "statuses/ok" in acc.Tags()["scalars"]
    # the offline run's record log holds each history item as key + JSON text (protobuf
    # strings); wandb 0.31 ships no Python reader for it, so look for them in the bytes
    (wfile,) = run.glob("wandb/offline-run-*/run-*.wandb")
    raw = wfile.read_bytes()
    assert b"reward_mean" in raw and b"statuses/ok" in raw
    for r in rows:
        assert json.dumps(r["tokens_per_s"]).encode() in raw, r["tokens_per_s"]


def test_a_missing_logger_names_the_extra(tmp_path, monkeypatch):
    import sys

    from pte_ray.run.loggers import StepLoggers

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"train.loggers=wandb needs wandb.*pte-ray\[loggers\]"):
        StepLoggers(("wandb",), tmp_path, {})


def test_online_wandb_without_a_key_is_refused_before_anything_starts(
    small_run, tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    out = tmp_path / "run"
    over = [*small_run, "train.loggers=[wandb]", "train.wandb_mode=online", f"output_dir={out}"]
    with pytest.raises(ValueError, match="wandb_mode=online needs a W&B API key"):
        train_main(None, over)
    assert not out.exists()
