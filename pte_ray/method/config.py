"""Settings of the method layer: cache, adapter and sampling.

Plain dataclasses validated on construction, so a bad value fails where it is written, with the
name of the field, before any model is loaded. The controller's YAML config maps onto these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

METHODS = ("base", "lora", "lora_c", "global_only", "pte")
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

BudgetMode = Literal["thought", "total"]
Method = Literal["base", "lora", "lora_c", "global_only", "pte"]


@dataclass(frozen=True)
class CacheConfig:
    """Bounded KV cache. ``budget=None`` means a full cache (nothing is ever evicted)."""

    budget: int | None = 64
    budget_mode: BudgetMode = "thought"
    evict_ratio: float = 0.25

    def __post_init__(self) -> None:
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"cache.budget must be an integer >= 1 or None, got {self.budget!r}")
        if self.budget_mode not in ("thought", "total"):
            raise ValueError(
                f"cache.budget_mode must be 'thought' or 'total', got {self.budget_mode!r}"
            )
        if not (0.0 < float(self.evict_ratio) <= 1.0):
            raise ValueError(f"cache.evict_ratio must be in (0, 1], got {self.evict_ratio!r}")

    @property
    def bounded(self) -> bool:
        return self.budget is not None

    def evict_count(self) -> int:
        """Tokens evicted at once: ceil(evict_ratio * budget) (design section 1).

        Computed on the decimal value of the ratio, so float error cannot round up a product
        that is a whole number (0.07 * 100 is 7.000000000000001 in binary floating point).
        """
        assert self.budget is not None
        exact = Fraction(repr(float(self.evict_ratio))) * self.budget
        return max(1, math.ceil(exact))

    def thought_capacity(self, prompt_len: int, max_new_tokens: int) -> int:
        """How many thought tokens one row may hold before it must evict."""
        if self.budget is None:
            return max(1, max_new_tokens)
        if self.budget_mode == "thought":
            return self.budget
        cap = self.budget - prompt_len
        if cap < 1:
            raise ValueError(
                f"prompt of {prompt_len} tokens does not fit cache.budget={self.budget} "
                "(budget_mode=total keeps the whole prompt and needs room for at least one "
                "thought token)"
            )
        return cap


@dataclass(frozen=True)
class AdapterConfig:
    """The trained adapter of each method (design section 1, the paper's Table 1 rows).

    ``lora`` / ``lora_c``: plain LoRA ``W x + (alpha/r) A B x`` (full / bounded cache).
    ``global_only``: ``A S_0 B`` with S_0 from the global tokens, never updated (the paper's
    ablation). ``pte``: ``A S B`` with S folded from every eviction.
    """

    method: Method = "pte"
    rank: int = 8
    alpha: float = 16.0
    global_tokens: int = 32
    targets: tuple[str, ...] = ("q", "k", "v", "o")
    attention: Literal["softmax", "linear"] = "softmax"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.rank < 1:
            raise ValueError(f"adapter.rank must be >= 1, got {self.rank!r}")
        if self.global_tokens < 1:
            raise ValueError(f"adapter.global_tokens must be >= 1, got {self.global_tokens!r}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"adapter.targets must be a non-empty subset of {TARGETS}, got {bad}")
        if self.attention not in ("softmax", "linear"):
            raise ValueError(
                f"adapter.attention must be 'softmax' or 'linear', got {self.attention!r}"
            )

    @property
    def has_adapter(self) -> bool:
        return self.method != "base"

    @property
    def uses_state(self) -> bool:
        """Methods whose LoRA goes through a thought state S (and so have an encoder)."""
        return self.method in ("global_only", "pte")

    @property
    def dynamic(self) -> bool:
        """Only PTE folds evicted tokens into the state; ``global_only`` keeps S = S_0."""
        return self.method == "pte"


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. Log-probs are always those of softmax(logits / temperature)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    check_every: int = 16  # steps between host checks of finished rows / stop strings

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.temperature <= 0 and not self.greedy:
            raise ValueError(
                f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature!r}"
            )
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k!r}")

    @property
    def logprob_temperature(self) -> float:
        return 1.0 if self.greedy else float(self.temperature)
