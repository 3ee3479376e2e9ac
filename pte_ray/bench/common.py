"""What `pte-ray bench rollout` and `pte-ray bench replay` share: arguments, setup, sweeps.

Both benchmarks measure the method core on the same model, prompts and adapter, so they share one
argument set and one setup. Each prints one JSON object. ``--memory-sweep A,B`` reruns a benchmark
in fresh processes with ``max_new_tokens`` = A*budget and B*budget and reports the ratio of their
peaks, which is the figure that shows the bounded cache keeps memory flat as generations grow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import METHODS, AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import GRAD_MODES


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of both benchmarks (one set, so a sweep can pass any of them on)."""
    p.add_argument("--model", default="tiny", help="'tiny' (built and cached) or a checkpoint path")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--budget-mode", default="thought", choices=["thought", "total"])
    p.add_argument("--evict-ratio", type=float, default=0.25)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--method", default="pte", choices=list(METHODS))
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--global-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--compare-hf", action="store_true", help="also time HF generate, full cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-sweep", default=None, help="e.g. '1,8': peak memory at 1x and 8x")
    p.add_argument(
        "--compare-lora",
        action="store_true",
        help="replay: also a full-cache LoRA backward of the same sequences, in its own process",
    )
    p.add_argument(
        "--replay-grad",
        default="truncated",
        choices=list(GRAD_MODES),
        help="replay: how gradients cross evictions (--compare-lora runs both)",
    )
    p.add_argument(
        "--base-rollout",
        action="store_true",
        help="replay: sequences from the base model under the bounded cache (same for every "
        "method, so methods are compared on identical tokens)",
    )


def setup(args: argparse.Namespace) -> tuple[Any, Adapter | None, list[list[int]], Path]:
    """(model, adapter or None for ``base``, prompt ids, checkpoint path) for ``args``."""
    if args.model == "tiny":
        from pte_ray.tiny import build_tiny, make_task

        path = build_tiny()
        texts = [ex["prompt"] for ex in make_task(args.batch, seed=args.seed, split="test")]
    else:
        path = Path(args.model)
        texts = [
            f"Question {i}: what is {i} + {2 * i}? Think step by step." for i in range(args.batch)
        ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok(t).input_ids for t in texts][: args.batch]
    dtype = getattr(torch, args.dtype)
    model = load_base(path, dtype=dtype, device=args.device)
    adapter = None
    if args.method != "base":
        acfg = AdapterConfig(method=args.method, rank=args.rank, global_tokens=args.global_tokens)
        adapter = Adapter(model.args, acfg, dtype=dtype, device=args.device)
        gen = torch.Generator().manual_seed(args.seed)  # the same adapter in every process
        with torch.no_grad():  # A off zero so the adapter costs what it costs after training
            for name, prm in adapter.named_parameters():
                if ".A." in name:
                    prm.copy_(torch.randn(prm.shape, generator=gen) * 0.02)
    return model, adapter, prompts, path


def cache_cfg(args: argparse.Namespace) -> CacheConfig:
    budget = None if args.method == "lora" else args.budget
    return CacheConfig(budget=budget, budget_mode=args.budget_mode, evict_ratio=args.evict_ratio)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "batch", "budget", "budget_mode", "evict_ratio", "max_new_tokens", "method")
    return {k: getattr(args, k) for k in (*keys, "dtype", "device", "compile")}


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=args.seed)


def rollout_fn(args: argparse.Namespace, model: Any, adapter: Adapter | None, prompts: list) -> Any:
    """A no-argument callable that runs one bounded-cache rollout of ``prompts``."""
    step_fn = torch.compile(model.forward, dynamic=False) if args.compile else None
    sp = sampling(args)
    # no EOS: every row generates max_new_tokens, the same work HF does below
    return lambda: generate(model, adapter, prompts, sp, cache_cfg(args), step_fn=step_fn)


def sweep(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Run the benchmark in fresh processes at several multiples of the budget."""
    mults = [int(x) for x in str(args.memory_sweep).split(",")]
    runs = [
        subprocess_bench(args, which, {"memory_sweep": None, "max_new_tokens": m * args.budget})
        for m in mults
    ]
    key = "peak_cuda_mb" if "peak_cuda_mb" in runs[0] else "peak_rss_mb"
    return {
        "bench": f"{which}-memory-sweep",
        "multiples": mults,
        "runs": runs,
        f"{key}_ratio_last_to_first": runs[-1][key] / runs[0][key],
    }


def subprocess_bench(args: argparse.Namespace, which: str, change: dict[str, Any]) -> dict:
    """``pte-ray bench WHICH`` with ``args`` updated by ``change``, in a fresh process."""
    argv = [sys.executable, "-m", "pte_ray.cli", "bench", which]
    for k, v in {**vars(args), **change}.items():
        if k in ("func", "bench", "command") or v in (None, False):
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    out = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"bench run {change} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
