"""Loading HF checkpoints into ``Transformer`` and saving/loading adapters as safetensors."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pte_ray.atomic import atomic_path, write_text
from pte_ray.method.layout import ModelArgs
from pte_ray.method.model import Transformer

SUPPORTED = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}
# The HF module of each target linear under ``model.layers.{i}.``; the layout says how they fuse.
HF_LINEAR = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def _hf_config(path: Path) -> Any:
    from transformers import AutoConfig

    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model path {str(path)!r} has no config.json")
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if cfg.model_type not in SUPPORTED:
        raise ValueError(
            f"unsupported architecture {cfg.model_type!r} in {path}/config.json "
            f"(architectures={getattr(cfg, 'architectures', None)}); "
            f"supported model_type: {sorted(SUPPORTED)}"
        )
    return cfg


def model_args(cfg: Any, weight_names: set[str]) -> ModelArgs:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelArgs(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        dim=cfg.hidden_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
        head_dim=head_dim,
        intermediate=cfg.intermediate_size,
        norm_eps=cfg.rms_norm_eps,
        qkv_bias="model.layers.0.self_attn.q_proj.bias" in weight_names,
        qk_norm="model.layers.0.self_attn.q_norm.weight" in weight_names,
        tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False))
        or "lm_head.weight" not in weight_names,
    )


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards its index names)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _rotary(cfg: Any) -> torch.nn.Module:
    name = SUPPORTED[cfg.model_type]
    mod = importlib.import_module(f"transformers.models.{cfg.model_type}.modeling_{cfg.model_type}")
    return getattr(mod, f"{name}RotaryEmbedding")(config=cfg)


def _open_weights(path: Path) -> dict[str, Any]:
    """Tensor name -> the safetensors handle that holds it (nothing is read yet)."""
    handles = []
    for f in weight_files(path):
        try:
            handles.append(safe_open(str(f), framework="pt", device="cpu"))
        except (SafetensorError, OSError) as e:  # neither names the file
            raise ValueError(f"cannot read weights file {f}: {e} (truncated or corrupt?)") from e
    return {name: h for h in handles for name in h.keys()}


def _stored_dtype(where: dict[str, Any]) -> torch.dtype:
    name = "model.embed_tokens.weight"
    stored = where[name].get_slice(name).get_dtype() if name in where else "F32"
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(str(stored), torch.float32)


def load_base(
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Transformer:
    """Load a local Llama / Qwen2 / Qwen3 checkpoint (safetensors) as a frozen ``Transformer``.

    ``dtype`` None keeps the checkpoint's dtype. Weights are read tensor by tensor and fused
    (q|k|v, gate|up) as they are copied in, so peak host memory stays about one model.
    """
    path = Path(path)
    cfg = _hf_config(path)
    where = _open_weights(path)
    args = model_args(cfg, set(where))
    model = Transformer(args, _rotary(cfg), dtype=dtype or _stored_dtype(where), device=device)

    def get(name: str) -> torch.Tensor:
        if name not in where:
            raise KeyError(f"checkpoint {path} lacks tensor {name!r}")
        return where[name].get_tensor(name)

    def put(dst: torch.Tensor, *names: str) -> None:
        src = torch.cat([get(n) for n in names], dim=0)
        if src.shape != dst.shape:
            raise ValueError(
                f"{names} in {path} has shape {tuple(src.shape)}, expected {dst.shape}"
            )
        dst.copy_(src)

    with torch.no_grad():
        put(model.embed, "model.embed_tokens.weight")
        put(model.norm, "model.norm.weight")
        if model.lm_head is not None:
            put(model.lm_head, "lm_head.weight")
        for i, blk in enumerate(model.layers):
            _load_layer(blk, put, f"model.layers.{i}.")
    return model


def _load_layer(blk: Any, put: Any, p: str) -> None:
    """One layer's HF tensors into ``blk``, each fused group concatenated in layout order."""
    layout = blk.layout
    put(blk.attn_norm, p + "input_layernorm.weight")
    put(blk.ffn_norm, p + "post_attention_layernorm.weight")
    for group in layout.groups:
        put(blk.w[group.name], *(p + HF_LINEAR[t] + ".weight" for t in group.targets))
    if blk.bqkv is not None:
        put(blk.bqkv, *(p + HF_LINEAR[t] + ".bias" for t in layout.qkv.targets))
    if blk.args.qk_norm:
        put(blk.q_norm, p + "self_attn.q_norm.weight")
        put(blk.k_norm, p + "self_attn.k_norm.weight")


def save_adapter(
    adapter: torch.nn.Module, path: str | os.PathLike[str], meta: dict[str, Any]
) -> None:
    """Write ``adapter.safetensors`` + ``adapter.json`` atomically into directory ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    with atomic_path(out / "adapter.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_text(out / "adapter.json", json.dumps(meta, indent=2, sort_keys=True))


def load_adapter_tensors(
    adapter: torch.nn.Module, tensors: dict[str, torch.Tensor], src: str
) -> None:
    """Copy ``tensors`` into ``adapter``, failing with the name and both shapes on mismatch."""
    own = adapter.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(
            f"adapter {src} does not match the model: missing {missing[:5]}, unexpected "
            f"{extra[:5]} (was it trained with other targets/rank/method?)"
        )
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise ValueError(
                f"adapter {src}: tensor {k!r} has shape {tuple(v.shape)}, "
                f"the model expects {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v)


def load_adapter(adapter: torch.nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``path/adapter.safetensors`` into ``adapter``; returns the JSON metadata."""
    d = Path(path)
    f = d / "adapter.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"no adapter.safetensors in {d}")
    load_adapter_tensors(adapter, load_file(str(f)), str(f))
    meta = d / "adapter.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}
