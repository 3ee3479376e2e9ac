"""Prompt data: load and validate JSONL / JSON / Parquet (file or directory of shards), render
prompts, filter them by length and stream them in seeded, resumable order.

One module per stage: ``schema`` (what a row is), ``read`` (raw rows of each format), ``load``
(validation), ``render`` (the model's text, length filter), ``stream`` (epoch order, cursor).
Rollout output lives in ``pte_ray.run.rollout_log``.
"""

from pte_ray.rl.data.load import LoadReport, load_dataset, load_prompts
from pte_ray.rl.data.render import BOXED_INSTRUCTION, LengthReport, filter_by_length, render_prompt
from pte_ray.rl.data.schema import DataConfig, DataError, Example
from pte_ray.rl.data.stream import PromptStream

__all__ = [
    "BOXED_INSTRUCTION",
    "DataConfig",
    "DataError",
    "Example",
    "LengthReport",
    "LoadReport",
    "PromptStream",
    "filter_by_length",
    "load_dataset",
    "load_prompts",
    "render_prompt",
]
