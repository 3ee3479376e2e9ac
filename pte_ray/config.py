"""The run configuration: one pydantic tree, YAML file + dotted ``key=value`` overrides.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently
ignored setting. Each setting is declared once, with its default, bounds and help: the
``cache``, ``adapter`` and ``sampling`` sections are the method layer's own models
(``method/config.py``), ``grpo`` is ``rl/grpo.py``'s; the rest (roles, optimizer, loop) here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from pte_ray.config_sections import (
    ENGINE_METHODS,
    DataSection,
    LearnerSection,
    ModelSection,
    OptimSection,
    ReferenceSection,
    ReplaySection,
    RewardSection,
    RolloutSection,
    Section,
    TrainSection,
    VllmConfig,
)
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingConfig, SamplingParams
from pte_ray.rl.distill import DistillConfig
from pte_ray.rl.grpo import GRPOConfig
from pte_ray.rl.sft import SFTConfig


class Config(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    cache: CacheConfig = CacheConfig()
    adapter: AdapterConfig = AdapterConfig()
    sampling: SamplingConfig = SamplingConfig()
    grpo: GRPOConfig = GRPOConfig()
    sft: SFTConfig = SFTConfig()
    distill: DistillConfig = DistillConfig()
    optim: OptimSection = OptimSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    reference: ReferenceSection = ReferenceSection()
    learner: LearnerSection = LearnerSection()
    replay: ReplaySection = ReplaySection()
    train: TrainSection = TrainSection()
    vllm: VllmConfig = VllmConfig()

    @model_validator(mode="before")
    @classmethod
    def _adapter_seed(cls, data: Any) -> Any:
        """``adapter.seed`` defaults to ``train.seed``: one seed drives a run unless asked."""
        if not isinstance(data, dict) or not isinstance(data.get("adapter", {}), dict):
            return data
        adapter, train = data.get("adapter") or {}, data.get("train") or {}
        if "seed" in adapter or not isinstance(train, dict):
            return data
        return {**data, "adapter": {**adapter, "seed": train.get("seed", 0)}}

    @model_validator(mode="before")
    @classmethod
    def _replay_default(cls, data: Any) -> Any:
        """``replay.grad`` defaults by stage: exact for SFT, truncated for GRPO (README,
        "Truncated or exact": each stage's default is the one that learned more per hour)."""
        if not isinstance(data, dict) or not isinstance(data.get("replay", {}) or {}, dict):
            return data
        replay, train = data.get("replay") or {}, data.get("train") or {}
        if "grad" in replay or not isinstance(train, dict) or train.get("stage") != "sft":
            return data
        return {**data, "replay": {**replay, "grad": "exact"}}

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
        t = self.train
        if t.max_learner_restarts > 0 and t.save_every >= t.steps:
            raise ValueError(
                f"train.max_learner_restarts={t.max_learner_restarts} with train.save_every="
                f"{t.save_every} >= train.steps={t.steps}: no checkpoint before the last step "
                "to restart from"
            )
        r = self.rollout
        if r.engine == "vllm" and self.adapter.method not in ENGINE_METHODS:
            raise ValueError(
                f"rollout.engine=vllm serves {' and '.join(ENGINE_METHODS)} (full cache) only; "
                f"adapter.method={self.adapter.method} changes its LoRA per sequence from a "
                "bounded cache that vLLM's paged cache cannot hold: use rollout.engine=torch"
            )
        if self.learner.colocate and (r.min_workers or r.max_workers):
            raise ValueError(
                "learner.colocate=true fixes the rollout pool to the learners' bundles: "
                "leave rollout.min_workers/max_workers unset (no autoscaling)"
            )
        if self.grpo.drop_zero_adv and t.max_staleness:
            raise ValueError(
                "grpo.drop_zero_adv refills a step from the prompt stream while it runs: it "
                "needs train.max_staleness=0 (the prefetch would draw from the same stream)"
            )
        return self._check_stage()

    def _check_stage(self) -> Config:
        """What the SFT stage cannot do, said before anything starts."""
        if self.train.stage != "sft":
            return self
        if self.train.max_staleness:
            raise ValueError("train.stage=sft trains on fixed targets: set train.max_staleness=0")
        if self.cache_config().rkv_on:
            raise ValueError(
                "train.stage=sft with cache.eviction=rkv: R-KV chooses what to evict from the "
                "queries of a rollout, and a teacher-forced target has no rollout to replay; "
                "train SFT under cache.eviction=window, then GRPO under rkv (train.init_adapter)"
            )
        if not self.adapter.has_adapter:
            raise ValueError("train.stage=sft with adapter.method=base: nothing to train")
        return self

    @property
    def reference_pool(self) -> bool:
        """Whether the run starts reference workers: GRPO with a KL term or distillation."""
        return self.train.stage == "grpo" and (self.grpo.kl_coef > 0 or self.distill.coef > 0)

    def cache_config(self) -> CacheConfig:
        """The cache the configured method runs with (``lora``: a full one)."""
        return self.adapter.cache_for(self.cache)

    def adapter_config(self) -> AdapterConfig:
        return self.adapter

    def sampling_params(
        self, seed: int | None = None, row_seeds: Sequence[int] = (), greedy: bool = False
    ) -> SamplingParams:
        return SamplingParams(
            **self.sampling.model_dump(), seed=seed, row_seeds=tuple(row_seeds), greedy=greedy
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


def annotated_yaml(cfg: Config) -> str:
    """The resolved config as YAML, each key followed by its help: ``pte-ray config``."""
    lines = []
    for section, model in cfg:
        lines.append(f"{section}:")
        for key, field in type(model).model_fields.items():
            value = yaml.safe_dump(
                model.model_dump(mode="json")[key], default_flow_style=True, width=10**6
            ).strip()
            value = value.removesuffix("\n...").removesuffix(" ...").strip()
            lines.append(f"  {key}: {value}  # {field.description or ''}".rstrip(" #"))
    return "\n".join(lines) + "\n"
