"""The learner sums replay's many per-segment gradients in fp32, even for a bf16 adapter."""

from __future__ import annotations

import torch

from pte_ray.actors.learner import _accumulate_into


def test_bf16_gradients_are_summed_in_fp32():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4096, dtype=torch.bfloat16))
    acc = torch.zeros(4096, dtype=torch.float32)
    p.register_post_accumulate_grad_hook(_accumulate_into(acc))
    naive = torch.zeros(4096, dtype=torch.bfloat16)
    exact = torch.zeros(4096, dtype=torch.float64)
    for _ in range(300):  # one backward per replay segment
        g = (torch.randn(4096, generator=gen) * 1e-3 + 1e-2).to(torch.bfloat16)
        (p * g).sum().backward()
        assert p.grad is None  # moved into the accumulator
        naive += g
        exact += g.double()
    rel = lambda x: float((x.double() - exact).norm() / exact.norm())  # noqa: E731
    assert rel(acc) < 1e-6
    assert rel(naive) > 1e-3  # what summing in the bf16 .grad would have cost
