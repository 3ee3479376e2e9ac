"""`pte-ray bench replay --compare-lora`: truncated, exact and full-cache LoRA replay, each in a
fresh process, on identical tokens."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pte_ray.cli import main as cli


def test_replay_memory_compared_with_full_cache_lora(random_ckpt, capsys):
    args = [
        "bench",
        "replay",
        "--batch",
        "4",
        "--compare-lora",
        f"model.path={random_ckpt('qwen2')}",
    ]
    assert cli([*args, "cache.budget=8", "sampling.max_new_tokens=64"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pte, exact, lora = res["runs"]
    assert (pte["method"], exact["method"], lora["method"]) == ("pte", "pte", "lora")
    assert (pte["replay_grad"], exact["replay_grad"]) == ("truncated", "exact")
    assert pte["tokens"] == exact["tokens"] == lora["tokens"] == 4 * 64  # same sequences
    assert pte["segments"] == exact["segments"] > 1 and lora["segments"] == 1
    assert pte["evictions"] > 0 and pte["with_grad"] and lora["with_grad"]
    # the two modes compute the same log-probs (the adapter differs from the base rollout's)
    assert abs(pte["max_abs_logprob_diff"] - exact["max_abs_logprob_diff"]) < 1e-5
    assert res["extra_mb_ratio"] > 0 and res["time_ratio"] > 0
    assert res["exact_vs_truncated_extra_mb_ratio"] > 0 and res["exact_vs_lora_extra_mb_ratio"] > 0


@pytest.mark.parametrize("grad", ["truncated", "exact"])
def test_replay_bench_under_rkv_replays_the_rollouts_record(random_ckpt, capsys, grad):
    args = ["bench", "replay", "--batch", "3", f"model.path={random_ckpt('qwen2')}"]
    over = ["cache.budget=8", "cache.eviction=rkv", "cache.rkv.window=4", f"replay.grad={grad}"]
    assert cli([*args, *over, "sampling.max_new_tokens=40"]) == 0  # was: "carries 0 entries"
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["evictions"] > 0 and res["max_abs_logprob_diff"] < 1e-4


def test_grad_bench_compares_truncated_and_exact(random_ckpt, capsys):
    args = ["bench", "grad", "--batch", "3", "--a-std", "0.1", f"model.path={random_ckpt('qwen2')}"]
    assert cli([*args, "cache.budget=8", "sampling.max_new_tokens=40"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["evictions_per_seq"] > 2
    for loss in ("every_token", "last_segment"):
        assert set(res[loss]) == {"A", "B", "encoder"}
        assert min(g["cosine"] for g in res[loss].values()) < 0.999  # truncation loses credit
    assert cli([*args, "cache.budget=64", "sampling.max_new_tokens=40"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["evictions_per_seq"] == 0  # nothing evicted: the two modes are one gradient
    assert all(abs(g["cosine"] - 1) < 1e-9 for g in res["every_token"].values())


def test_bench_reads_the_run_config_keys(capsys):
    """bench takes train's key=value settings, not its own flags: a typo or old flag is named."""
    assert cli(["bench", "rollout", "cache.bugdet=8"]) == 2
    assert "cache.bugdet" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the old copies of the config flags are gone
        cli(["bench", "rollout", "--budget", "8"])


@pytest.mark.slow  # two short training runs, each on its own Ray cluster
def test_bench_train_runs_sync_and_async_side_by_side(small_run, tmp_path, capsys):
    args = ["bench", "train", "--steps", "4", "--warmup", "1", "--out", str(tmp_path)]
    assert cli([*args, *small_run]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sync, asyn = res["sync"], res["async"]
    assert sync["staleness_max"] == 0 and sync["staleness_mean"] == 0
    assert asyn["staleness_max"] <= 1 and sync["steps_measured"] == 3
    for mode in (sync, asyn):
        assert 0 <= mode["rollout_idle_ratio"] <= 1 and 0 <= mode["learner_idle_ratio"] <= 1
        assert mode["wall_s"] > 0 and mode["learn_s"] > 0
    assert res["async_over_sync_wall"] > 0
    assert (tmp_path / "staleness1" / "metrics.jsonl").exists()


@pytest.mark.slow  # three fresh processes, one of them compiling
def test_rollout_suite_compares_eager_compiled_lora_c_and_hf(random_ckpt, capsys):
    args = ["bench", "rollout", "--suite", "--batch", "4", f"model.path={random_ckpt('qwen2')}"]
    assert cli([*args, "cache.budget=8", "cache.rkv.window=4", "sampling.max_new_tokens=32"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = res["runs"]
    vllm = importlib.util.find_spec("vllm") is not None
    ours = {"pte", "pte_compiled", "lora_c", "pte_rkv", "lora_c_rkv"}
    assert set(runs) == ours | {"hf"} | ({"vllm"} if vllm else set())
    hf = runs["hf"]  # its own process: its own peak memory and time to first token
    assert hf["engine"] == "hf" and hf["budget"] is None and hf["tokens"] == 4 * 32
    assert hf["peak_rss_mb"] > 0 and 0 < hf["ttft_s"] < hf["wall_s"]
    assert res["hf_tokens_per_s"] == hf["tokens_per_s"] and "hf_tokens_per_s" not in runs["pte"]
    for w, r in (("pte", "pte_rkv"), ("lora_c", "lora_c_rkv")):  # R-KV beside the window
        assert runs[w]["eviction"] == "window" and "score_ms_per_eviction" not in runs[w]
        assert runs[r]["eviction"] == "rkv" and runs[r]["rkv"]["window"] == 4
        assert runs[r]["score_ms_per_eviction"] > 0 and 0 < runs[r]["score_share"] < 1
        assert runs[r]["evictions"] == runs[w]["evictions"]  # same schedule, other slots
    assert set(res["rkv_over_window"]) == {"pte", "lora_c"}
    for m, ab in res["rkv_ab"].items():  # each pair timed interleaved in one process, 3 rounds
        assert ab["repeat"] == 3 and len(ab["ratio_b_over_a_rounds"]) == 3
        assert res["rkv_over_window"][m] == ab["ratio_b_over_a"] > 0
        assert ab["runs"]["window"]["method"] == ab["runs"]["rkv"]["method"] == m
    if vllm:  # the full-cache baseline: the base model, every row the full length
        assert runs["vllm"]["engine"] == "vllm" and runs["vllm"]["budget"] is None
        assert 0 < runs["vllm"]["ttft_s"] < runs["vllm"]["wall_s"]
        assert runs["vllm"]["kernels"].startswith("_C")
        assert res["tokens_per_s_over_hf"]["vllm"] > 0
    assert runs["pte_compiled"]["compile"] and not runs["pte"]["compile"]
    assert runs["lora_c"]["method"] == "lora_c" and runs["pte"]["evictions"] > 0
    assert {r["tokens"] for r in runs.values()} == {4 * 32}
    assert res["hf_tokens_per_s"] > 0 and res["compiled_over_eager"] > 0
    assert runs["pte_compiled"]["warmup_s"] > runs["pte"]["warmup_s"]  # the compile is in it


def test_bench_weights_times_publish_to_serving(ray_cluster, random_ckpt, capsys):
    args = ["bench", "weights", "--size-mb", "0.2,2", "--workers", "2", "--repeats", "2"]
    assert cli([*args, "--model", str(random_ckpt("qwen2"))]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pts = res["points"]
    assert [(p["workers"]) for p in pts] == [1, 2, 1, 2]
    small, big = pts[0], pts[2]
    assert small["size_mb"] == pytest.approx(0.2, rel=0.2)
    assert big["size_mb"] == pytest.approx(2, rel=0.1) and big["rank"] > small["rank"]
    assert all(0 < p["min_ms"] <= p["median_ms"] <= p["max_ms"] for p in pts)


def test_rollout_ab_times_two_cache_settings_interleaved(random_ckpt, capsys):
    args = ["bench", "rollout", "--batch", "4", f"model.path={random_ckpt('qwen2')}"]
    args += ["cache.budget=8", "cache.rkv.window=4", "sampling.max_new_tokens=32"]
    assert cli([*args, "--ab", "cache.eviction=window,rkv", "--repeat", "3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "rollout-ab" and res["values"] == ["window", "rkv"]
    assert res["interleaved"] == "step"  # on CPU: the two rollouts advance in turn
    win, rkv = res["runs"]["window"], res["runs"]["rkv"]
    assert (win["eviction"], rkv["eviction"]) == ("window", "rkv")  # each side its setting
    assert "evictions_scored" not in win and rkv["evictions_scored"] > 0
    assert win["evictions"] == rkv["evictions"] > 0 and win["tokens"] == rkv["tokens"] == 4 * 32
    assert len(win["tokens_per_s_runs"]) == len(rkv["tokens_per_s_runs"]) == 3
    rounds = res["ratio_b_over_a_rounds"]
    assert res["ratio_b_over_a"] == sorted(rounds)[1]
    pairs = zip(win["tokens_per_s_runs"], rkv["tokens_per_s_runs"], strict=True)
    assert rounds == [pytest.approx(r / w) for w, r in pairs]
    assert win["tokens_per_s"] == sorted(win["tokens_per_s_runs"])[1]  # the median run


def test_rollout_repeat_reports_the_median_run(random_ckpt, capsys):
    args = ["bench", "rollout", "--batch", "2", "--repeat", "3", "cache.budget=8"]
    assert cli([*args, f"model.path={random_ckpt('qwen2')}", "sampling.max_new_tokens=24"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = res["tokens_per_s_runs"]
    assert res["repeat"] == len(runs) == 3 and res["tokens_per_s"] == sorted(runs)[1]
    assert res["tokens"] == 2 * 24 and res["wall_s"] == pytest.approx(48 / res["tokens_per_s"])
    assert 0 < res["ttft_s"] < res["wall_s"]  # the prefill and first token, not the rollout


@pytest.mark.parametrize("flags", [["--repeat", "3"], ["--ab", "cache.budget=8,16"]])
def test_replay_refuses_rollout_only_flags(flags, capsys):
    assert cli(["bench", "replay", *flags]) == 2
    assert "bench rollout flags" in capsys.readouterr().err


def test_rollout_memory_sweep_reports_each_length(random_ckpt, capsys):
    args = ["bench", "rollout", "--batch", "2", "--memory-sweep", "1,3"]
    assert cli([*args, f"model.path={random_ckpt('qwen2')}", "cache.budget=8"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert res["bench"] == "rollout-memory-sweep" and res["multiples"] == [1, 3]
    assert [r["max_new_tokens"] for r in res["runs"]] == [8, 24]
    assert [r["tokens"] for r in res["runs"]] == [2 * 8, 2 * 24]
    ratio = res["peak_rss_mb_ratio_last_to_first"]
    assert ratio == res["runs"][1]["peak_rss_mb"] / res["runs"][0]["peak_rss_mb"] > 0
    # each run was reported as it ended (a long sweep stopped midway keeps what it measured)
    lines = [json.loads(x) for x in err.splitlines() if x.startswith('{"multiple"')]
    assert [x["multiple"] for x in lines] == [1, 3]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--ab", "model.path=a,b"], "cache.KEY=A,B"),
        (["--ab", "cache.eviction=rkv"], "cache.KEY=A,B"),
        (["--ab", "cache.eviction=rkv,rkv"], "the same"),
        (["--ab", "refill=on,maybe"], "refill=on,off"),
        (["--repeat", "0"], "--repeat"),
        (["--ab", "cache.eviction=window,rkv", "--suite"], "cannot be combined with --suite"),
        (["--ab", "cache.eviction=window,rkv", "--compare-hf"], "with --compare-hf"),
        (["--ab", "cache.budget=8,16", "--memory-sweep", "1,2"], "with --memory-sweep"),
    ],
)
def test_rollout_ab_bad_flags_are_named(flags, named, capsys):
    assert cli(["bench", "rollout", *flags]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("layers", [1, 4])
def test_bench_eviction_measures_what_sharing_the_choice_gives_up(tmp_path, capsys, layers):
    """One layer: its own choice is the shared one (1.0). Four: the figure is measured."""
    from pte_ray.tiny import random_checkpoint

    path = random_checkpoint(tmp_path / "m", seed=0, num_hidden_layers=layers)
    args = ["bench", "eviction", "--batch", "4", f"model.path={path}", "cache.budget=16"]
    assert cli([*args, "cache.rkv.window=4", "sampling.max_new_tokens=48"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kept = res["layer_choice_kept_by_shared"]
    assert len(kept) == layers and res["evictions"] >= 5 and res["evict_n"] == 4
    if layers == 1:
        assert kept == [1.0] and res["layer_vs_layer_overlap"] is None
    else:
        assert all(0.0 < k < 1.0 for k in kept) and 0.0 < res["layer_vs_layer_overlap"] < 1.0
    assert 0.0 <= res["shared_vs_window_overlap"] < 1.0
    assert res["mean_age_evicted_rkv"] > 4  # never the window's 4 newest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rollout_bench_says_how_the_cpu_runs_its_dtype(random_ckpt, capsys, dtype, monkeypatch):
    """The JSON names the CPU's capability and whether it has bf16 in hardware; bf16 on a CPU
    without it still runs, and the JSON says it was emulated (here: the check forced off)."""
    import pte_ray.bench.common as common

    monkeypatch.setattr(common, "cpu_bf16_native", lambda: False)
    args = ["bench", "rollout", "--batch", "2", "cache.budget=8", f"model.dtype={dtype}"]
    assert cli([*args, f"model.path={random_ckpt('qwen2')}", "sampling.max_new_tokens=8"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["cpu"]["bf16"] is False and res["cpu"]["capability"] and res["cpu"]["model"]
    assert res["command"].startswith("pte-ray bench rollout --batch 2")  # the JSON says its run
    assert res["pack"] is True and res["dtype"] == dtype
    assert ("dtype_note" in res) == (dtype == "bfloat16")


def test_rollout_profile_splits_the_time_and_sets_it_against_the_floors(random_ckpt, capsys):
    """--profile: the decode loop's phases (R-KV scoring inside eviction), GEMM and attention
    shares, and the decode step against the weight-read and GEMM floors."""
    args = ["bench", "rollout", "--batch", "4", "--profile", "cache.budget=8", "cache.eviction=rkv"]
    args += ["cache.rkv.window=4", f"model.path={random_ckpt('qwen2')}"]
    assert cli([*args, "sampling.max_new_tokens=32"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    prof = json.loads(out)["profile"]
    ph, share = prof["phase_s"], prof["phase_share"]
    assert {"prefill", "evict", "rkv_score", "fold", "forward", "sample"} <= set(ph)
    assert 0 < ph["rkv_score"] <= ph["evict"] < prof["profile_wall_s"]
    assert 0 < share["forward"] < 1 and -0.05 < share["python_and_other"] < 1
    assert 0 < prof["gemm_share"] < 1 and 0 < prof["attention_share"] < 1
    assert prof["weight_bytes"] > 0 and prof["peak_gemm_gflops"] > 0
    assert prof["of_read_floor"] == pytest.approx(prof["read_floor_ms"] / prof["decode_step_ms"])
    # the step is the unprofiled run's: (wall - time to first token) / decode steps
    res = json.loads(out)
    steps = (res["wall_s"] - res["ttft_s"]) * 1e3 / prof["decode_step_ms"]
    assert steps == pytest.approx(31, rel=1e-9)  # 32 tokens: the prefill's, then 31 steps
    assert prof["profiled_step_ms"] > 0
    sec = prof["step_sections_ms"]  # by the clock, exclusive parts of the step
    parts = {k: v for k, v in sec.items() if k not in ("step_ms", "rest")}
    assert {"gemm_layers", "gemm_head", "attention", "adapter_delta", "sampling"} <= set(parts)
    assert all(v > 0 for k, v in parts.items() if k != "fold") and sec["rest"] >= 0
    assert sum(parts.values()) + sec["rest"] == pytest.approx(sec["step_ms"])
    assert sec["evict"] > 0 and sec["fold"] > 0  # budget 8: rows evict and fold
    top = prof["top_ops_share"]
    assert len(top) == 10 and not set(top) & set(ph) and 0 < max(top.values()) < 1


def test_rollout_suite_can_leave_hf_out(random_ckpt, capsys):
    args = ["bench", "rollout", "--suite", "--no-hf", "--variants", "pte", "--batch", "2"]
    args += [f"model.path={random_ckpt('qwen2')}", "cache.budget=8"]
    assert cli([*args, "sampling.max_new_tokens=8"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(res["runs"]) == ["pte"] and "hf_tokens_per_s" not in res["runs"]["pte"]
    assert res["hf_tokens_per_s"] != res["hf_tokens_per_s"]  # nan: not measured
    assert res["runs"]["pte"]["ttft_s"] > 0 and res["vllm"].startswith("not")


def test_rollout_mixed_lengths_end_rows_at_their_own_lengths(random_ckpt, capsys):
    """--mixed: the seeded per-row lengths (the same in every engine's process) are what the
    rollout writes; HF generate, which times fixed lengths, is refused beside it."""
    import argparse

    from pte_ray.bench.calls import row_lengths

    args = ["bench", "rollout", "--batch", "6", "--mixed", "cache.budget=8"]
    args += [f"model.path={random_ckpt('qwen2')}", "sampling.max_new_tokens=40"]
    assert cli(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = row_lengths(
        argparse.Namespace(mixed=True, seed=res.get("seed", 0), max_new_tokens=40), 6
    )
    assert res["lengths"] == "mixed" and res["tokens"] == sum(want) < 6 * 40
    assert min(want) >= 10 and len(set(want)) > 1
    assert cli([*args, "--compare-hf"]) != 0
    assert "--compare-hf times fixed lengths only" in capsys.readouterr().err
    assert cli([*args, "--engine", "hf"]) != 0
    assert "--engine hf times fixed lengths only" in capsys.readouterr().err


def test_hf_engine_runs_more_requests_than_rows_as_calls_of_batch(random_ckpt, capsys):
    """--engine hf in its own run: every one of 3 requests on 2 rows (no continuous batching:
    calls of --batch) generates its full length; peak memory and time to first token are its
    own."""
    args = ["bench", "rollout", "--engine", "hf", "--batch", "2", "--requests", "3"]
    args += [f"model.path={random_ckpt('qwen2')}", "sampling.max_new_tokens=6"]
    assert cli(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["engine"] == "hf" and res["tokens"] == 3 * 6 and res["requests"] == 3
    assert res["peak_rss_mb"] > 0 and 0 < res["ttft_s"] and res["budget"] is None


def test_rollout_more_requests_than_rows_refills_them(random_ckpt, capsys):
    """--requests beyond --batch: rows that end take queued sequences (GRPO groups of --group
    share a prompt); every request is generated to its own length."""
    import argparse

    from pte_ray.bench.calls import row_lengths
    from pte_ray.bench.common import prompt_ids

    args = ["bench", "rollout", "--batch", "3", "--requests", "8", "--group", "2", "--mixed"]
    args += ["cache.budget=8", f"model.path={random_ckpt('qwen2')}", "sampling.max_new_tokens=24"]
    assert cli(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = row_lengths(argparse.Namespace(mixed=True, seed=0, max_new_tokens=24), 8)
    assert res["requests"] == 8 and res["group"] == 2 and res["tokens"] == sum(want)
    assert res["refills"] == 5 and res["refill"]
    assert cli([*args, "--no-refill"]) == 0  # calls of --batch one after another
    apart = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert apart["tokens"] == sum(want) and apart["refills"] == 0 and not apart["refill"]
    assert cli([*args, "--ab", "refill=on,off"]) == 0  # interleaved step by step, one process
    ab = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    on, off = ab["runs"]["on"], ab["runs"]["off"]
    assert on["refills"] == 5 and off["refills"] == 0 and on["tokens"] == off["tokens"] == sum(want)
    assert ab["ratio_b_over_a"] > 0
    ns = argparse.Namespace(model=str(random_ckpt("qwen2")), batch=3, requests=8, group=2, seed=0)
    _, prompts = prompt_ids(ns)
    assert len(prompts) == 8 and prompts[0] == prompts[1] != prompts[2] == prompts[3]
