"""GRPO pieces against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pte_ray.rl.grpo import GRPOConfig, GRPOLoss, group_advantages, k3_kl, token_loss, token_weights


def test_group_advantages_with_and_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4, use_std=True, eps=0.0)
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert torch.equal(adv[4:], torch.zeros(4))  # identical rewards: no signal, no NaN
    assert torch.allclose(
        group_advantages(r, 4, use_std=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5])
    )
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def test_ppo_clip_higher_by_hand():
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.28)
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, st = token_loss(logp, old, adv, cfg)
    # A>0, r=1.5 -> clipped at 1.28; A<0, r=1.5 -> max(1.5, 1.28) = 1.5 (unclipped)
    # A>0, r=0.5 -> max(-0.5, -0.8) = -0.5; A<0, r=0.5 -> clipped at 0.8
    assert torch.allclose(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8]), atol=1e-6)
    assert st["clipped"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_token_and_sequence_mean_weights():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    tw = token_weights(mask, "token-mean")
    assert torch.allclose(tw, mask.float() / 5)
    sw = token_weights(mask, "seq-mean")
    assert (
        torch.allclose(sw[0], torch.full((4,), 1 / 8)) and sw[1, 0] == 0.5 and sw[1, 1:].sum() == 0
    )


def test_k3_kl_value_and_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    kl = k3_kl(logp, ref)
    d = ref - logp.detach()
    assert torch.allclose(kl, torch.exp(d) - d - 1)
    assert (kl >= 0).all() and k3_kl(ref, ref).abs().max() == 0
    kl.sum().backward()
    # d/dlogp = 1 - exp(ref - logp): positive where logp > ref (gradient descent lowers logp)
    assert torch.allclose(logp.grad, 1 - torch.exp(d))
    assert logp.grad[0] > 0 and logp.grad[1] < 0


def test_kl_term_enters_the_loss_with_its_coefficient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = logp.detach().clone()
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.zeros(1)
    lossfn = GRPOLoss(old, adv, mask, GRPOConfig(kl_coef=0.1), ref)
    loss = lossfn(logp, torch.zeros(1, 2), torch.tensor([0]), slice(0, 2))
    want = 0.1 * k3_kl(logp.detach(), ref).mean()
    assert torch.allclose(loss, want)
    loss.backward()
    assert torch.allclose(logp.grad, 0.1 * (1 - torch.exp(ref - old)) / 2)
    no_kl = GRPOLoss(old, adv, mask, GRPOConfig(kl_coef=0.0), ref)
    assert no_kl(logp, torch.zeros(1, 2), torch.tensor([0]), slice(0, 2)).item() == 0.0
    with pytest.raises(ValueError, match="reference"):
        GRPOLoss(old, adv, mask, GRPOConfig(kl_coef=0.1))(
            logp, logp, torch.tensor([0]), slice(0, 2)
        )


def test_loss_decomposes_over_segments():
    torch.manual_seed(0)
    logp = torch.randn(3, 10) * 0.1 - 2
    old = logp + torch.randn(3, 10) * 0.2
    mask = torch.arange(10)[None] < torch.tensor([[10], [6], [3]])
    adv = torch.tensor([1.0, -0.5, 2.0])
    cfg = GRPOConfig(loss_agg="seq-mean")
    whole = GRPOLoss(old, adv, mask, cfg)(logp, torch.zeros(3, 10), torch.arange(3), slice(0, 10))
    parts = GRPOLoss(old, adv, mask, cfg)
    total = sum(
        parts(logp[:, a:b], torch.zeros(3, b - a), torch.arange(3), slice(a, b))
        for a, b in [(0, 4), (4, 7), (7, 10)]
    )
    assert torch.allclose(total, whole)
    assert 0 <= parts.stats().clip_frac <= 1


def test_bad_grpo_config_is_named():
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="sum")
    with pytest.raises(ValueError, match="kl_coef"):
        GRPOConfig(kl_coef=-1)


def test_padding_cannot_turn_the_loss_into_nan():
    """Pads carry old = ref = 0; a pad log-prob below about -88 overflowed exp in k3, and a
    weight of 0 does not cancel inf (0 * inf = NaN)."""
    cfg = GRPOConfig(kl_coef=0.1)
    mask = torch.tensor([[True, True, False, False]])
    old = torch.tensor([[-1.0, -2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0])
    grads = []
    for pad in (-3.0, -200.0):
        logp = torch.tensor([[-1.2, -1.8, pad, pad]], requires_grad=True)
        loss = GRPOLoss(old, adv, mask, cfg, ref)(
            logp, torch.zeros(1, 4), torch.tensor([0]), slice(0, 4)
        )
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
        assert (logp.grad[0, 2:] == 0).all()
        grads.append((float(loss.detach()), logp.grad.clone()))
    assert grads[0][0] == grads[1][0] and torch.equal(grads[0][1], grads[1][1])


def test_k3_is_clamped_in_its_log_ratio_and_its_value():
    kl = k3_kl(torch.tensor([-25.0]), torch.tensor([-1.0]), clamp=10.0, value_clamp=1e9)
    assert torch.isfinite(kl).all() and float(kl) == pytest.approx(math.exp(10) - 11)
    logp = torch.tensor([-25.0, -3.0, -1.0, -4.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.0, -1.5, -1.0])
    kl = k3_kl(logp, ref)  # d = 24 (clamped to 10, then the value to 10), 2, -0.5, 3 (e^3-4 > 10)
    want = [10.0, math.exp(2) - 3, math.exp(-0.5) - 0.5, 10.0]
    assert kl.tolist() == pytest.approx(want)
    kl.sum().backward()
    # no gradient where a clamp bites: the e^10-weighted token no longer swamps the step
    assert logp.grad[0] == 0 and logp.grad[3] == 0
    assert logp.grad[1] == pytest.approx(1 - math.exp(2))
    with pytest.raises(ValueError, match="kl_clamp"):
        GRPOConfig(kl_clamp=0.0)


def test_distillation_is_a_per_token_advantage_fp64():
    """On policy (ratio 1) the loss's gradient at each token is -w (A_i - c (logp - ref)):
    the reverse KL's policy gradient added to GRPO's, clipped by the same PPO ratio."""
    from pte_ray.records import LearnerShard
    from pte_ray.rl.distill import DistillConfig
    from pte_ray.rl.objective import GRPOObjective

    gen = torch.Generator().manual_seed(0)
    old = [[-1.0, -2.0, -0.5], [-3.0, -0.1]]
    ref = [[-1.5, -0.2, -0.5], [-0.3, -4.0]]
    shard = LearnerShard(
        [[1], [2]], [[5, 6, 7], [8, 9]], old, [[], []], [[], []], [0.7, -1.1], ref, 0
    )
    job = GRPOObjective(shard, GRPOConfig(), DistillConfig(coef=0.5))
    loss_fn = job.loss(slice(0, 2), 1.0, "cpu")
    logp = torch.tensor([r + [0.0] * (3 - len(r)) for r in old], dtype=torch.float64)
    logp = (logp + 1e-9 * torch.randn(2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    loss_fn(logp, torch.zeros(2, 3), torch.arange(2), slice(0, 3)).backward()
    for i, (o, r) in enumerate(zip(old, ref, strict=True)):
        for t in range(len(o)):
            a = shard.advantages[i] - 0.5 * (o[t] - r[t])
            assert float(logp.grad[i, t]) == pytest.approx(-a / 5, rel=1e-6), (i, t)
    assert logp.grad[1, 2] == 0  # padding
    plain = GRPOObjective(shard, GRPOConfig(), DistillConfig(coef=0.0)).loss(
        slice(0, 2), 1.0, "cpu"
    )
    assert plain.adv.dim() == 1  # no teacher term unless asked for
    with pytest.raises(ValueError, match="teacher's log-probs"):
        GRPOObjective(
            LearnerShard(**{**shard.__dict__, "ref_logprobs": None}),
            GRPOConfig(),
            DistillConfig(coef=0.5),
        ).loss(slice(0, 2), 1.0, "cpu")


def test_topk_forward_kl_gradient_is_student_minus_teacher_on_the_k_tokens_fp64():
    """d KL / d logit_i = (q_i - p_i) / T on the teacher's k tokens (q: the student
    renormalised over them), 0 elsewhere; the loss adds coef x token weight x KL."""
    from pte_ray.rl.distill import TopKDistillLoss, topk_forward_kl

    gen = torch.Generator().manual_seed(1)
    b, n, v, k, temp = 2, 3, 11, 4, 0.7
    logits = torch.randn(b, n, v, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(b * n)]).view(b, n, k)
    tlp = torch.log_softmax(torch.randn(b, n, k, generator=gen, dtype=torch.float64), -1) - 0.3
    kl = topk_forward_kl(logits, ids, tlp, temp)
    p = torch.softmax(tlp, -1)
    q = torch.softmax(logits.detach().gather(-1, ids) / temp, -1)
    assert torch.allclose(kl, (p * (p.log() - q.log())).sum(-1), rtol=1e-12)
    assert (kl >= 0).all()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    inner = GRPOLoss(torch.zeros(b, n), torch.zeros(b), mask, GRPOConfig())
    loss_fn = TopKDistillLoss(inner, ids, tlp, coef=0.5, temperature=temp)
    lp = torch.zeros(b, n, dtype=torch.float64, requires_grad=True)
    loss_fn(lp, torch.zeros(b, n), torch.arange(b), slice(0, n), logits=logits).backward()
    want = torch.zeros(b, n, v, dtype=torch.float64)
    want.scatter_(-1, ids, (q - p) / temp)
    want *= 0.5 * (mask.double() / mask.sum())[..., None]  # coef x token-mean weight
    # GRPO's token weights are fp32 (1/5 to 1e-8): the only rounding here
    assert torch.allclose(logits.grad, want, rtol=1e-7, atol=1e-14)
    assert loss_fn.stats().distill_kl == pytest.approx(float(kl.detach()[mask].mean()))


def test_loss_stats_combine_sums_the_loss_and_weighs_the_rest():
    import math

    from pte_ray.records import LossStats

    a = LossStats(loss=1.0, entropy=2.0, ratio=1.0, nll=0.5)
    b = LossStats(loss=3.0, entropy=4.0, ratio=3.0)  # no nll here
    s = LossStats.combine([(a, 1.0), (b, 3.0)], sum_loss=True)
    assert (s.loss, s.entropy, s.ratio, s.nll) == (4.0, 3.5, 2.5, 0.5)
    assert math.isnan(s.kl)  # nobody made it
    assert LossStats.combine([(a, 1.0), (b, 3.0)], sum_loss=False).loss == 2.5
