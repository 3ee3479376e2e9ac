"""What a rollout and every replay of it share, as records: the prompts and the cache they run
under (``DecodeRequest``), a rollout's engine-side extras (``DecodeHooks``) and how a replay
scores and reproduces the rollout (``ReplaySpec``). One record per concern instead of the same
ten arguments repeated down every call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pte_ray.method.config import CacheConfig


@dataclass(frozen=True)
class DecodeRequest:
    """The batch: prompts (token ids), the bounded (or full) cache, the padding id; whether a
    prompt that several rows share (a GRPO group) is run through the model once; how many rows
    decode at once (0: every prompt; fewer: a row that ends takes the next queued prompt)."""

    prompts: list[list[int]]
    cache: CacheConfig
    pad_id: int = 0
    share_prompts: bool = True
    batch_rows: int = 0

    def __post_init__(self) -> None:
        if self.batch_rows < 0:
            raise ValueError(f"batch_rows={self.batch_rows} must be >= 0 (0: every prompt)")


@dataclass(frozen=True)
class DecodeHooks:
    """A rollout's extras: EOS ids, the tokenizer's decode (stop strings), a replacement for
    ``model.forward`` in decode steps (a compiled step), an observer of every R-KV choice."""

    eos_ids: Sequence[int] = ()
    detokenize: Callable[[list[int]], str] | None = None
    step_fn: Callable[..., tuple[Any, list]] | None = None
    on_evict: Callable | None = None


@dataclass(frozen=True)
class ReplaySpec:
    """How a replay scores the completions: at the sampling ``temperature``, with the cache
    capacity of ``max_new_tokens`` (None: the longest completion), reproducing the rollout's
    record (``eviction_steps`` checked against the schedule; ``evicted_slots`` under R-KV),
    with the ``grad_mode`` gradient, returning the ``topk`` likeliest tokens too."""

    temperature: float = 1.0
    max_new_tokens: int | None = None
    eviction_steps: list[list[int]] | None = None
    evicted_slots: list[list[list[int]]] | None = None
    grad_mode: str = "truncated"
    topk: int = 0

    @classmethod
    def of(cls, rollout: Any, max_new_tokens: int, **how: Any) -> ReplaySpec:
        """Replaying a ``Generation`` as it was recorded (its evictions and, under R-KV, the
        slots they freed); ``how``: temperature, grad_mode, topk."""
        rec = rollout.eviction_steps, rollout.evicted_slots
        return cls(
            max_new_tokens=max_new_tokens, eviction_steps=rec[0], evicted_slots=rec[1], **how
        )
