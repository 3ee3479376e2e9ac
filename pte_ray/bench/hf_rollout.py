"""`pte-ray bench rollout --engine hf`: HF ``generate`` with its full cache, in its own process.

The baseline a user has without any serving engine: the same checkpoint, prompts and lengths,
every row sampled to exactly ``max_new_tokens`` at temperature 1. Its own process (the suite
runs it like every engine) so its peak memory and time to first token are its own, not mixed
with ours. ``generate`` has no continuous batching: more ``--requests`` than ``--batch`` run as
calls of ``--batch`` one after another, and it cannot end rows at their own lengths without an
EOS, so ``--mixed`` is refused (it would time a different workload).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from pte_ray.bench.common import prompt_ids, settings, timed
from pte_ray.bench.memory import PeakMemory
from pte_ray.engines.torch_engine import resolve_dtype


def run_hf(args: argparse.Namespace) -> dict[str, Any]:
    """Tokens/s, peak memory, start-up and time to first token of HF ``generate``."""
    if args.mixed:
        raise ValueError("--engine hf times fixed lengths only: leave out --mixed")
    path, prompts = prompt_ids(args)
    calls = [prompts[i : i + args.batch] for i in range(0, len(prompts), args.batch)]
    t0 = time.perf_counter()
    with PeakMemory(args.device) as mem:
        hf = load_hf(path, args)
        generate_hf(hf, calls[0], args, min(16, args.max_new_tokens))
        warm = time.perf_counter() - t0
        _, ttft = timed(lambda: generate_hf(hf, calls[0], args, 1), args.device)
        toks, wall = timed(
            lambda: sum(generate_hf(hf, c, args, args.max_new_tokens) for c in calls), args.device
        )
    return {
        "bench": "rollout",
        **settings(args),
        "engine": "hf",
        "method": "base",
        "budget": None,  # full cache
        "tokens": toks,
        "tokens_per_s": toks / wall,
        "wall_s": wall,
        "warmup_s": warm,  # load + 16 tokens
        "ttft_s": ttft,  # the first call's prefill and first token
        ("peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"): mem.peak_mb,
    }


def load_hf(path: Path, args: argparse.Namespace) -> Any:
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(args.dtype, args.device)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device)


def generate_hf(hf: Any, prompts: list[list[int]], args: argparse.Namespace, n: int) -> int:
    """New tokens of one ``generate`` call of ``prompts`` (left-padded), ``n`` per row."""
    p_max = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), p_max, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, p_max - len(p) :], att[i, p_max - len(p) :] = torch.tensor(p), 1
    torch.manual_seed(args.seed)
    out = hf.generate(
        input_ids=ids.to(args.device),
        attention_mask=att.to(args.device),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )
    return (out.shape[1] - p_max) * len(prompts)
