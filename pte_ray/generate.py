"""`pte-ray generate`: inference with a trained adapter under the same bounded cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="'tiny' or a local HF checkpoint directory")
    p.add_argument("--adapter", default=None, help="checkpoint dir with adapter.safetensors")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file, one prompt per line")
    p.add_argument(
        "--method", default=None, help="base|lora|lora_c|global_only|pte (default: adapter's)"
    )
    p.add_argument("--budget", type=int, default=None, help="thought budget (default: adapter's)")
    p.add_argument("--budget-mode", default=None, choices=["thought", "total"])
    p.add_argument("--evict-ratio", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from pte_ray.method.adapter import Adapter
    from pte_ray.method.checkpoint import load_adapter, load_base
    from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
    from pte_ray.method.decode import generate

    meta: dict = {}
    if args.adapter:
        meta_file = Path(args.adapter) / "adapter.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no adapter.json in {args.adapter}")
        meta = json.loads(meta_file.read_text())
    model_path = args.model
    if model_path == "tiny":
        from pte_ray.tiny import build_tiny

        model_path = str(build_tiny())
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [ln for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("no prompt given: use --prompt TEXT or --prompts-file FILE")

    acfg = dict(meta.get("adapter", {}))
    if args.method:
        acfg["method"] = args.method
    if "targets" in acfg:
        acfg["targets"] = tuple(acfg["targets"])
    adapter_cfg = AdapterConfig(**acfg)
    ccfg = dict(meta.get("cache", {}))
    for key in ("budget", "budget_mode", "evict_ratio"):
        if getattr(args, key) is not None:
            ccfg[key] = getattr(args, key)
    if adapter_cfg.method == "lora":
        ccfg["budget"] = None  # static LoRA with the full cache
    cache_cfg = CacheConfig(**ccfg)

    tok = AutoTokenizer.from_pretrained(model_path)
    model = load_base(model_path, device=args.device)
    adapter = None
    if adapter_cfg.has_adapter:
        adapter = Adapter(model.args, adapter_cfg, dtype=model.dtype, device=args.device)
        if args.adapter:
            load_adapter(adapter, args.adapter)
    sp = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
    )
    ids = [tok(p).input_ids for p in prompts]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out = generate(model, adapter, ids, sp, cache_cfg, eos_ids=eos, pad_id=tok.pad_token_id or 0)
    for i, p in enumerate(prompts):
        rec = {
            "prompt": p,
            "completion": tok.decode(out.tokens[i], skip_special_tokens=True),
            "tokens": len(out.tokens[i]),
            "evictions": out.evictions[i],
            "finish_reason": out.finish_reasons[i],
        }
        print(json.dumps(rec))
    return 0
