"""`pte-ray bench eviction`: what sharing one R-KV choice across layers gives up, measured.

R-KV's reference code keeps a token set per (layer, head); ours keeps one per row for every
layer (``method/eviction.py`` says why). This samples rollouts under ``cache.eviction=rkv`` and,
at every eviction, also scores each layer on its own: how many of the tokens a layer alone
would evict the shared choice evicts too (1.0: sharing loses nothing for that layer), how much
the layers agree with each other, how much the choice differs from the window's (the oldest),
and how old the evicted tokens are under each.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

from pte_ray.method.cache import BoundedCache
from pte_ray.method.config import CacheConfig, SamplingParams
from pte_ray.method.decode import generate
from pte_ray.method.eviction import rkv_choose
from pte_ray.method.requests import DecodeHooks, DecodeRequest


def add_args(p: argparse.ArgumentParser) -> None:
    from pte_ray.bench.common import add_config_args

    # model.path (default tiny-recall: its test prompts), cache.*, sampling.max_new_tokens: k=v
    add_config_args(p, ["model.path=tiny-recall", "cache.eviction=rkv"])
    p.add_argument("--adapter", default=None, help="a checkpoint dir (default: a fresh adapter)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--a-std", type=float, default=0.02, help="fresh adapter: A ~ N(0, std)")
    p.add_argument("--seed", type=int, default=0)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of |a_i & b_i| / E for index sets [n, E]."""
    hit = (a[:, :, None] == b[:, None, :]).any(dim=-1).float()
    return float(hit.mean())


class _Probe:
    """Called at every R-KV choice, before it is applied; sums what ``run`` reports."""

    def __init__(self, n_layers: int) -> None:
        self.layer_vs_shared = [0.0] * n_layers
        self.layer_pairs = 0.0
        self.window_vs_shared = 0.0
        self.age_rkv = self.age_window = 0.0
        self.n = 0

    def __call__(self, cache: BoundedCache, due: list[int], chosen: torch.Tensor) -> None:
        assert cache.q_obs is not None
        all_held = cache.held()
        rows = torch.tensor(due, device=chosen.device)
        e, w, t = chosen.shape[1], cache.cfg.rkv.window, cache.t
        per_layer = [
            rkv_choose([k], [q], cache.valid, all_held, cache.p_max, t, e, cache.cfg.rkv)[rows]
            for k, q in zip(cache.keys(), cache.q_obs, strict=True)
        ]
        shared, held = chosen[rows], all_held[rows]
        for li, c in enumerate(per_layer):
            self.layer_vs_shared[li] += _overlap(c, shared)
        pairs = list(itertools.combinations(per_layer, 2))
        self.layer_pairs += sum(_overlap(a, b) for a, b in pairs) / max(1, len(pairs))
        age = torch.where((held >= 0) & (held < t - w), held, torch.iinfo(torch.long).max)
        oldest = age.argsort(dim=1)[:, :e]
        self.window_vs_shared += _overlap(oldest, shared)
        self.age_rkv += float((t - held.gather(1, shared)).float().mean())
        self.age_window += float((t - held.gather(1, oldest)).float().mean())
        self.n += 1

    def result(self) -> dict[str, Any]:
        n = max(1, self.n)
        return {
            "evictions": self.n,
            "layer_choice_kept_by_shared": [x / n for x in self.layer_vs_shared],
            # mean over layer pairs (none with one layer)
            "layer_vs_layer_overlap": self.layer_pairs / n
            if len(self.layer_vs_shared) > 1
            else None,
            "shared_vs_window_overlap": self.window_vs_shared / n,
            "mean_age_evicted_rkv": self.age_rkv / n,
            "mean_age_evicted_window": self.age_window / n,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from pte_ray.bench.grad import _adapter, _model_and_prompts
    from pte_ray.method.checkpoint import load_base

    path, texts = _model_and_prompts(args)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok(t).input_ids for t in texts]
    model = load_base(path, dtype=torch.float64)
    adapter = _adapter(args, model)
    cfg = CacheConfig(
        budget=args.budget, evict_ratio=args.evict_ratio, eviction="rkv", rkv=args.rkv
    )
    sp = SamplingParams(
        max_new_tokens=args.max_new_tokens, seed=args.seed, stop_token_ids=(tok.eos_token_id,)
    )
    probe = _Probe(model.args.n_layers)
    req = DecodeRequest(prompts, cfg, tok.pad_token_id or 0)
    out = generate(model, adapter, req, sp, DecodeHooks(on_evict=probe))
    return {
        "bench": "eviction",
        "model": str(path),
        "adapter": args.adapter,
        "method": adapter.cfg.method,
        "batch": len(prompts),
        "budget": args.budget,
        "evict_n": cfg.evict_count(),
        "rkv": args.rkv,
        "evictions_per_seq": sum(out.evictions) / len(prompts),
        **probe.result(),
    }
