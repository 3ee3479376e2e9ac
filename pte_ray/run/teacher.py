"""Adapter checkpoints a run starts from or learns from, checked before any actor starts.

Two kinds: ``train.init_adapter`` (a stage's checkpoint the student continues from: its tensors
must fit the run's adapter) and the teacher (``reference.model`` + ``reference.adapter``: the
full-cache policy whose log-probs distillation and the KL term read, and whose verified samples
the SFT stage can learn). A teacher must speak the student's vocabulary: a log-prob of token id
``t`` means nothing across tokenizers, so a mismatch is an error before any compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pte_ray.config import Config
from pte_ray.method.config import AdapterConfig

ADAPTER_KEYS = ("method", "rank", "alpha", "global_tokens", "targets", "attention")
SHAPE_KEYS = ("rank", "global_tokens", "targets")  # what fixes the tensors' shapes
PLAIN = ("lora", "lora_c")  # plain LoRA tensors (A is d_out x r, no encoder)


def adapter_meta(path: str, what: str) -> dict[str, Any]:
    """``adapter.json``'s ``adapter`` settings of a checkpoint dir, or an error naming ``what``."""
    d = Path(path)
    if not (d / "adapter.safetensors").is_file():
        raise FileNotFoundError(f"{what}={path}: no adapter.safetensors there (not a checkpoint?)")
    meta = d / "adapter.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{what}={path}: no adapter.json beside adapter.safetensors")
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}={path}: adapter.json is not JSON ({e})") from None


def _family(method: str) -> str:
    return "plain" if method in PLAIN else "state"


def check_init_adapter(cfg: Config) -> None:
    """The checkpoint's tensors must be the run's: same family (plain LoRA or thought state)
    and the same shapes. A plain ``lora`` checkpoint may start ``lora_c`` (a full-cache model
    taught to work bounded), and ``global_only`` may start ``pte``: the tensors are the same."""
    path = cfg.train.init_adapter
    if path is None:
        return
    saved = adapter_meta(path, "train.init_adapter").get("adapter", {})
    run = cfg.adapter
    if _family(saved.get("method", "")) != _family(run.method):
        raise ValueError(
            f"train.init_adapter={path} holds a {saved.get('method')!r} adapter; "
            f"adapter.method={run.method} needs a {'plain LoRA' if _family(run.method) == 'plain' else 'thought-state'} one"  # noqa: E501
        )
    for key in SHAPE_KEYS:
        have, want = saved.get(key), getattr(run, key)
        if have is not None and _list(have) != _list(want):
            raise ValueError(
                f"train.init_adapter={path} was trained with adapter.{key}={have!r}; this run "
                f"has adapter.{key}={want!r} (set it to match)"
            )


def _list(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def teacher_adapter(cfg: Config) -> AdapterConfig:
    """The teacher's adapter settings: ``reference.adapter``'s own, or none (the base model).
    The teacher always runs with the full cache, so a plain LoRA serves as ``lora``."""
    if cfg.reference.adapter is None:
        return AdapterConfig(method="base")
    saved = adapter_meta(cfg.reference.adapter, "reference.adapter").get("adapter", {})
    keep = {k: saved[k] for k in ADAPTER_KEYS if k in saved}
    if keep.get("method") in PLAIN:
        keep["method"] = "lora"
    return AdapterConfig(**keep)


def teacher_config(cfg: Config, model_path: str) -> Config:
    """The run config as the teacher runs it: its model, its adapter, the full cache, loading
    ``reference.adapter`` at start (``train.init_adapter``), on the reference's engine."""
    tree = cfg.model_dump(mode="json")
    tree["model"]["path"] = model_path
    tree["adapter"] = teacher_adapter(cfg).model_dump(mode="json")
    tree["cache"]["budget"] = None
    tree["train"]["init_adapter"] = cfg.reference.adapter
    tree["train"]["stage"] = "grpo"  # the teacher samples; it never trains
    tree["rollout"]["engine"] = cfg.reference.engine
    return Config.model_validate(tree)


def check_vocabulary(student_path: str, teacher_path: str) -> None:
    """Same token ids for the same text, or an error naming both models."""
    if Path(student_path).resolve() == Path(teacher_path).resolve():
        return
    from transformers import AutoTokenizer

    s, t = AutoTokenizer.from_pretrained(student_path), AutoTokenizer.from_pretrained(teacher_path)
    sv, tv = s.get_vocab(), t.get_vocab()
    if sv != tv or s.eos_token_id != t.eos_token_id:
        diff = sorted(set(sv.items()) ^ set(tv.items()))[:3]
        raise ValueError(
            f"reference.model {teacher_path} has another vocabulary than the student "
            f"{student_path} ({len(tv)} vs {len(sv)} tokens; first differences {diff}; eos "
            f"{t.eos_token_id} vs {s.eos_token_id}): the teacher's log-probs and samples would "
            "name other tokens. Use a teacher with the student's tokenizer."
        )
