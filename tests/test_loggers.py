"""`train.loggers`: TensorBoard event files and an offline W&B run hold every step's figures."""

from __future__ import annotations

import json

import pytest

from pte_ray.commands.train import main as train_main


def _wandb_history(run_file) -> list[dict]:
    """The history rows an offline W&B run recorded (its .wandb file, read with wandb's own
    record reader)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    ds = datastore.DataStore()
    ds.open_for_scan(str(run_file))
    rows = []
    while (data := ds.scan_data()) is not None:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key: json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_tensorboard_and_wandb_get_every_step(ray_cluster, small_run, tmp_path):
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
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("reward_mean")]
    assert got == [(r["step"], pytest.approx(r["reward_mean"])) for r in rows]
    assert "statuses/ok" in acc.Tags()["scalars"]
    (wfile,) = run.glob("wandb/offline-run-*/run-*.wandb")
    hist = _wandb_history(wfile)
    assert [h["_step"] for h in hist] == [1, 2]
    assert [h["reward_mean"] for h in hist] == pytest.approx([r["reward_mean"] for r in rows])


def test_a_missing_logger_names_the_extra(tmp_path, monkeypatch):
    import sys

    from pte_ray.run.loggers import StepLoggers

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"train.loggers=wandb needs wandb.*pte-ray\[loggers\]"):
        StepLoggers(("wandb",), tmp_path, {})
