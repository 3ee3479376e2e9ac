"""The learner sums replay's many per-segment gradients in fp32, even for a bf16 adapter."""

from __future__ import annotations

import torch

from pte_ray.actors.learner_setup import accumulate_into


def test_bf16_gradients_are_summed_in_fp32():
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4096, dtype=torch.bfloat16))
    acc = torch.zeros(4096, dtype=torch.float32)
    p.register_post_accumulate_grad_hook(accumulate_into(acc))
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


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    import math

    from pte_ray.rl.schedule import lr_factor

    assert [lr_factor(s, 10, 4, "constant", 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    cos = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(2, 11)]
    assert cos[0] == 1.0 and cos[-1] == 0.1 and all(a >= b for a, b in zip(cos, cos[1:]))
    assert cos[4] == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))  # halfway
    lin = [lr_factor(s, 10, 0, "linear", 0.0) for s in (0, 5, 10, 20)]
    assert lin == [1.0, 0.5, 0.0, 0.0]  # past the end: stays at the floor
