"""Dynamic sampling (DAPO): groups whose samples all scored alike are dropped and refilled.

A group whose rewards are all equal has zero advantage everywhere: with ``kl_coef = 0`` it adds
nothing to the gradient, yet it dilutes the token mean by a varying fraction and is replayed for
nothing. With ``grpo.drop_zero_adv`` the step keeps the groups with signal and draws fresh
prompts from the stream (generated and scored with the same weights) until it has
``train.prompts_per_step`` groups with signal or ``grpo.max_refill`` rounds are spent; what it
has then is learned (zero-signal groups fill in only where the learners need a group each).
The fraction of zero-signal groups in the first draw is reported either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pte_ray.config import Config
from pte_ray.controller.batch import Batch
from pte_ray.records import ReferenceLogprobs, Rollouts, Scores

Scored = tuple[Batch, Scores, ReferenceLogprobs | None]


def signal_groups(scores: Scores, g: int) -> list[int]:
    """Indices of the groups whose rewards are not all equal."""
    r = scores.rewards
    return [k for k in range(len(r) // g) if len(set(r[k * g : (k + 1) * g])) > 1]


def _take(part: Scored, groups: list[int], g: int) -> Scored:
    """The chosen groups of one scored batch, in order."""
    batch, scores, ref = part
    rows = [(k * g, (k + 1) * g) for k in groups]

    def cut(rec: Any) -> Any:
        return type(rec).concat([rec.rows(a, b) for a, b in rows]) if rows else rec.rows(0, 0)

    picked = replace(
        batch,
        examples=[batch.examples[k] for k in groups],
        prompts=[p for a, b in rows for p in batch.prompts[a:b]],
        answers=[x for a, b in rows for x in batch.answers[a:b]],
        rollouts=cut(batch.rollouts),
    )
    return picked, cut(scores), (cut(ref) if ref is not None else None)


def _join(parts: list[Scored], last: Batch) -> Scored:
    """One scored batch of several; the cursor and pool summary are the last draw's."""
    batches = [p[0] for p in parts]
    joined = replace(
        last,
        examples=[e for b in batches for e in b.examples],
        prompts=[x for b in batches for x in b.prompts],
        answers=[x for b in batches for x in b.answers],
        rollouts=Rollouts.concat([b.rollouts for b in batches]),
        rollout_s=sum(b.rollout_s for b in batches),
    )
    refs = [p[2] for p in parts]
    ref = ReferenceLogprobs.concat(refs) if refs[0] is not None else None  # type: ignore[arg-type]
    return joined, Scores.concat([p[1] for p in parts]), ref


def refill(
    cfg: Config, first: Scored, more: Callable[[int, int], Scored], learners: int
) -> tuple[Scored, dict[str, float]]:
    """The step's groups with signal, refilled with ``more(n groups, draw)`` (generated and
    scored with the step's weights); and what it took. Every learner gets a group."""
    g = cfg.grpo.group_size
    want = cfg.train.prompts_per_step
    good = signal_groups(first[1], g)
    info = {"zero_adv_groups": 1.0 - len(good) / max(len(first[1].rewards) // g, 1)}
    if not cfg.grpo.drop_zero_adv:
        return first, info
    kept, last, rounds = [_take(first, good, g)], first[0], 0
    have = len(good)
    while have < want and rounds < cfg.grpo.max_refill:
        rounds += 1
        drawn = more(want - have, rounds)
        sig = signal_groups(drawn[1], g)
        kept.append(_take(drawn, sig, g))
        have, last = have + len(sig), drawn[0]
    need = learners - have  # a group per learner, whatever its signal
    if need > 0:
        zero = [k for k in range(len(first[1].rewards) // g) if k not in good][:need]
        kept.append(_take(first, zero, g))
    info |= {"refill_rounds": float(rounds), "groups_learned": float(max(have, 0) + max(need, 0))}
    return _join([p for p in kept if p[0].examples], last), info
