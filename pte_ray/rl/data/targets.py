"""SFT targets: a prompt's completion to teacher-force, as token ids with per-token loss weights.

A target is what follows the rendered prompt, then EOS, so that the model learns to stop where
the solution ends. The answer's tokens (from ``sft.answer_marker`` on) weigh ``answer_weight``.
Targets come from a data set's solution column or from a teacher's verified samples; both end
up here, so the learner sees one kind of record whatever their source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pte_ray.rl.data.schema import DataError, Example
from pte_ray.rl.sft import SFTConfig, target_weights


@dataclass(frozen=True)
class Target:
    prompt_index: int  # Example.index: the prompt's ids are the run's prompt_ids[prompt_index]
    ids: list[int]  # [T] completion ids, EOS last
    weights: list[float]  # [T] loss weight per token
    source: str  # "file:row" of a solution, or "teacher:<prompt index>:<sample>"


def encode_target(
    tok: Any, text: str, cfg: SFTConfig, eos_id: int | None
) -> tuple[list[int], list[float]]:
    """(ids + EOS, weights) of a completion text, encoded as the model would continue."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc.input_ids) + ([eos_id] if eos_id is not None else [])
    weights = target_weights(
        enc.offset_mapping, text, cfg.answer_marker, cfg.answer_weight, eos_id is not None
    )
    return ids, weights


def solution_targets(
    examples: Sequence[Example], tok: Any, cfg: SFTConfig, eos_id: int | None
) -> list[Target]:
    """One target per example, from its ``solution`` (read by ``load_dataset(solutions=True)``)."""
    out = []
    for ex in examples:
        if ex.solution is None:
            raise DataError(f"{ex.source}: no solution to train on")
        ids, weights = encode_target(tok, ex.solution, cfg, eos_id)
        out.append(Target(ex.index, ids, weights, ex.source))
    return out
