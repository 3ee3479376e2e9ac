"""`pte-ray generate`: inference with a trained adapter under the same bounded cache.

Settings come from the same ``--config`` and ``key=value`` overrides as ``train``, on top of
the checkpoint's own adapter settings (``eval_config``), so a checkpoint generates with the
method, rank and cache it was trained with unless an override says otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (model, adapter, cache, sampling)")
    p.add_argument("--adapter", default=None, help="checkpoint dir with adapter.safetensors")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a text file, one prompt per line")
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. cache.budget=64 sampling.top_p=0.9"
    )


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [ln for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("no prompt given: use --prompt TEXT or --prompts-file FILE")
    return prompts


def main(args: argparse.Namespace) -> int:
    from pte_ray.commands.evaluate import eval_config
    from pte_ray.engines.torch_engine import TorchEngine
    from pte_ray.method.checkpoint import load_adapter
    from pte_ray.run.models import resolve_model

    cfg = eval_config(args.config, args.overrides, args.adapter)
    prompts = _prompts(args)
    path = resolve_model(cfg.model.path)
    engine = TorchEngine(
        path,
        cfg.adapter_config(),
        cfg.cache_config(),
        cfg.model.dtype,
        args.device,
        pack=cfg.model.pack,
    )
    if args.adapter and engine.adapter is not None:
        load_adapter(engine.adapter, args.adapter)
    sp = cfg.sampling_params(seed=args.seed).model_copy(update={"greedy": args.greedy})
    ids = [engine.tokenizer(p).input_ids for p in prompts]
    out = engine.sample(ids, sp)
    for i, p in enumerate(prompts):
        rec = {
            "prompt": p,
            "completion": engine.decode(out.tokens[i]),
            "tokens": len(out.tokens[i]),
            "evictions": out.evictions[i],
            "finish_reason": out.finish_reasons[i],
        }
        print(json.dumps(rec))
    return 0
