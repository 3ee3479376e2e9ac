"""`pte-ray bench rollout --profile`: where a rollout's time goes, and how far it is from the floor.

One rollout runs under torch.profiler. The decode loop marks its phases (``decode.phase``:
prefill, evict with R-KV scoring inside it, fold, forward, sample, the host's finished-row
check, compaction); what they leave of the wall time is the Python loop and bookkeeping. Across
the whole rollout, the GEMM ops' and attention's own time is given too: a step that is mostly
matmul is as fast as its GEMM kernel, one that is not has overhead to remove.

Two floors for a decode step: reading every weight once (weight bytes / read bandwidth,
``--read-gibs``) and doing its matmul FLOPs at the GEMM rate this process measures on a large
packed fp32 (or the model's dtype) matmul. A step at 40% of the read floor runs 2.5x it.

The step set against the floors is the timed run's (no profiler): the profiler's per-op
records cost tens of microseconds each, thousands of them a step, and made a 0.5B bf16 step
read 96.5 ms where the same step runs 78-87 ms unobserved. The shares come from the profiled
run (that overhead spread over every op); ``profiled_step_ms`` says how far it stretched, and
``step_sections_ms`` times the step's parts by the clock instead (``sections.py``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from pte_ray.bench.common import timed
from pte_ray.bench.sections import step_sections
from pte_ray.method.packed import can_pack, pack, packed_linear

PHASES = ("prefill", "evict", "rkv_score", "fold", "forward", "sample", "check", "compact")
TOP = ("prefill", "evict", "fold", "forward", "sample", "check", "compact")  # disjoint
GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::baddbmm")


def profile_rollout(
    args: argparse.Namespace, model: Any, gen: Any, timed_run: dict[str, Any]
) -> dict[str, Any]:
    """The phase table and both floors for one rollout of ``gen``; ``timed_run`` (the bench's
    unprofiled result: ``wall_s``, ``ttft_s``) gives the decode step's own time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, wall = timed(gen, args.device)
    events = {ev.key: ev for ev in prof.key_averages()}
    phases = {p: events[p].cpu_time_total / 1e6 for p in PHASES if p in events}
    gemm = sum(events[k].self_cpu_time_total for k in GEMM if k in events) / 1e6
    attn = sum(ev.self_cpu_time_total for k, ev in events.items() if "scaled_dot_product" in k)
    attn += events["attention"].cpu_time_total if "attention" in events else 0  # CPU decode
    share = {p: s / wall for p, s in phases.items()}
    share["python_and_other"] = 1.0 - sum(share.get(p, 0.0) for p in TOP)
    n_steps = max(int(out.stats.get("decode_steps", 0)), 1)  # after the prefill's token
    floors = step_floors(model, min(args.batch, len(out.tokens)), args.read_gibs, args.device)
    step_ms = 1e3 * (timed_run["wall_s"] - timed_run["ttft_s"]) / n_steps
    return {
        "profile_wall_s": wall,
        "phase_s": phases,
        "phase_share": share,
        "gemm_share": gemm / wall,
        "attention_share": attn / 1e6 / wall,
        "decode_step_ms": step_ms,  # unprofiled: (wall - time to first token) / steps
        "profiled_step_ms": 1e3 * (wall - phases.get("prefill", 0.0)) / n_steps,
        **floors,
        "of_read_floor": floors["read_floor_ms"] / step_ms,
        "of_gemm_floor": floors["gemm_floor_ms"] / step_ms,
        "top_ops_share": _top_ops(events, wall),
        # one more rollout, timed by the clock per part (sections.py): the table to quote
        **({} if args.compile else {"step_sections_ms": step_sections(gen)}),
    }


def _top_ops(events: dict[str, Any], wall: float, n: int = 10) -> dict[str, float]:
    """The ``n`` ops with the most self time, as shares of the wall time (what to fix next)."""
    named = (*PHASES, "attention")
    ops = [(ev.self_cpu_time_total / 1e6, k) for k, ev in events.items() if k not in named]
    return {k: round(s / wall, 4) for s, k in sorted(ops, reverse=True)[:n]}


def step_floors(model: Any, batch: int, read_gibs: float, device: str) -> dict[str, float]:
    """A decode step's weight bytes and matmul FLOPs, and the time each takes at the floor."""
    n_params = sum(_numel(blk.packed.get(n), blk.w[n]) for blk in model.layers for n in blk.w)
    n_params += _numel(model._head_packed, model.embed if model.lm_head is None else model.lm_head)
    nbytes = n_params * model.embed.element_size()
    flops = 2.0 * n_params * batch
    rate = peak_gemm_flops(model.dtype, device)
    return {
        "weight_bytes": float(nbytes),
        "read_floor_ms": 1e3 * nbytes / (read_gibs * 2**30),
        "step_gflop": flops / 1e9,
        "peak_gemm_gflops": rate / 1e9,
        "gemm_floor_ms": 1e3 * flops / rate,
    }


def _numel(packed: torch.Tensor | None, dense: torch.Tensor) -> int:
    """A projection's parameter count, from its packed copy when the dense one was dropped."""
    return packed.numel() if packed is not None else dense.numel()


def peak_gemm_flops(dtype: torch.dtype, device: str, seconds: float = 0.5) -> float:
    """FLOP/s of a large matmul in ``dtype`` (packed for oneDNN where the engines pack)."""
    m, k, n = 512, 2048, 2048
    x = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    if can_pack(dtype, device):
        p = pack(w, m)
        fn = lambda: packed_linear(x, p)  # noqa: E731
    else:
        fn = lambda: torch.nn.functional.linear(x, w)  # noqa: E731
    fn()
    n_calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n_calls += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2.0 * m * k * n * n_calls / (time.perf_counter() - t0)
