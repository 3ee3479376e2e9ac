"""Tiny Qwen2 / Qwen3 / Llama models from scratch: the same dims, each architecture's features.

Forward-parity tests need real HF checkpoints of every supported architecture (q/k/v bias,
q/k norms, GQA), and the warm-started tiny model starts from one of these; all are seeded
without touching the caller's RNG so that a test's own randomness is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pte_ray.tiny.recipe import TINY_DIMS
from pte_ray.tiny.tokenizer import EOS_TOKEN, build_tokenizer


def _config(arch: str, vocab_size: int, eos_id: int, dims: dict[str, Any]):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    dims = dict(dims)
    rope = {"rope_type": "default", "rope_theta": float(dims.pop("rope_theta", 10000.0))}
    head_dim = dims.pop("head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    if head_dim < 32:
        raise ValueError(f"head_dim must be >= 32 (kernels and tests assume it), got {head_dim}")
    common = dict(
        vocab_size=vocab_size,
        rope_parameters=rope,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        bos_token_id=None,
        rms_norm_eps=1e-6,
        **dims,
    )
    if arch == "qwen2":  # q/k/v projections carry a bias in Qwen2; head_dim is implicit
        if head_dim * dims["num_attention_heads"] != dims["hidden_size"]:
            raise ValueError("qwen2 needs hidden_size == num_attention_heads * head_dim")
        return Qwen2Config(**common)
    if arch == "qwen3":  # q_norm/k_norm, no bias, explicit head_dim
        return Qwen3Config(head_dim=head_dim, attention_bias=False, **common)
    if arch == "llama":  # no bias anywhere, no q/k norms
        return LlamaConfig(head_dim=head_dim, attention_bias=False, mlp_bias=False, **common)
    raise ValueError(f"arch must be qwen2, qwen3 or llama, got {arch!r}")


def new_model(arch: str, seed: int, dims: dict[str, Any], tok, dtype: torch.dtype):
    """A freshly initialised HF causal LM of ``arch`` for the tokenizer ``tok``."""
    from transformers import AutoModelForCausalLM

    config = _config(arch, len(tok), tok.convert_tokens_to_ids(EOS_TOKEN), dims)
    with seeded(seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.to(dtype)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds torch without leaking the change into the caller's global RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_checkpoint(
    path: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Saves a randomly initialised tiny HF checkpoint (+ tokenizer) for forward-parity tests."""
    path = Path(path)
    dims = {**TINY_DIMS, **overrides}
    tok = build_tokenizer(path)
    model = new_model(arch, seed, dims, tok, dtype)
    model.save_pretrained(str(path), safe_serialization=True)
    return path
