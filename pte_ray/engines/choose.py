"""Which engine a role runs, from the config: one place, so workers and eval agree."""

from __future__ import annotations

from typing import Any

from pte_ray.config import Config
from pte_ray.engines.torch_engine import TorchEngine
from pte_ray.method.config import AdapterConfig, CacheConfig


def rollout_engine(cfg: Config, model_path: str, device: str, engine: str | None = None) -> Any:
    """The sampling engine of ``cfg``'s method (``engine`` overrides ``rollout.engine``)."""
    if (engine or cfg.rollout.engine) == "vllm":
        from pte_ray.config_sections import ENGINE_METHODS
        from pte_ray.engines.vllm_engine import VllmEngine

        if cfg.adapter.method not in ENGINE_METHODS:
            raise ValueError(
                f"the vLLM engine serves {' and '.join(ENGINE_METHODS)} only, not "
                f"adapter.method={cfg.adapter.method} (a bounded, per-sequence cache): use torch"
            )
        return VllmEngine(
            model_path,
            cfg.adapter_config(),
            cfg.sampling.temperature,
            cfg.vllm,
            cfg.model.dtype,
            device,
            seed=cfg.train.seed,
            # a version in flight may be max_staleness behind the newest
            keep_versions=cfg.train.max_staleness + 1,
        )
    return TorchEngine(
        model_path,
        cfg.adapter_config(),
        cfg.cache_config(),
        cfg.model.dtype,
        device,
        compile_step=cfg.rollout.compile,
        pack=cfg.model.pack,
        batch_rows=cfg.rollout.batch_rows,
    )


def reference_engine(
    cfg: Config, model_path: str, device: str, teacher: AdapterConfig | None = None
) -> Any:
    """pi_ref: the frozen teacher with the full context: ``model_path`` with the ``teacher``
    adapter's settings (``run/teacher.py``; None: the bare model), its weights loaded from
    ``reference.adapter``; no cache bound either way."""
    acfg = teacher or AdapterConfig(method="base")
    if cfg.reference.engine == "vllm":
        from pte_ray.engines.vllm_engine import VllmEngine

        eng: Any = VllmEngine(
            model_path,
            acfg if acfg.has_adapter else None,
            cfg.sampling.temperature,
            cfg.vllm,
            cfg.model.dtype,
            device,
            seed=cfg.train.seed,
        )
    else:
        full = CacheConfig(budget=None)
        eng = TorchEngine(model_path, acfg, full, cfg.model.dtype, device, pack=cfg.model.pack)
    if cfg.reference.adapter is not None and acfg.has_adapter:
        eng.load_dir(cfg.reference.adapter)
    return eng
