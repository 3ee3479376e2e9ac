"""The recipe of the tiny model: every knob that determines what a build produces.

A build takes minutes, so it is cached on disk under the recipe's hash (``TinyRecipe.digest``);
anything that changes the weights must therefore live here, and ``RECIPE_VERSION`` is bumped
when the build code changes what the same recipe produces.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from pte_ray.tiny.task import DEFAULT_SPEC, RecallSpec, TaskSpec

# Bump when the build code changes what a recipe produces, so stale caches are not reused.
RECIPE_VERSION = 3  # 3: metadata records the build environment

TINY_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA, head_dim 32
    "head_dim": 32,
    "num_hidden_layers": 4,
    "intermediate_size": 384,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the tiny model; its hash names the cache directory."""

    seed: int = 0
    vocab_size: int = 512  # BPE target; the trained vocabulary may be smaller
    dims: tuple[tuple[str, Any], ...] = tuple(TINY_DIMS.items())
    task: TaskSpec | RecallSpec = DEFAULT_SPEC
    tokenizer_corpus: int = 2000  # task problems in the tokenizer's training corpus
    warm_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    train_pool: int = 3000  # distinct train problems the warm-start cycles through
    eval_n: int = 128  # held-out problems for the recorded accuracy
    train_file_n: int = 2000
    test_file_n: int = 200
    eval_budget: int = 64  # thought budget of the recorded bounded-cache accuracy

    def digest(self) -> str:
        """The hash of the recipe's values (never of code or module names): the cache key."""
        blob = json.dumps({"v": RECIPE_VERSION, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Tasks by name (``model.path`` / ``data.train`` / ``eval --bench``): the counting task of the
# default run, and the recall task whose answer must survive eviction (task.RecallSpec).
RECIPES: dict[str, TinyRecipe] = {
    "tiny": TinyRecipe(),
    "tiny-recall": TinyRecipe(task=RecallSpec(), warm_steps=2000),
}
