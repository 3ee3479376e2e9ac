"""`pte-ray bench grad`: how far truncated replay's gradient is from the exact one, on rollouts.

Equal log-probs can hide a wrong gradient, and a biased gradient can make a method look worse
than it is. This samples completions from a model (a trained adapter, or a fresh one with A off
zero) under the bounded cache, then computes in fp64, on the same tokens, the gradient of two
losses with ``truncated`` and ``exact`` replay: every token's log-prob (GRPO's shape) and the
last segment's only (where the recall task's answer is). Per parameter group (A, B, encoder) it
reports the cosine between the two, the norm ratio truncated / exact and the exact norm.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from pte_ray.method.adapter import Adapter
from pte_ray.method.checkpoint import load_adapter, load_base
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.replay import replay
from pte_ray.method.requests import DecodeRequest, ReplaySpec


def add_args(p: argparse.ArgumentParser) -> None:
    from pte_ray.bench.common import add_config_args

    # model.path, adapter.method (a fresh adapter's), cache.*, sampling.max_new_tokens: k=v
    add_config_args(p, ["model.path=tiny-recall"])
    p.add_argument("--adapter", default=None, help="a checkpoint dir (default: a fresh adapter)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--a-std", type=float, default=0.02, help="fresh adapter: A ~ N(0, std)")
    p.add_argument("--seed", type=int, default=0)


def _model_and_prompts(args: argparse.Namespace) -> tuple[Path, list[str]]:
    from pte_ray.tiny import RECIPES, build_tiny, build_tiny_task

    if args.model in RECIPES:
        recipe = RECIPES[args.model]
        rows = build_tiny_task(recipe=recipe)["test"].read_text().splitlines()
        return build_tiny(recipe=recipe), [json.loads(r)["prompt"] for r in rows[: args.batch]]
    texts = [f"Question {i}: what is {i} + {2 * i}? Think step by step." for i in range(args.batch)]
    return Path(args.model), texts


def _adapter(args: argparse.Namespace, model: Any) -> Adapter:
    if args.adapter:
        meta = json.loads((Path(args.adapter) / "adapter.json").read_text())["adapter"]
        meta["targets"] = tuple(meta["targets"])
        adapter = Adapter(model.args, AdapterConfig(**meta), dtype=torch.float64)
        load_adapter(adapter, args.adapter)
        return adapter
    acfg = AdapterConfig(method=args.method)
    adapter = Adapter(model.args, acfg, dtype=torch.float64)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # at A = 0 only A gets a gradient
        for name, prm in adapter.named_parameters():
            if ".A." in name:
                prm.copy_(torch.randn(prm.shape, generator=gen, dtype=torch.float64) * args.a_std)
    return adapter


def _group(name: str) -> str:
    return "encoder" if name.startswith("encoder") else ("A" if ".A." in name else "B")


def _grads(model, adapter, prompts, out, cfg, args, mode: str, last_only: bool) -> dict:
    def loss_fn(lp: torch.Tensor, ent: torch.Tensor, rows: torch.Tensor, cols: slice):
        mask = torch.zeros_like(lp)
        for j, i in enumerate(rows.tolist()):
            n = len(out.tokens[i])
            lo = max(0, (out.eviction_steps[i] or [0])[-1] + 1) if last_only else 0
            a, z = max(cols.start, lo), min(cols.stop, n)
            if z > a:
                mask[j, a - cols.start : z - cols.start] = 1.0
        return -(lp * mask).sum()

    adapter.zero_grad(set_to_none=True)
    spec = ReplaySpec(1.0, args.max_new_tokens, out.eviction_steps, out.evicted_slots, mode)
    replay(model, adapter, DecodeRequest(prompts, cfg), out.tokens, spec, loss_fn)
    flat: dict[str, list[torch.Tensor]] = {}
    for name, p in adapter.named_parameters():
        if p.grad is not None:
            flat.setdefault(_group(name), []).append(p.grad.flatten())
    return {k: torch.cat(v) for k, v in flat.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    path, texts = _model_and_prompts(args)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok(t).input_ids for t in texts]
    model = load_base(path, dtype=torch.float64)
    adapter = _adapter(args, model)
    cfg = CacheConfig(
        budget=args.budget, evict_ratio=args.evict_ratio, eviction=args.eviction, rkv=args.rkv
    )
    sp = SamplingParams(
        max_new_tokens=args.max_new_tokens, seed=args.seed, stop_token_ids=(tok.eos_token_id,)
    )
    out = generate(model, adapter, DecodeRequest(prompts, cfg, tok.pad_token_id or 0), sp)
    res: dict[str, Any] = {
        "bench": "grad",
        "model": str(path),
        "adapter": args.adapter,
        "method": adapter.cfg.method,
        "evictions_per_seq": sum(out.evictions) / len(prompts),
    }
    for loss in ("every_token", "last_segment"):
        t = _grads(model, adapter, prompts, out, cfg, args, "truncated", loss == "last_segment")
        e = _grads(model, adapter, prompts, out, cfg, args, "exact", loss == "last_segment")
        res[loss] = {
            g: {
                "cosine": float(torch.nn.functional.cosine_similarity(t[g], e[g], dim=0)),
                "norm_ratio": float(t[g].norm() / e[g].norm().clamp_min(1e-300)),
                "exact_norm": float(e[g].norm()),
            }
            for g in e
        }
    return res
