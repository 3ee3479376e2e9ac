"""Real-sized model shapes with random weights, built on this machine (no model hub).

Speed figures on the 0.85M-parameter tiny model measure per-op dispatch, not what a 0.5B-8B
model costs: a decode step there reads every weight once (~2 GB for Qwen2.5-0.5B in fp32), so
the cache and the sampler matter in proportion. These checkpoints have the published configs'
shapes (layers, heads, KV heads, MLP width, the full 151,936-token vocabulary and its tied
head) with random weights and the tiny tokenizer (its ids are a subset of the vocabulary).
Built once into ``$PTE_RAY_CACHE/shape-<name>``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from pte_ray.tiny.disk_cache import cache_root

# From the published config.json files of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b-shape": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b-shape": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}
VOCAB = 151936


def shape_checkpoint(name: str, cache_dir: str | Path | None = None) -> Path:
    """The checkpoint dir of shape ``name`` (built on first use; bf16 weights on disk)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}")
    path = cache_root(cache_dir) / f"shape-{name}"
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return path
    from transformers import AutoModelForCausalLM

    from pte_ray.tiny.model import _config, seeded
    from pte_ray.tiny.tokenizer import EOS_TOKEN, build_tokenizer

    tmp = path.with_name(path.name + ".tmp")
    tok = build_tokenizer(tmp)
    config = _config("qwen2", VOCAB, tok.convert_tokens_to_ids(EOS_TOKEN), SHAPES[name])
    with seeded(0):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)  # a half-built one from an interrupted build
    tmp.replace(path)
    return path
