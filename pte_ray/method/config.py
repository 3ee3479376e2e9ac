"""Settings of the method layer: cache, adapter, sampling. Each declared once, here.

These pydantic models *are* the ``cache``, ``adapter`` and ``sampling`` sections of the run's
YAML config (``pte_ray/config.py`` embeds them), so a default or a bound is written in one place
with its help beside it, and a bad value fails where it is written, naming the field, before
any model is loaded. pydantic is not Ray: the method layer stays free of it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pte_ray.method.layout import TARGETS  # the adapter targets are the layout's parts

METHODS = ("base", "lora", "lora_c", "global_only", "pte")

BudgetMode = Literal["thought", "total"]
Eviction = Literal["window", "rkv"]
Method = Literal["base", "lora", "lora_c", "global_only", "pte"]


class Settings(BaseModel):
    """Frozen, and unknown keys are errors: a typo names itself instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RKVConfig(Settings):
    """R-KV scoring (arXiv 2505.24133), defaults as the paper's README and ``run_math.py``."""

    window: int = Field(
        8,
        ge=1,
        description="observation window: the newest thought tokens, never evicted, "
        "whose queries score importance",
    )
    mix_lambda: float = Field(
        0.1, ge=0.0, le=1.0, description="score = lambda * importance - (1 - lambda) * redundancy"
    )
    kernel: int = Field(7, ge=1, description="max-pool width over importance (odd)")
    threshold: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="key cosine above which the newest similar token is "
        "spared from a token's redundancy",
    )

    def model_post_init(self, _: object) -> None:
        if self.kernel % 2 == 0:
            raise ValueError(f"cache.rkv.kernel must be odd, got {self.kernel}")


class CacheConfig(Settings):
    """Bounded KV cache. ``budget=None`` means a full cache (nothing is ever evicted)."""

    budget: int | None = Field(64, ge=1, description="KV slots per row (None: full cache)")
    budget_mode: BudgetMode = Field(
        "thought", description="thought: budget counts thought tokens; total: prompt too"
    )
    evict_ratio: float = Field(
        0.25, gt=0.0, le=1.0, description="fraction of the budget evicted at once"
    )
    eviction: Eviction = Field(
        "window",
        description="which thought tokens go: window (the oldest) | rkv (R-KV: "
        "lowest importance minus redundancy, chosen per row, shared by layers and heads)",
    )
    rkv: RKVConfig = Field(default_factory=RKVConfig, description="R-KV settings")

    def model_post_init(self, _: object) -> None:
        if self.budget is None or self.eviction != "rkv":
            return
        w, e = self.rkv.window, self.evict_count()
        if w >= self.budget:
            raise ValueError(
                f"cache.rkv.window={w} must be smaller than cache.budget={self.budget}"
            )
        if self.budget_mode == "thought" and w + e > self.budget:
            raise ValueError(
                f"cache.rkv.window={w} + evicted per step {e} (cache.evict_ratio="
                f"{self.evict_ratio} of cache.budget={self.budget}) exceed the budget: rkv "
                "would have to evict its observation window"
            )

    @property
    def rkv_on(self) -> bool:
        """Whether evictions are chosen by R-KV scores (else the oldest tokens go)."""
        return self.bounded and self.eviction == "rkv"

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

    def evicted_at_once(self, prompt_len: int, max_new_tokens: int) -> int:
        """Tokens a row of this prompt length evicts at once (its whole ring if smaller)."""
        if self.budget is None:
            return 0
        return min(self.evict_count(), self.thought_capacity(prompt_len, max_new_tokens))

    def schedule(self, prompt_len: int, n_fed: int, max_new_tokens: int) -> list[int]:
        """The eviction schedule, in one place: thought-token indices t before whose write a row
        of this prompt length evicts, when ``n_fed`` tokens are fed. It depends on the prompt
        length alone, so the host knows it without reading the device, and replay and the
        recall task's distances use the very same one."""
        e = self.evicted_at_once(prompt_len, max_new_tokens)
        if e <= 0:
            return []
        return list(range(self.thought_capacity(prompt_len, max_new_tokens), n_fed, e))

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
        if self.rkv_on and cap < self.rkv.window + self.evict_count():
            raise ValueError(
                f"prompt of {prompt_len} tokens leaves {cap} thought slots of cache.budget="
                f"{self.budget}: cache.eviction=rkv needs cache.rkv.window={self.rkv.window} + "
                f"{self.evict_count()} evicted (cache.evict_ratio={self.evict_ratio}); raise "
                "the budget or lower the window or ratio"
            )
        return cap


class AdapterConfig(Settings):
    """The trained adapter of each method (design section 1, the paper's Table 1 rows).

    ``lora`` / ``lora_c``: plain LoRA ``W x + (alpha/r) A B x`` (full / bounded cache).
    ``global_only``: ``A S_0 B`` with S_0 from the global tokens, never updated (the paper's
    ablation). ``pte``: ``A S B`` with S folded from every eviction.
    """

    method: Method = Field(
        "pte", description="base | lora (full cache) | lora_c | global_only | pte"
    )
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, description="LoRA scale alpha (the update is alpha/r * A B x)")
    global_tokens: int = Field(32, ge=1, description="learned global tokens G of the encoder")
    targets: tuple[str, ...] = Field(
        ("q", "k", "v", "o"), min_length=1, description=f"projections adapted, of {TARGETS}"
    )
    attention: Literal["softmax", "linear"] = Field(
        "softmax", description="the thought encoder's attention over evicted tokens"
    )
    seed: int = Field(0, description="initialisation seed (unset in a run config: train.seed)")

    def model_post_init(self, _: object) -> None:
        bad = [t for t in self.targets if t not in TARGETS]
        if bad:
            raise ValueError(f"adapter.targets must be a non-empty subset of {TARGETS}, got {bad}")

    @property
    def has_adapter(self) -> bool:
        return self.method != "base"

    @property
    def full_cache(self) -> bool:
        """``lora`` is the paper's full-cache baseline: the one method that never evicts."""
        return self.method == "lora"

    @property
    def uses_state(self) -> bool:
        """Methods whose LoRA goes through a thought state S (and so have an encoder)."""
        return self.method in ("global_only", "pte")

    @property
    def dynamic(self) -> bool:
        """Only PTE folds evicted tokens into the state; ``global_only`` keeps S = S_0."""
        return self.method == "pte"

    def cache_for(self, cache: CacheConfig) -> CacheConfig:
        """The cache this method runs with: ``cache``, or a full one for ``lora``."""
        return cache.model_copy(update={"budget": None}) if self.full_cache else cache


class SamplingConfig(Settings):
    """How rollouts sample. Log-probs are always those of softmax(logits / temperature)."""

    max_new_tokens: int = Field(192, ge=1, description="completion length cap (thought tokens)")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature (log-probs too)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1: off)")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: off)")
    stop_strings: tuple[str, ...] = Field((), description="texts that end a completion")


class SamplingParams(SamplingConfig):
    """``SamplingConfig`` plus what one generate call decides: greedy, stop ids, seed."""

    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None  # one stream for the call (rows then depend on their batch)
    row_seeds: tuple[int, ...] = ()  # one per prompt: each row samples as it would alone
    row_max_new_tokens: tuple[int, ...] = ()  # one per prompt: a row's own length limit
    check_every: int = Field(16, ge=1)  # steps between host checks of finished rows / stops

    @property
    def logprob_temperature(self) -> float:
        return 1.0 if self.greedy else float(self.temperature)
