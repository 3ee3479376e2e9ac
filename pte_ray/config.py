"""The run configuration: one pydantic tree, YAML file + dotted ``key=value`` overrides.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently
ignored setting. ``to_method`` turns sections into the method layer's dataclasses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingParams
from pte_ray.rl.grpo import GRPOConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: str = "tiny"  # 'tiny' = built and cached by pte_ray.tiny
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"


class DataSection(Section):
    train: str = "tiny"  # JSONL / JSON / Parquet / dir of Parquet shards, or 'tiny'
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    messages_key: str | None = None
    system_prompt: str | None = None
    instruction: str | None = None
    apply_chat_template: bool = False
    skip_bad_rows: bool = False
    max_prompt_tokens: int | None = Field(default=None, ge=1)


class CacheSection(Section):
    budget: int | None = Field(default=64, ge=1)
    budget_mode: Literal["thought", "total"] = "thought"
    evict_ratio: float = Field(default=0.25, gt=0.0, le=1.0)


class AdapterSection(Section):
    method: Literal["base", "lora", "lora_c", "global_only", "pte"] = "pte"
    rank: int = Field(default=8, ge=1)
    alpha: float = 16.0
    global_tokens: int = Field(default=32, ge=1)  # the paper's and the design's G
    targets: list[str] = ["q", "k", "v", "o"]
    attention: Literal["softmax", "linear"] = "softmax"


class SamplingSection(Section):
    max_new_tokens: int = Field(default=192, ge=1)
    temperature: float = Field(default=1.0, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop_strings: list[str] = []


class GRPOSection(Section):
    group_size: int = Field(default=8, ge=1)
    use_std: bool = True
    clip_low: float = Field(default=0.2, ge=0.0)
    clip_high: float = Field(default=0.28, ge=0.0)
    kl_coef: float = Field(default=0.0, ge=0.0)
    kl_clamp: float = Field(default=10.0, gt=0.0)  # |ref - logp| bound inside k3's exp
    loss_agg: Literal["token-mean", "seq-mean"] = "token-mean"


class OptimSection(Section):
    lr: float = Field(default=3e-4, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.99)
    # The thought encoder's learning rate as a multiple of ``lr``. Adam moves every weight by
    # ~lr per step whatever its scale, and the encoder's global tokens are std-1: at 1.0 they
    # moved 0.3-0.4% in 80 recall-task steps; at 10, 2-3%, with no gain in recall (README).
    encoder_lr_scale: float = Field(default=1.0, gt=0.0)


class RolloutSection(Section):
    num_workers: int = Field(default=1, ge=1)
    min_workers: int | None = Field(default=None, ge=1)
    max_workers: int | None = Field(default=None, ge=1)
    num_cpus: float = Field(default=0.5, gt=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    scale_up_wait_s: float = Field(default=30.0, gt=0.0)  # queue wait that adds a worker
    scale_down_idle_s: float = Field(default=120.0, gt=0.0)


class RewardSection(Section):
    num_workers: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.25, gt=0.0)
    timeout_s: float = Field(default=2.0, gt=0.0)
    last_number_fallback: bool = True
    format_bonus: float = 0.0


class ReferenceSection(Section):
    num_workers: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.25, gt=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    micro_batch: int = Field(default=16, ge=1)


class LearnerSection(Section):
    num_learners: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, gt=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    zero_stage: Literal[0, 1, 2] = 2
    micro_batch: int = Field(default=16, ge=1)  # sequences per replay pass (grad accumulation)
    mini_batches: int = Field(default=1, ge=1)  # optimizer steps per RL step (PPO-style)
    # Rollout (and reference) workers share the learners' placement-group bundles: on a GPU
    # box, learner.num_gpus=0.5 + rollout.num_gpus=0.5 puts one of each on every GPU.
    colocate: bool = False


class ReplaySection(Section):
    # How the learner's segment replay back-propagates across evictions: "truncated" detaches
    # the cache and S at each (design section 1); "exact" recomputes the segments in reverse
    # from stored starts, the true gradient of the bounded-cache policy (method/replay_exact.py).
    grad: Literal["truncated", "exact"] = "truncated"


class TrainSection(Section):
    steps: int = Field(default=150, ge=1)
    prompts_per_step: int = Field(default=8, ge=1)
    seed: int = 0
    output_dir: str | None = None  # None: runs/<date>-<time> (resume auto: the newest run)
    save_every: int = Field(default=10, ge=1)
    max_staleness: int = Field(default=0, ge=0)
    call_timeout_s: float = Field(default=600.0, gt=0.0)
    max_retries: int = Field(default=2, ge=0)
    ray_address: str | None = None  # None: connect to RAY_ADDRESS or start a local cluster


class Config(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    cache: CacheSection = CacheSection()
    adapter: AdapterSection = AdapterSection()
    sampling: SamplingSection = SamplingSection()
    grpo: GRPOSection = GRPOSection()
    optim: OptimSection = OptimSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    reference: ReferenceSection = ReferenceSection()
    learner: LearnerSection = LearnerSection()
    replay: ReplaySection = ReplaySection()
    train: TrainSection = TrainSection()

    @model_validator(mode="after")
    def _check(self) -> Config:
        n = self.train.prompts_per_step * self.grpo.group_size
        if self.learner.num_learners > n:
            raise ValueError(
                f"learner.num_learners={self.learner.num_learners} is more than the "
                f"{n} samples per step (train.prompts_per_step * grpo.group_size)"
            )
        if self.learner.num_learners > self.train.prompts_per_step:
            raise ValueError(
                f"learner.num_learners={self.learner.num_learners} > train.prompts_per_step="
                f"{self.train.prompts_per_step}: a GRPO group is never split across learners"
            )
        AdapterConfig(targets=tuple(self.adapter.targets))  # same check as the method layer
        r = self.rollout
        if self.learner.colocate and (r.min_workers or r.max_workers):
            raise ValueError(
                "learner.colocate=true fixes the rollout pool to the learners' bundles: "
                "leave rollout.min_workers/max_workers unset (no autoscaling)"
            )
        return self

    def cache_config(self) -> CacheConfig:
        budget = None if self.adapter.method == "lora" else self.cache.budget
        return CacheConfig(budget, self.cache.budget_mode, self.cache.evict_ratio)

    def adapter_config(self) -> AdapterConfig:
        a = self.adapter
        return AdapterConfig(
            a.method,
            a.rank,
            a.alpha,
            a.global_tokens,
            tuple(a.targets),
            a.attention,
            self.train.seed,
        )

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        s = self.sampling
        return SamplingParams(
            s.max_new_tokens,
            s.temperature,
            s.top_p,
            s.top_k,
            stop_strings=tuple(s.stop_strings),
            seed=seed,
        )

    def grpo_config(self) -> GRPOConfig:
        g = self.grpo
        return GRPOConfig(
            g.group_size,
            g.use_std,
            1e-6,
            g.clip_low,
            g.clip_high,
            g.kl_coef,
            g.loss_agg,
            g.kl_clamp,
        )


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + ``key=value`` overrides -> validated ``Config``."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping, got {type(loaded).__name__}")
        tree = loaded
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} is not key=value (e.g. cache.budget=64)")
        key, raw = ov.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw) if raw != "" else None)
    train = tree.get("train") or {}
    if "output_dir" in tree and isinstance(train, dict):  # short key for the run directory
        if "output_dir" in train:
            raise ValueError("output_dir and train.output_dir are both set; keep one")
        tree["train"] = {**train, "output_dir": tree.pop("output_dir")}
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"{loc or 'config'}: {err['msg']} (got {err.get('input')!r})")
        raise ValueError("invalid config:\n  " + "\n  ".join(lines)) from None


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
