"""A tiny model, tokenizer and task built by the project itself, for tests and the default run.

No model hub is reachable, so everything is made here: a byte-level BPE tokenizer trained with
Qwen2's own pre-tokenizer (``tokenizer``), a Qwen2-style model (``model``), and a short
supervised warm-start (``warm_start``) on the synthetic task of ``task``, so that GRPO starts
above zero reward with room to climb. ``build`` measures the result (``eval``) and caches it on
disk (``disk_cache``) under a hash of the recipe (``recipe``).
"""

from pte_ray.tiny.build import build_environment, build_tiny, build_tiny_task
from pte_ray.tiny.disk_cache import cache_root
from pte_ray.tiny.model import random_checkpoint
from pte_ray.tiny.recipe import RECIPE_VERSION, RECIPES, TINY_DIMS, TinyRecipe
from pte_ray.tiny.task import RecallSpec, TaskSpec, make_task, recall_distance, write_task
from pte_ray.tiny.tokenizer import build_tokenizer, raw_tokenizer

__all__ = [
    "RECIPES",
    "RECIPE_VERSION",
    "TINY_DIMS",
    "RecallSpec",
    "TaskSpec",
    "TinyRecipe",
    "build_environment",
    "build_tiny",
    "build_tiny_task",
    "build_tokenizer",
    "cache_root",
    "make_task",
    "random_checkpoint",
    "raw_tokenizer",
    "recall_distance",
    "write_task",
]
