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
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pte_ray.allocator import keep_freed_memory
from pte_ray.engines.torch_engine import resolve_dtype
from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_base
from pte_ray.method.config import AdapterConfig, CacheConfig
from pte_ray.method.mapped import embedding_from_file
from pte_ray.method.packed import can_pack, cpu_bf16_native, cpu_model

# What a benchmark reads from the run config (``--config`` + ``key=value``, as ``train``), by
# the attribute it uses: the settings themselves are declared once, in ``pte_ray/config.py``.
CONFIG_KEYS = {
    "model": "model.path",
    "dtype": "model.dtype",
    "pack": "model.pack",
    "budget": "cache.budget",
    "budget_mode": "cache.budget_mode",
    "evict_ratio": "cache.evict_ratio",
    "eviction": "cache.eviction",
    "rkv": "cache.rkv",
    "max_new_tokens": "sampling.max_new_tokens",
    "method": "adapter.method",
    "rank": "adapter.rank",
    "global_tokens": "adapter.global_tokens",
    "replay_grad": "replay.grad",
}
# Where a benchmark's defaults differ from a training run's: long generations, fp32.
BENCH_DEFAULTS = ["sampling.max_new_tokens=512", "model.dtype=float32"]


def add_config_args(p: argparse.ArgumentParser, defaults: list[str]) -> None:
    p.add_argument("--config", default=None, help="YAML config, as for pte-ray train")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. cache.budget=64 adapter.method=lora"
    )
    p.set_defaults(config_defaults=defaults)


def resolve_config(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args`` with the config's settings (bench defaults, then the file, then k=v)."""
    from pte_ray.config import load_config

    cfg = load_config(args.config, [*args.config_defaults, *args.overrides])
    for attr, key in CONFIG_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        setattr(args, attr, value.model_dump() if hasattr(value, "model_dump") else value)
    return args


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags of both benchmarks (one set, so a sweep can pass any of them on)."""
    add_config_args(p, BENCH_DEFAULTS)
    p.add_argument("--batch", type=int, default=32, help="rows decoded at once")
    p.add_argument(
        "--requests",
        type=int,
        default=0,
        help="rollout: sequences in all (0: --batch); more than --batch: a row that ends takes "
        "the next one (pte: DecodeRequest.batch_rows; vLLM: max_num_seqs)",
    )
    p.add_argument(
        "--no-refill",
        action="store_true",
        help="rollout: --requests in calls of --batch, one after another (rows do not refill)",
    )
    p.add_argument(
        "--group", type=int, default=1, help="rollout: sequences per prompt (a GRPO group)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--compare-hf", action="store_true", help="also time HF generate, full cache")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="rollout: rows end at seeded lengths in [max_new_tokens / 4, max_new_tokens] "
        "(default: every row max_new_tokens)",
    )
    p.add_argument(
        "--no-hf", action="store_true", help="--suite: leave HF generate out (hours at 0.5B)"
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="rollout: pte eager and compiled, lora_c, HF generate and vLLM (when installed), "
        "each in a fresh process, one JSON",
    )
    p.add_argument(
        "--variants", default=None, help="--suite: only these, e.g. vllm,lora_c (pte always)"
    )
    p.add_argument(
        "--engine",
        choices=("torch", "vllm", "hf"),
        default="torch",
        help="rollout: vllm = vLLM's full-cache generation of the base model (vllm extra); "
        "hf = HF generate, full cache",
    )
    p.add_argument(
        "--ab",
        default=None,
        help="rollout: two values of one cache setting timed interleaved in one process, e.g. "
        "cache.eviction=window,rkv (reports the median paired ratio)",
    )
    p.add_argument("--repeat", type=int, default=1, help="rollout: timed runs (median reported)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="rollout: one more run under torch.profiler: time per phase, GEMM and attention "
        "shares, the decode step against the weight-read and GEMM floors",
    )
    p.add_argument(
        "--read-gibs", type=float, default=30.0, help="--profile: memory read bandwidth, GiB/s"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-sweep", default=None, help="e.g. '1,8': peak memory at 1x and 8x")
    p.add_argument(
        "--compare-lora",
        action="store_true",
        help="replay: also a full-cache LoRA backward of the same sequences, in its own process",
    )
    p.add_argument(
        "--base-rollout",
        action="store_true",
        help="replay: sequences from the base model under the bounded cache (same for every "
        "method, so methods are compared on identical tokens)",
    )


def prompt_ids(args: argparse.Namespace) -> tuple[Path, list[list[int]]]:
    """(checkpoint path, the bench's prompts as token ids: ``n_requests``, ``--group`` of each
    distinct one in a row)."""
    n, g = n_requests(args), max(1, getattr(args, "group", 1))
    if args.model == "tiny":
        from pte_ray.tiny import build_tiny, make_task

        path = build_tiny()
        texts = [ex["prompt"] for ex in make_task(-(-n // g), seed=args.seed, split="test")]
    else:
        from pte_ray.run.models import resolve_model

        path = Path(resolve_model(args.model))  # a checkpoint dir or a *-shape name
        texts = [
            f"Question {i}: what is {i} + {2 * i}? Think step by step." for i in range(-(-n // g))
        ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = [tok(t).input_ids for t in texts]
    return path, [ids[i // g] for i in range(n)]


def n_requests(args: argparse.Namespace) -> int:
    """Sequences in all: ``--requests``, or one batch."""
    return max(getattr(args, "requests", 0) or 0, args.batch)


def setup(
    args: argparse.Namespace, infer: bool = False
) -> tuple[Any, Adapter | None, list[list[int]], Path]:
    """(model, adapter or None for ``base``, prompt ids, checkpoint path) for ``args``; an
    ``infer`` model (no grad: rollout) packed as the engines pack it (``model.pack``)."""
    path, prompts = prompt_ids(args)
    dtype = resolve_dtype(args.dtype, args.device)
    model = load_base(path, dtype=dtype, device=args.device)
    if infer and args.pack and not args.compile and can_pack(model.dtype, args.device):
        model.pack(args.batch)
        embedding_from_file(model, path)  # as the engine does (mapped.py)
    if args.device == "cpu":
        keep_freed_memory()  # as the engines do, once loaded (allocator.py)
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
    return CacheConfig(
        budget=budget,
        budget_mode=args.budget_mode,
        evict_ratio=args.evict_ratio,
        eviction=args.eviction,
        rkv=args.rkv,
    )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "batch", "budget", "budget_mode", "evict_ratio", "max_new_tokens", "method")
    out = {k: getattr(args, k) for k in (*keys, "eviction", "dtype", "pack", "device", "compile")}
    out["lengths"] = "mixed" if getattr(args, "mixed", False) else "fixed"
    out["requests"], out["group"] = n_requests(args), getattr(args, "group", 1)
    out["refill"] = out["requests"] > args.batch and not getattr(args, "no_refill", False)
    out["command"] = getattr(args, "command_line", None) or shlex.join(["pte-ray", *sys.argv[1:]])
    if args.device == "cpu":
        native = cpu_bf16_native()
        cap = torch.backends.cpu.get_cpu_capability()
        out["cpu"] = {"model": cpu_model(), "cores": os.cpu_count(), "capability": cap}
        out["cpu"]["bf16"] = native
        out["cpu"]["malloc_kept"] = keep_freed_memory()  # every engine's process sets it
        if args.dtype == "bfloat16" and not native:
            out["dtype_note"] = "bf16 without AVX-512-BF16 / AMX: emulated, slower than fp32"
    return out | ({"rkv": args.rkv} if args.eviction == "rkv" else {})


def timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def sweep(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Run the benchmark in fresh processes at several multiples of the budget."""
    mults = [int(x) for x in str(args.memory_sweep).split(",")]
    runs = []
    for m in mults:
        change = {"memory_sweep": None, "max_new_tokens": m * args.budget}
        runs.append(subprocess_bench(args, which, change))
        # each run on stderr as it ends: a long sweep stopped midway keeps what it measured
        print(json.dumps({"multiple": m, **runs[-1]}), file=sys.stderr, flush=True)
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
    merged = {**vars(args), **change}
    for k, v in merged.items():
        skip = ("func", "bench", "command", "command_line", "config", "overrides")
        skip += ("config_defaults",)
        if k in skip or k in CONFIG_KEYS or v in (None, False) or (k, v) == ("engine", "torch"):
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    argv += [f"{CONFIG_KEYS[k]}={json.dumps(merged[k])}" for k in CONFIG_KEYS]
    out = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"bench run {change} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
