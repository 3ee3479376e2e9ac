"""The stages on the real system: SFT then GRPO from its checkpoint (with held-out evaluation
and resume), and GRPO with on-policy distillation from the full-cache teacher."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from safetensors.torch import load_file

from pte_ray.commands import train
from pte_ray.config import load_config
from pte_ray.controller.step import Controller
from pte_ray.run.run_dir import RunDir


def _metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # three short trainings
def test_sft_then_grpo_from_its_checkpoint(ray_cluster, small_run, task_file, tmp_path):
    sft_run, grpo_run = tmp_path / "sft", tmp_path / "grpo"
    sft = [
        *small_run,
        "train.stage=sft",
        "train.steps=4",
        "train.save_every=2",
        "train.eval_every=2",
        "train.eval_limit=6",
        f"train.eval_bench={task_file}",
        "sft.answer_weight=5.0",
        "train.prompts_per_step=3",
    ]
    assert train.main(None, [*sft, "train.steps=2", f"output_dir={sft_run}"]) == 0
    assert train.main(None, [*sft, f"output_dir={sft_run}"], resume="auto") == 0  # resumed
    rows = _metrics(sft_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["stage"] == "sft" for r in rows)
    assert all(r["nll"] > 0 and r["targets"] == 3 for r in rows)
    assert {"eval_acc", "eval_s"} <= set(rows[1]) and "eval_acc" not in rows[2]
    assert not any((sft_run / "rollouts").glob("*.parquet"))  # nothing was sampled
    final = sft_run / "checkpoints" / "step_000004"
    grpo = [*small_run, "train.steps=1", f"train.init_adapter={final}", f"output_dir={grpo_run}"]
    ctl_cfg = load_config(None, grpo)
    ctl = Controller(ctl_cfg, RunDir.open(ctl_cfg, None))
    try:
        start = ray.get(ctl.roles.learners.actors[0].adapter_state.remote())
        ctl.publish()
        worker = next(iter(ctl.roles.rollout.actors.values()))
        ray.get(worker.sync.remote(ctl.weights))
        served = ray.get(worker.adapter_state.remote())[1]
    finally:
        ctl.shutdown()
    saved = load_file(str(final / "adapter.safetensors"))
    assert all(torch.equal(start[k], saved[k]) and torch.equal(served[k], saved[k]) for k in saved)
    assert any(v.abs().max() > 0 for k, v in saved.items() if ".A." in k)  # SFT moved A


@pytest.mark.parametrize("kind", ["reverse_kl", "topk_forward_kl"])
def test_grpo_with_distillation_reads_the_teacher(ray_cluster, small_run, tmp_path, kind):
    over = [
        *small_run,
        "distill.coef=0.5",
        f"distill.kind={kind}",
        "distill.topk=4",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    assert cfg.reference_pool
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        assert ctl.roles.reference is not None
        ctl.publish()
        m = ctl.train_step(0)
    finally:
        ctl.shutdown()
    assert m["teacher_kl"] == m["teacher_kl"] and m["grad_norm"] == m["grad_norm"]
    assert ("distill_kl" in m) == (kind == "topk_forward_kl")
    if kind == "topk_forward_kl":
        assert m["distill_kl"] >= 0.0


@pytest.mark.slow  # the tiny model (built once) samples its own targets
def test_sft_on_verified_teacher_traces(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    from pte_ray.rl.answers import extract_answer
    from pte_ray.rl.data import DataConfig, load_dataset
    from pte_ray.run.prepare import resolve_data

    out = tmp_path / "run"
    over = [
        "train.stage=sft",
        "sft.source=teacher",
        "sft.teacher_prompts=12",
        "sft.teacher_samples=2",
        "sft.answer_weight=3.0",
        "train.steps=2",
        "train.prompts_per_step=4",
        f"output_dir={out}",
    ]
    assert train.main(None, over) == 0
    summary = json.loads((out / "teacher" / "summary.json").read_text())
    assert summary["samples"] == 24 and 0 < summary["kept"] <= 24
    assert sum(summary["statuses"].values()) == 24  # every sample counted by its verdict
    traces = pq.read_table(out / "teacher" / "traces.parquet").to_pylist()
    assert len(traces) == summary["kept"]
    examples = load_dataset(DataConfig(path=resolve_data("tiny")))[0]
    gold = {e.index: e.answer for e in examples}
    for t in traces:  # only verified traces, which ended by themselves, are trained on
        assert extract_answer(t["text"], last_number_fallback=False) == gold[t["prompt_index"]]
    rows = _metrics(out)
    assert len(rows) == 2 and all(r["nll"] > 0 for r in rows)
    # a resumed run reuses the traces instead of sampling again
    mtime = (out / "teacher" / "traces.parquet").stat().st_mtime
    assert train.main(None, [*over, "train.steps=3"], resume="auto") == 0
    assert (out / "teacher" / "traces.parquet").stat().st_mtime == mtime


def test_learning_rate_follows_the_schedule_on_the_learner(ray_cluster, small_run, tmp_path):
    over = [
        *small_run,
        "optim.lr=0.001",
        "optim.warmup_steps=4",
        "optim.schedule=cosine",
        "train.steps=6",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(None, over)
    ctl = Controller(cfg, RunDir.open(cfg, None))
    try:
        learner = ctl.roles.learners.actors[0]
        assert ray.get(learner.optimizer_lrs.remote()) == pytest.approx([0.00025] * 2)  # +encoder
        ctl.publish()
        ctl.train_step(0)
        assert ray.get(learner.optimizer_lrs.remote()) == pytest.approx([0.0005] * 2)
    finally:
        ctl.shutdown()
