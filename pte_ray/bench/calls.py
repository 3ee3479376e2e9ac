"""The bench's rollout calls: one generate call of the bench's prompts (rows refilled when
``--requests`` exceed ``--batch``), or with ``--no-refill`` calls of ``--batch`` one after
another, as step generators so ``--ab`` can interleave two of them."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Generator
from typing import Any

import torch

from pte_ray.bench.common import cache_cfg
from pte_ray.method.adapter import Adapter
from pte_ray.method.config import SamplingParams
from pte_ray.method.decode import finish, rollout_steps
from pte_ray.method.outputs import Generation
from pte_ray.method.requests import DecodeHooks, DecodeRequest


def sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=args.seed)


def row_lengths(args: argparse.Namespace, n: int) -> tuple[int, ...]:
    """--mixed: each row's length, uniform in [max_new_tokens / 4, max_new_tokens], seeded the
    same in every engine's process (a GRPO batch's rows end at different lengths)."""
    if not args.mixed:
        return ()
    rng, hi = random.Random(args.seed), args.max_new_tokens
    return tuple(rng.randint(max(1, hi // 4), hi) for _ in range(n))


def rollout_fn(args: argparse.Namespace, model: Any, adapter: Adapter | None, prompts: list) -> Any:
    """A no-argument callable that runs one bounded-cache rollout of ``prompts``."""
    steps = rollout_steps_fn(args, model, adapter, prompts)
    return lambda: finish(steps())


def _joined(parts: list[Generation]) -> Generation:
    """Several calls' generations as one (rows in order, stats summed)."""
    stats: dict[str, float] = {}
    for g in parts:
        for k, v in g.stats.items():
            stats[k] = stats.get(k, 0.0) + v
    cat = lambda name: [x for g in parts for x in getattr(g, name)]  # noqa: E731
    return Generation(
        cat("prompts"),
        cat("tokens"),
        cat("logprobs"),
        cat("eviction_steps"),
        cat("finish_reasons"),
        stats,
        cat("evicted_slots"),
    )


def rollout_steps_fn(
    args: argparse.Namespace, model: Any, adapter: Adapter | None, prompts: list
) -> Callable[[], Generator[int, None, Generation]]:
    """The same rollout as ``rollout_fn``, as a fresh step generator per call; with
    ``--no-refill``, calls of ``--batch`` prompts one after another (finished rows idle)."""
    lengths = row_lengths(args, len(prompts))
    if not getattr(args, "no_refill", False) or len(prompts) <= args.batch:
        return _call_fn(args, model, adapter, prompts, lengths)
    calls = [
        _call_fn(args, model, adapter, prompts[i : i + args.batch], lengths[i : i + args.batch])
        for i in range(0, len(prompts), args.batch)
    ]

    def chained() -> Generator[int, None, Generation]:
        parts = []
        for c in calls:
            parts.append((yield from c()))
        return _joined(parts)

    return chained


def _call_fn(
    args: argparse.Namespace,
    model: Any,
    adapter: Adapter | None,
    prompts: list,
    lengths: tuple[int, ...],
) -> Callable[[], Generator[int, None, Generation]]:
    """One generate call of ``prompts`` (rows of ``lengths``; more than --batch: refilled)."""
    step_fn = torch.compile(model.forward, dynamic=False) if args.compile else None
    sp = sampling(args).model_copy(update={"row_max_new_tokens": lengths})
    # no EOS: every row generates max_new_tokens (or, --mixed, its own length), as HF / vLLM do
    rows = args.batch if len(prompts) > args.batch else 0  # fewer rows than prompts: refill
    req = DecodeRequest(prompts, cache_cfg(args), batch_rows=rows)
    hooks = DecodeHooks(step_fn=step_fn)
    return lambda: rollout_steps(model, adapter, req, sp, hooks)
