"""Base weights packed once for the CPU's GEMM library (oneDNN), for forwards without grad.

Eager ``F.linear`` on CPU hands the plain row-major weight to a generic GEMM on every call; a
decode step is a few skinny matmuls per layer (batch x weight), so the kernel's own re-layout
and its untuned path are most of the step. oneDNN's reordered ("blocked") layout is what
inductor's freezing and vLLM's CPU linear multiply with: on this project's 2-core AVX-512 box a
batch-32 projection of Qwen2.5-0.5B's shapes ran 2.5-3x faster in fp32 (and bf16 on an
AVX-512-BF16 CPU ~4x more). Base weights never change (the adapter is added on top), so the
copy is made once per process. oneDNN's op has no autograd kernel (a backward through it is
silently wrong), so a packed model refuses to run with grad: only the rollout and reference
engines pack; the learner, and the fp64 gradient tests (oneDNN has no fp64), keep ``F.linear``.
"""

from __future__ import annotations

import torch

PACKABLE = (torch.float32, torch.bfloat16)


def can_pack(dtype: torch.dtype, device: torch.device | str) -> bool:
    """oneDNN packing exists for this dtype on this device (CPU, fp32 / bf16)."""
    return (
        torch.device(device).type == "cpu"
        and dtype in PACKABLE
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """``weight`` [out, in] in oneDNN's layout, chosen for inputs of ``batch_hint`` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_hint)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight as :func:`pack` left it."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def cpu_model() -> str:
    """The CPU's model name (Linux), for a benchmark's record of the machine."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.startswith("model name")), "")
    except OSError:
        return "unknown"
    return line.split(":", 1)[1].strip() if ":" in line else "unknown"


def cpu_bf16_native() -> bool:
    """The CPU multiplies bf16 in hardware (AVX-512-BF16 or AMX): without it oneDNN emulates
    bf16 and it runs slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
