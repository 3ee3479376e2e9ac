"""`pte-ray bench rollout` and `pte-ray bench replay`: throughput and memory of the method core.

Each prints one JSON object. Memory is the peak resident set (or CUDA peak) sampled during the
measured section; ``--memory-sweep A,B`` reruns the benchmark in fresh processes with
``max_new_tokens`` = A*budget and B*budget and reports the ratio of their peaks, which is the
figure that shows the bounded cache keeps memory flat as generations grow.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from pte_ray.method.replay import GRAD_MODES, replay


def add_args(p: argparse.ArgumentParser) -> None:
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


def _proc_kb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return None


class PeakMemory:
    """Peak memory of a ``with`` block and what it added: ``peak_mb`` and ``extra_mb``.

    CUDA: the allocator's peak. CPU (Linux): the resident high-water mark, reset at entry
    (``/proc/self/clear_refs``), so what ran before (model load, the rollout) cannot mask it;
    elsewhere the process's lifetime peak (then run each measurement in a fresh process).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb = self.before_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before_mb = torch.cuda.memory_allocated() / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self.before_mb = (_proc_kb("VmRSS") or 0.0) / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        hwm = _proc_kb("VmHWM")
        self.peak_mb = (hwm or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024

    @property
    def extra_mb(self) -> float:
        return max(0.0, self.peak_mb - self.before_mb)


def _setup(args: argparse.Namespace) -> tuple[Any, Adapter | None, list[list[int]], Path]:
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


def _cache_cfg(args: argparse.Namespace) -> CacheConfig:
    budget = None if args.method == "lora" else args.budget
    return CacheConfig(budget=budget, budget_mode=args.budget_mode, evict_ratio=args.evict_ratio)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "batch", "budget", "budget_mode", "evict_ratio", "max_new_tokens", "method")
    return {k: getattr(args, k) for k in (*keys, "dtype", "device", "compile")}


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=args.seed)


def _rollout(args: argparse.Namespace, model: Any, adapter: Adapter | None, prompts: list) -> Any:
    step_fn = torch.compile(model.forward, dynamic=False) if args.compile else None
    sp = _sampling(args)
    # no EOS: every row generates max_new_tokens, the same work HF does below
    return lambda: generate(model, adapter, prompts, sp, _cache_cfg(args), step_fn=step_fn)


def run_rollout(args: argparse.Namespace) -> dict[str, Any]:
    if args.memory_sweep:
        return _sweep(args, "rollout")
    model, adapter, prompts, path = _setup(args)
    gen = _rollout(args, model, adapter, prompts)
    small = argparse.Namespace(**{**vars(args), "max_new_tokens": min(16, args.max_new_tokens)})
    _rollout(small, model, adapter, prompts)()  # warm-up (and compile)
    with PeakMemory(args.device) as mem:
        out, wall = _timed(gen, args.device)
    n_tok = sum(len(t) for t in out.tokens)
    res: dict[str, Any] = {
        "bench": "rollout",
        **_settings(args),
        "tokens": n_tok,
        "tokens_per_s": n_tok / wall,
        "wall_s": wall,
        "evictions": sum(out.evictions),
        "evictions_per_seq": sum(out.evictions) / len(prompts),
        ("peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"): mem.peak_mb,
    }
    if args.compare_hf:
        res.update(_hf_generate(path, prompts, args, n_tok / wall))
    return res


def _hf_generate(
    path: Path, prompts: list[list[int]], args: argparse.Namespace, ours: float
) -> dict:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(
        args.device
    )
    p_max = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), p_max, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, p_max - len(p) :], att[i, p_max - len(p) :] = torch.tensor(p), 1
    ids, att = ids.to(args.device), att.to(args.device)

    def go(n: int) -> Any:
        torch.manual_seed(args.seed)
        return hf.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=0,
        )

    go(min(16, args.max_new_tokens))
    out, wall = _timed(lambda: go(args.max_new_tokens), args.device)
    hf_tps = (out.shape[1] - p_max) * len(prompts) / wall
    return {"hf_tokens_per_s": hf_tps, "hf_wall_s": wall, "speedup_vs_hf": ours / hf_tps}


def run_replay(args: argparse.Namespace) -> dict[str, Any]:
    if args.memory_sweep:
        return _sweep(args, "replay")
    if args.compare_lora:
        return _compare_lora(args)
    model, adapter, prompts, _ = _setup(args)
    cfg = _cache_cfg(args)
    if args.base_rollout:
        bounded = argparse.Namespace(**{**vars(args), "method": "base"})
        out = _rollout(bounded, model, None, prompts)()
    else:
        out = _rollout(args, model, adapter, prompts)()
    steps = out.eviction_steps if cfg.bounded or not args.base_rollout else None
    train = adapter is not None

    def go() -> Any:
        loss = (lambda lp, ent, rows, cols: -lp.sum()) if train else None
        return replay(
            model,
            adapter,
            prompts,
            out.tokens,
            cfg,
            1.0,
            args.max_new_tokens,
            steps,
            loss_fn=loss,
            grad_mode=args.replay_grad,
        )

    with PeakMemory(args.device) as mem:
        res, wall = _timed(go, args.device)
    diff = max(
        (res.logprobs[i, : len(t)].cpu() - torch.tensor(out.logprobs[i])).abs().max().item()
        for i, t in enumerate(out.tokens)
    )
    n_tok = sum(len(t) for t in out.tokens)
    return {
        "bench": "replay",
        **_settings(args),
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
        _subprocess_bench(args, "replay", {**same, "replay_grad": "truncated"}),
        _subprocess_bench(args, "replay", {**same, "replay_grad": "exact"}),
        _subprocess_bench(args, "replay", {**same, "method": "lora"}),
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


def _sweep(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Run the benchmark in fresh processes at several multiples of the budget."""
    mults = [int(x) for x in str(args.memory_sweep).split(",")]
    runs = [
        _subprocess_bench(args, which, {"memory_sweep": None, "max_new_tokens": m * args.budget})
        for m in mults
    ]
    key = "peak_cuda_mb" if "peak_cuda_mb" in runs[0] else "peak_rss_mb"
    return {
        "bench": f"{which}-memory-sweep",
        "multiples": mults,
        "runs": runs,
        f"{key}_ratio_last_to_first": runs[-1][key] / runs[0][key],
    }


def _subprocess_bench(args: argparse.Namespace, which: str, change: dict[str, Any]) -> dict:
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
