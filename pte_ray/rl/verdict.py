"""Reward statuses, and the pairs decided in-process without sympy (most of them).

Exact string and ``Fraction`` comparison settles tens of thousands of pairs per second, so only
what it cannot decide is sent to a symbolic worker process (``verify_pool``); verdicts are cached
per process, since rollouts repeat the same answers many times.
"""

from __future__ import annotations

from functools import lru_cache

from pte_ray.rl.answers import (
    MAX_ANSWER_CHARS,
    is_word_answer,
    normalize_answer,
    numbers_equal,
    parse_number,
    screen_answer,
)

STATUSES = ("ok", "no_answer", "parse_error", "timeout", "mismatch")


@lru_cache(maxsize=16384)
def _decide_cached(pred: str, gold: str, percent_as_fraction: bool) -> str | None:
    pn, gn = normalize_answer(pred), normalize_answer(gold)
    if pn and pn == gn:
        return "ok"
    pnum, gnum = parse_number(pn), parse_number(gn)
    if pnum is not None and gnum is not None:
        return "ok" if numbers_equal(pnum, gnum, percent_as_fraction) else "mismatch"
    if is_word_answer(gn) or is_word_answer(pn):
        return "ok" if pn.lower() == gn.lower() else "mismatch"
    if screen_answer(pred) is not None:
        return "parse_error"
    return None


def decide_fast(pred: str, gold: str, percent_as_fraction: bool = True) -> str | None:
    """Status decided without sympy, or None when the pair needs the symbolic worker."""
    if len(pred) > MAX_ANSWER_CHARS:
        return "parse_error"
    try:
        return _decide_cached(pred, gold, percent_as_fraction)
    except ValueError:  # e.g. an over-long integer in a trusted gold answer: let sympy try
        return None


def clear_caches() -> None:
    """Forget the process-wide fast-path verdicts (benchmarks; memory)."""
    for fn in (_decide_cached, normalize_answer, parse_number):
        fn.cache_clear()
