"""Where a decode step's wall time goes, timed by the clock instead of torch.profiler.

The profiler records every op (tens of microseconds each, thousands a step), so it inflates
the parts made of many small ops (attention, the adapter's delta, norms) against the few large
GEMMs: a 0.5B bf16 step read 96.5 ms under it and runs ~80 ms unobserved. Here the functions
the step is made of are wrapped with a ``perf_counter`` pair for one rollout (CPU ops run
synchronously; on CUDA each wrapper synchronizes, so only CPU figures are clean) and put back
after. Each part is exclusive of the others and counts only inside a decode step (the prefill
and a refilled row's prompt forward are not steps); ``rest`` is the step's time none of them
holds (RoPE, residual adds, the MLP's activation, the loop's Python). For the eager step only:
a compiled one never calls these functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pte_ray.method.adapter as adapter_mod
import pte_ray.method.cache as cache_mod
import pte_ray.method.decode as decode_mod
import pte_ray.method.model as model_mod
import pte_ray.method.shared_kv as shared_mod

# part -> the functions whose time is that part's (owner, attribute)
PARTS: dict[str, tuple[tuple[Any, str], ...]] = {
    "step": ((decode_mod, "decode_step"),),
    "gemm_layers": ((model_mod.Block, "linear"),),
    "gemm_all": ((model_mod, "packed_linear"),),  # the layers' (inside linear) and the head's
    "attention": ((model_mod, "attend"), (shared_mod.SharedLayer, "attend")),
    "adapter_delta": ((model_mod, "_lora"),),  # the base projection is computed before it
    "norms": ((model_mod, "rms_norm"),),
    "cache_writes": ((model_mod, "_write"), (shared_mod.SharedLayer, "write")),
    "sampling": ((decode_mod, "sample"),),
    "evict": ((cache_mod.BoundedCache, "evict"), (cache_mod.BoundedCache, "rkv_choice")),
    "fold": ((adapter_mod.Adapter, "fold"),),
}


@contextmanager
def _timers(total: dict[str, float]) -> Iterator[None]:
    """Every function of ``PARTS`` adds its wall time to ``total[part]`` while inside."""
    saved = []
    for part, targets in PARTS.items():
        for owner, name in targets:
            fn = getattr(owner, name)
            saved.append((owner, name, fn))
            setattr(owner, name, _timed(fn, part, total))
    try:
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def _timed(fn: Callable, part: str, total: dict[str, float]) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if part != "step" and not total.get("inside"):
            return fn(*args, **kwargs)  # a prompt forward: not a decode step's
        total["inside"] = total.get("inside", 0.0) + (part == "step")
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            total[part] = total.get(part, 0.0) + time.perf_counter() - t0
            total["inside"] -= part == "step"

    return wrapper


def step_sections(gen: Callable[[], Any]) -> dict[str, float]:
    """Milliseconds per decode step of each part over one rollout of ``gen`` (exclusive)."""
    total: dict[str, float] = {}
    with _timers(total):
        out = gen()
    n = max(int(out.stats.get("decode_steps", 0)), 1)
    total.pop("inside", None)
    ms = {k: 1e3 * v / n for k, v in total.items()}
    gemm = ms.pop("gemm_all", 0.0)
    layers = ms.pop("gemm_layers", 0.0)
    parts = {
        "gemm_layers": layers,
        "gemm_head": max(gemm - layers, 0.0),  # packed: the head's oneDNN GEMM
        **{k: ms.get(k, 0.0) for k in PARTS if k not in ("step", "gemm_all", "gemm_layers")},
    }
    step = ms.get("step", 0.0)
    return {"step_ms": step, **parts, "rest": step - sum(parts.values())}
