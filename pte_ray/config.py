"""The run configuration: one pydantic tree, YAML file + dotted ``key=value`` overrides.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently
ignored setting. Each setting is declared once, with its default, bounds and help: the
``cache``, ``adapter`` and ``sampling`` sections are the method layer's own models
(``method/config.py``), ``grpo`` is ``rl/grpo.py``'s; the rest (roles, optimizer, loop) here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pte_ray.engines.vllm_config import ENGINE_METHODS, Engine, VllmConfig
from pte_ray.method.config import AdapterConfig, CacheConfig, SamplingConfig, SamplingParams
from pte_ray.rl.data.schema import DataColumns, DataConfig
from pte_ray.rl.grpo import GRPOConfig
from pte_ray.rl.rewards import RewardConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _f(default: Any, help: str, **bounds: Any) -> Any:
    """A setting: its default, its bounds and its one-line help, in one declaration."""
    return Field(default, description=help, **bounds)


class ModelSection(Section):
    path: str = _f(
        "tiny",
        "HF checkpoint dir, hub id, tiny / tiny-recall, or qwen2.5-0.5b-shape / qwen2.5-1.5b-shape "
        "(random weights; all built locally)",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = _f(
        "auto", "auto: the checkpoint's dtype on GPU, fp32 on CPU"
    )


class DataSection(DataColumns):
    """The training data: its path here, how its rows are read in ``rl/data/schema.py``."""

    train: str = _f("tiny", "JSONL / JSON / Parquet / dir of Parquet shards, or tiny")
    max_prompt_tokens: int | None = _f(None, "drop (or fail on) longer prompts", ge=1)

    def loader(self, path: str) -> DataConfig:
        """The ``DataConfig`` that reads ``path`` with this section's columns and rendering."""
        return DataConfig(path=path, **self.model_dump(include=set(DataColumns.model_fields)))


class OptimSection(Section):
    lr: float = _f(3e-4, "AdamW learning rate of the LoRA factors", gt=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay", ge=0.0)
    grad_clip: float = _f(1.0, "global gradient-norm clip", gt=0.0)
    betas: tuple[float, float] = _f((0.9, 0.99), "AdamW betas")
    # Adam moves every weight by ~lr per step whatever its scale, and the encoder's global
    # tokens are std-1: at 1.0 they moved 0.3-0.4% in 80 recall-task steps; at 10, 2-3%, with
    # no gain in recall (README).
    encoder_lr_scale: float = _f(1.0, "thought encoder's lr as a multiple of lr", gt=0.0)


class RolloutSection(Section):
    engine: Engine = _f("torch", "torch (every method) | vllm (base, lora: full cache)")
    num_workers: int = _f(1, "rollout workers at start", ge=1)
    min_workers: int | None = _f(None, "autoscaling floor (None: num_workers)", ge=1)
    max_workers: int | None = _f(None, "autoscaling ceiling (None: num_workers)", ge=1)
    num_cpus: float = _f(0.5, "CPUs per rollout worker", gt=0.0)
    num_gpus: float = _f(0.0, "GPUs per rollout worker (fractions share a GPU)", ge=0.0)
    scale_up_wait_s: float = _f(30.0, "queue wait that adds a worker", gt=0.0)
    scale_down_idle_s: float = _f(120.0, "idle time that retires a worker", gt=0.0)
    max_groups_per_call: int | None = _f(
        None, "cap on groups one call takes (None: a fair share of the queue)", ge=1
    )
    compile: bool = _f(
        False, "torch.compile the decode step (each batch size compiles once per worker)"
    )
    request_resources: bool = _f(
        True, "ask Ray's autoscaler for workers the cluster cannot place yet"
    )

    @model_validator(mode="after")
    def _bounds(self) -> RolloutSection:
        if self.min_workers and self.max_workers and self.min_workers > self.max_workers:
            raise ValueError(
                f"rollout.min_workers={self.min_workers} > rollout.max_workers={self.max_workers}"
            )
        lo = self.min_workers or min(self.num_workers, self.max_workers or self.num_workers)
        hi = self.max_workers or max(self.num_workers, lo)
        if not lo <= self.num_workers <= hi:
            raise ValueError(
                f"rollout.num_workers={self.num_workers} is outside "
                f"[min_workers={lo}, max_workers={hi}]"
            )
        return self


class RewardSection(RewardConfig):
    """The verifier's own settings (``rl/rewards.py``) plus the reward pool's resources."""

    num_workers: int = _f(1, "reward workers (Ray actors)", ge=1)
    num_cpus: float = _f(0.25, "CPUs per reward worker", gt=0.0)


class ReferenceSection(Section):
    engine: Engine = _f("torch", "torch | vllm (prompt log-probs of prompt + completion)")
    num_workers: int = _f(1, "reference workers (started only when grpo.kl_coef > 0)", ge=1)
    num_cpus: float = _f(0.25, "CPUs per reference worker", gt=0.0)
    num_gpus: float = _f(0.0, "GPUs per reference worker", ge=0.0)
    micro_batch: int = _f(16, "sequences per reference forward", ge=1)


class LearnerSection(Section):
    num_learners: int = _f(1, "ranks of the one torch.distributed group", ge=1)
    num_cpus: float = _f(0.5, "CPUs per learner", gt=0.0)
    num_gpus: float = _f(0.0, "GPUs per learner", ge=0.0)
    zero_stage: Literal[0, 1, 2] = _f(2, "DeepSpeed ZeRO stage")
    micro_batch: int = _f(16, "sequences per replay pass (gradient accumulation)", ge=1)
    mini_batches: int = _f(1, "optimizer steps per RL step (>1: the PPO clip acts)", ge=1)
    # On a GPU box, learner.num_gpus=0.5 + rollout.num_gpus=0.5 puts one of each on every GPU.
    colocate: bool = _f(False, "rollout/reference workers share the learners' bundles")


class ReplaySection(Section):
    # "truncated" detaches the cache and S at each eviction (design section 1); "exact"
    # recomputes the segments in reverse from stored starts (method/replay_exact.py).
    grad: Literal["truncated", "exact"] = _f(
        "truncated", "truncated: detach at evictions; exact: the bounded-cache policy's gradient"
    )


class TrainSection(Section):
    steps: int = _f(150, "RL steps", ge=1)
    prompts_per_step: int = _f(8, "prompts (GRPO groups) per step", ge=1)
    seed: int = _f(0, "seed of data order, sampling and the adapter's initialisation")
    output_dir: str | None = _f(None, "run directory (None: runs/<date>-<time>)")
    save_every: int = _f(10, "steps between checkpoints", ge=1)
    keep_last: int | None = _f(
        None,
        "newest complete checkpoints kept, older ones deleted (None: all, so any step can be "
        "evaluated later; resuming needs only the newest)",
        ge=1,
    )
    max_learner_restarts: int = _f(
        0,
        "times a dead or hung learner group is replaced in the same job and resumed from the "
        "last checkpoint (0: a lost learner stops the run)",
        ge=0,
    )
    max_staleness: int = _f(0, "0: synchronous; 1: rollouts overlap learning", ge=0)
    call_timeout_s: float = _f(600.0, "a call that runs longer is retried elsewhere", gt=0.0)
    max_retries: int = _f(2, "retries of a lost or hung call before the run fails", ge=0)
    start_timeout_s: float = _f(
        600.0, "a role not ready in this time fails the start (or a probe: replaced)", gt=0.0
    )
    ray_address: str | None = _f(None, "None: RAY_ADDRESS, else a new local cluster")
    profile_steps: tuple[Annotated[int, Field(ge=1)], ...] = _f(
        (), "steps (from 1) traced by torch.profiler: RUN_DIR/profiles/step_N/ (Perfetto, TB)"
    )
    loggers: tuple[Literal["tensorboard", "wandb"], ...] = _f(
        (), "also log each step to TensorBoard (RUN_DIR/tensorboard) / W&B offline (RUN_DIR/wandb)"
    )
    profile_max_mb: float = _f(100.0, "a gzipped trace larger than this is dropped", gt=0.0)


class Config(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    cache: CacheConfig = CacheConfig()
    adapter: AdapterConfig = AdapterConfig()
    sampling: SamplingConfig = SamplingConfig()
    grpo: GRPOConfig = GRPOConfig()
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
        return self

    def cache_config(self) -> CacheConfig:
        """The cache the configured method runs with (``lora``: a full one)."""
        return self.adapter.cache_for(self.cache)

    def adapter_config(self) -> AdapterConfig:
        return self.adapter

    def sampling_params(
        self, seed: int | None = None, row_seeds: Sequence[int] = ()
    ) -> SamplingParams:
        return SamplingParams(**self.sampling.model_dump(), seed=seed, row_seeds=tuple(row_seeds))


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
