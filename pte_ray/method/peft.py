"""The plain-LoRA adapter in PEFT's format, so engines that load PEFT adapters (vLLM) serve it.

Our factors follow the fused layout (``layout.FUSED``): ``layers.{l}.B.{group}`` stacks the
B of every adapted part of a group ([n*r, d_in]) and ``layers.{l}.A.{target}`` is [d_out, r],
with ``y = W x + (alpha/r) A B x``. PEFT names the same factors per module: ``lora_A`` = our B
rows of that part, ``lora_B`` = our A, scaling ``lora_alpha / r``. Only ``lora`` / ``lora_c``
export: the thought-state methods have no fixed LoRA to export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pte_ray.method.config import AdapterConfig
from pte_ray.method.layout import FUSED

# Our target name -> the HF (Qwen2 / Llama) module path inside a decoder layer.
HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def peft_tensors(state: dict[str, torch.Tensor], cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """PEFT ``lora_A`` / ``lora_B`` weights of every adapted module, from our state dict."""
    if cfg.uses_state or not cfg.has_adapter:
        raise ValueError(f"adapter.method={cfg.method} has no plain LoRA to export to PEFT")
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    r, out = cfg.rank, {}
    for layer in layers:
        for group, parts in FUSED:
            hits = [t for t in parts if t in cfg.targets]
            if not hits:
                continue
            b = state[f"layers.{layer}.B.{group}"]
            if b.shape[0] != len(hits) * r:
                raise ValueError(
                    f"layers.{layer}.B.{group} has {b.shape[0]} rows, expected "
                    f"{len(hits)} targets x rank {r}"
                )
            for i, t in enumerate(hits):
                name = f"base_model.model.model.layers.{layer}.{HF_MODULES[t]}"
                out[f"{name}.lora_A.weight"] = b[i * r : (i + 1) * r].contiguous()
                out[f"{name}.lora_B.weight"] = state[f"layers.{layer}.A.{t}"].contiguous()
    return out


def write_peft(
    out_dir: str | Path, state: dict[str, torch.Tensor], cfg: AdapterConfig, base: str
) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` in ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32) for k, v in peft_tensors(state, cfg).items()}
    meta = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted({HF_MODULES[t].split(".")[-1] for t in cfg.targets}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
