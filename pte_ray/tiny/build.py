"""The tiny model and task files, built once per recipe and machine and cached on disk.

Building means training a tokenizer, warm-starting a model and measuring it (minutes on CPU),
so the result is cached under the recipe's hash and shared by every test, actor and run on the
machine. The measured accuracies are written beside the weights: a build's numbers depend on the
machine (``build_environment``), so each cached model carries its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pte_ray.progress import say
from pte_ray.tiny.disk_cache import cache_root, cached
from pte_ray.tiny.eval import bounded_accuracy, full_cache_accuracy
from pte_ray.tiny.model import new_model
from pte_ray.tiny.recipe import RECIPE_VERSION, TinyRecipe
from pte_ray.tiny.task import RecallSpec, make_task, recall_distance, write_rows
from pte_ray.tiny.tokenizer import EOS_TOKEN, build_tokenizer, raw_tokenizer
from pte_ray.tiny.warm_start import warm_start


def build_environment() -> dict[str, Any]:
    """What a build's numbers depend on besides the recipe.

    Training 1000 fp32 steps is chaotic: a different GEMM kernel (CPU model and vector ISA,
    MKL's code path), thread count (reduction order) or library version (tokenizer merges,
    initialisation) gives a different, equally valid model. Recorded so builds can be compared.
    """
    import tokenizers
    import transformers

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _save_and_measure(
    model, out: Path, tok, test: list[dict[str, str]], eos_id: int, recipe: TinyRecipe
) -> tuple[float, float, float]:
    """Saves the weights to ``out``; (greedy, sampled, bounded sampled) held-out accuracy."""
    # three batched generate calls of ~20 s each: a line before each, so a log never goes quiet
    n = len(test)
    say(f"tiny model: held-out accuracy on {n} problems, 1/3 greedy (~20 s of ~1 min)")
    greedy = full_cache_accuracy(model, tok, test, eos_id, sample=False, seed=recipe.seed)
    say(f"tiny model: held-out accuracy 2/3 sampled (greedy {greedy:.2f})")
    sampled = full_cache_accuracy(model, tok, test, eos_id, sample=True, seed=recipe.seed)
    model.save_pretrained(str(out), safe_serialization=True)
    say(f"tiny model: held-out accuracy 3/3 sampled, bounded cache (sampled {sampled:.2f})")
    bounded = bounded_accuracy(out, tok, test, eos_id, recipe.eval_budget, recipe.seed)
    return greedy, sampled, bounded


def _metadata(
    recipe: TinyRecipe,
    vocab_size: int,
    losses: list[float],
    sol_lens: list[int],
    accuracy: tuple[float, float, float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What ``pte_ray_tiny.json`` records beside the weights."""
    greedy, sampled, bounded = accuracy
    tail = losses[-20:] or [float("nan")]
    return {
        "recipe_hash": recipe.digest(),
        "recipe": asdict(recipe),
        "recipe_version": RECIPE_VERSION,
        "vocab_size": vocab_size,
        "warm_start_loss": sum(tail) / len(tail),
        "loss_curve": losses[:: max(1, len(losses) // 40)],
        "eval_n": len(sol_lens),
        "greedy_accuracy": greedy,
        "sampled_accuracy": sampled,
        "eval_budget": recipe.eval_budget,
        "bounded_sampled_accuracy": bounded,
        "solution_tokens": {
            "min": min(sol_lens),
            "mean": sum(sol_lens) / len(sol_lens),
            "max": max(sol_lens),
        },
        "seconds": seconds,
        "environment": build_environment(),
        "build_pid": os.getpid(),
    }


def _build(out: Path, recipe: TinyRecipe) -> None:
    """Trains, measures and saves one tiny model (tokenizer included) into ``out``."""
    say(
        f"building the tiny model once (3-6 min on 2 CPU cores; torch threads "
        f"{torch.get_num_threads()}) -> {out.parent}"
    )
    t0 = time.perf_counter()
    hf_tok = build_tokenizer(out, recipe)
    tok = raw_tokenizer(recipe)
    eos_id = tok.token_to_id(EOS_TOKEN)
    model = new_model("qwen2", recipe.seed, dict(recipe.dims), hf_tok, torch.float32)
    t_train = time.perf_counter()
    losses = warm_start(model, tok, recipe, eos_id)
    t_eval = time.perf_counter()
    test = make_task(recipe.eval_n, recipe.seed, "test", recipe.task)
    greedy, sampled, bounded = _save_and_measure(model, out, tok, test, eos_id, recipe)
    sol_lens = [len(tok.encode(r["solution"]).ids) for r in test]
    seconds = {
        "train": t_eval - t_train,
        "eval": time.perf_counter() - t_eval,
        "total": time.perf_counter() - t0,
    }
    meta = _metadata(recipe, len(hf_tok), losses, sol_lens, (greedy, sampled, bounded), seconds)
    (out / "pte_ray_tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    say(
        f"tiny model built in {meta['seconds']['total']:.0f} s: greedy accuracy {greedy:.2f}, "
        f"sampled {sampled:.2f}, sampled under a {recipe.eval_budget}-token thought budget "
        f"{bounded:.2f}"
    )


def build_tiny(
    cache_dir: str | Path | None = None, force: bool = False, recipe: TinyRecipe | None = None
) -> Path:
    """The warm-started tiny Qwen2 checkpoint (tokenizer included), built once and cached.

    ``pte_ray_tiny.json`` beside the weights records the recipe, its hash, the warm-start loss and
    the measured held-out accuracy (greedy, and sampled at temperature 1 as GRPO rollouts are).
    """
    recipe = recipe or TinyRecipe()
    return cached(
        cache_root(cache_dir),
        f"tiny-{recipe.digest()}",
        "pte_ray_tiny.json",
        force,
        lambda out: _build(out, recipe),
    )


def build_tiny_task(
    cache_dir: str | Path | None = None, recipe: TinyRecipe | None = None
) -> dict[str, Path]:
    """Train/test JSONL task files in the cache root (independent of the model build)."""
    recipe = recipe or TinyRecipe()
    key = json.dumps(
        [RECIPE_VERSION, recipe.seed, asdict(recipe.task), recipe.train_file_n, recipe.test_file_n]
    )
    name = f"task-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def encode(text: str) -> list[int]:
        return raw_tokenizer(recipe).encode(text).ids  # trained once per process (lru_cache)

    def build(out: Path) -> None:
        for split, n in (("train", recipe.train_file_n), ("test", recipe.test_file_n)):
            rows = make_task(n, recipe.seed, split, recipe.task)
            if isinstance(recipe.task, RecallSpec):  # accuracy per distance needs it
                for row in rows:
                    row["distance"] = recall_distance(encode, row)
            write_rows(out / f"{split}.jsonl", rows)

    folder = cached(cache_root(cache_dir), name, "test.jsonl", False, build)
    return {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}
