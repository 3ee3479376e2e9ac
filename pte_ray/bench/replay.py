"""`pte-ray bench replay`: time and memory of the learner's segment replay of rollouts.

``--compare-lora`` runs this method's replay (truncated and exact gradients) and a full-cache
LoRA backward of the same tokens, each in a fresh process: the ratios of the memory each adds
are the learner-memory figures.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from pte_ray.bench.calls import rollout_fn
from pte_ray.bench.common import cache_cfg, settings, setup, subprocess_bench, sweep, timed
from pte_ray.bench.memory import PeakMemory
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec


def _sequences(args: argparse.Namespace, model: Any, adapter: Any, prompts: list) -> Any:
    """The rollout to replay: the base model's under the bounded cache (``--base-rollout``,
    identical tokens for every method) or this method's own."""
    if args.base_rollout:
        bounded = argparse.Namespace(**{**vars(args), "method": "base"})
        return rollout_fn(bounded, model, None, prompts)()
    return rollout_fn(args, model, adapter, prompts)()


def _max_logprob_diff(res: Any, out: Any) -> float:
    """Largest gap between the replay's and the rollout's log-probs of the same tokens."""
    return max(
        (res.logprobs[i, : len(t)].cpu() - torch.tensor(out.logprobs[i])).abs().max().item()
        for i, t in enumerate(out.tokens)
    )


def run_replay(args: argparse.Namespace) -> dict[str, Any]:
    """Replays one rollout (with gradients when there is an adapter) under ``PeakMemory``."""
    if args.ab or args.repeat != 1:
        raise ValueError("--ab and --repeat are bench rollout flags; bench replay times one run")
    if args.memory_sweep:
        return sweep(args, "replay")
    if args.compare_lora:
        return _compare_lora(args)
    model, adapter, prompts, _ = setup(args)
    cfg = cache_cfg(args)
    out = _sequences(args, model, adapter, prompts)
    steps = out.eviction_steps if cfg.bounded or not args.base_rollout else None
    train = adapter is not None

    def go() -> Any:
        loss = (lambda lp, ent, rows, cols: -lp.sum()) if train else None
        # under rkv the rollout's record says which slots each eviction freed
        slots = out.evicted_slots if steps is not None else None
        spec = ReplaySpec(1.0, args.max_new_tokens, steps, slots, args.replay_grad)
        return replay(model, adapter, DecodeRequest(prompts, cfg), out.tokens, spec, loss)

    with PeakMemory(args.device) as mem:
        res, wall = timed(go, args.device)
    diff = _max_logprob_diff(res, out)
    n_tok = sum(len(t) for t in out.tokens)
    return {
        "bench": "replay",
        **settings(args),
        "with_grad": train,
        "replay_grad": args.replay_grad,
        "tokens": n_tok,
        "s_per_sequence": wall / len(prompts),
        "tokens_per_s": n_tok / wall,
        "wall_s": wall,
        "segments": res.segments,
        "evictions": sum(out.evictions),
        "max_abs_logprob_diff": diff,
        ("peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"): mem.peak_mb,
        "replay_extra_mb": mem.extra_mb,  # what replay added on top of weights and rollout
    }


def _compare_lora(args: argparse.Namespace) -> dict[str, Any]:
    """This method's replay, truncated and exact, and a full-cache LoRA backward of the same
    tokens, each in a fresh process; the ratios of the memory each adds are the learner-memory
    figures (the paper's: PTE 45% vs LoRA 83% of the GPU)."""
    same = {"compare_lora": False, "base_rollout": True}
    truncated, exact, lora = (
        subprocess_bench(args, "replay", {**same, "replay_grad": "truncated"}),
        subprocess_bench(args, "replay", {**same, "replay_grad": "exact"}),
        subprocess_bench(args, "replay", {**same, "method": "lora"}),
    )

    def ratio(a: dict, b: dict, key: str) -> float:
        return a[key] / max(b[key], 1e-9)

    return {
        "bench": "replay-vs-full-cache-lora",
        "runs": [truncated, exact, lora],
        "extra_mb_ratio": ratio(truncated, lora, "replay_extra_mb"),  # truncated / lora
        "time_ratio": ratio(truncated, lora, "wall_s"),
        "exact_vs_lora_extra_mb_ratio": ratio(exact, lora, "replay_extra_mb"),
        "exact_vs_truncated_extra_mb_ratio": ratio(exact, truncated, "replay_extra_mb"),
        "exact_vs_truncated_time_ratio": ratio(exact, truncated, "wall_s"),
    }
