"""`pte-ray bench replay --compare-lora`: both runs in fresh processes, on identical tokens."""

from __future__ import annotations

import json

from pte_ray.cli import main as cli


def test_replay_memory_compared_with_full_cache_lora(random_ckpt, capsys):
    args = ["bench", "replay", "--model", str(random_ckpt("qwen2")), "--batch", "4"]
    assert cli([*args, "--budget", "8", "--max-new-tokens", "64", "--compare-lora"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pte, lora = res["runs"]
    assert (pte["method"], lora["method"]) == ("pte", "lora")
    assert pte["tokens"] == lora["tokens"] == 4 * 64  # the same sequences, no EOS
    assert pte["segments"] > 1 and lora["segments"] == 1 and pte["evictions"] > 0
    assert pte["with_grad"] and lora["with_grad"]
    assert res["extra_mb_ratio"] > 0 and res["time_ratio"] > 0
