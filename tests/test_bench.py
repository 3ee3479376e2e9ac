"""`pte-ray bench replay --compare-lora`: truncated, exact and full-cache LoRA replay, each in a
fresh process, on identical tokens."""

from __future__ import annotations

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
