"""``pte-ray bench reward``: verifier throughput and latency on a built-in mixed set.

The set imitates GRPO scoring: groups of completions per prompt (so answers repeat), mostly
GSM8K/AIME-style numbers, some MATH-style symbolic answers that need sympy, and a few hostile
ones. Two passes on fresh verifiers: batched (throughput) and one item at a time (latency).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from typing import Any

from pte_ray.rl.rewards import RewardConfig, Verifier, clear_caches

_FILLER = (
    "First, note what is given. We set up the equation, simplify both sides and check the "
    "result against the constraints in the problem. "
)
_SYMBOLIC = [  # (gold, right, wrong)
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt{2}}{2}"),
    ("(x+1)^2", "x^2+2x+1", "x^2+1"),
    ("2\\sqrt{2}", "\\sqrt{8}", "\\sqrt{6}"),
    ("\\frac{\\pi}{4}", "\\pi/4", "\\frac{\\pi}{3}"),
    ("[1, 3)", "[1,3)", "(1,3]"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", "\\{1, 2\\}"),
    ("(2, -1)", "\\left(2,-1\\right)", "(-1, 2)"),
    ("y = 2x + 3", "2x+3", "2x-3"),
    ("x^2 - 1", "(x-1)(x+1)", "(x-1)^2"),
    ("6\\pi", "6 \\pi", "3\\pi"),
]
_HOSTILE = [
    "\\boxed{" + "9" * 100_000 + "}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "x" * 300_000,
    "\\boxed{__import__('os').system('true')}",
    "\\boxed{(10!)!}",
    # passes screening; sympy would integrate for minutes: the worker is killed at the deadline
    "\\boxed{\\int e^{x^2}\\sin(x)\\cos(x^3)\\,dx}",
]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4000, help="items in the mixed set")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    parser.add_argument("--workers", type=int, default=1, help="symbolic worker processes")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-item worker timeout (s)")
    parser.add_argument("--symbolic-frac", type=float, default=0.1)
    parser.add_argument("--hostile-frac", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)


def build_set(n: int, group: int, sym_frac: float, hostile_frac: float, seed: int) -> list:
    """``(completion, gold, kind)`` triples; answers repeat within a group as in GRPO."""
    rng = random.Random(seed)
    items: list[tuple[str, str, str]] = []
    while len(items) < n:
        r = rng.random()
        body = _FILLER * rng.randint(3, 12)
        if r < hostile_frac:
            items.append((rng.choice(_HOSTILE), "3", "hostile"))
            continue
        if r < hostile_frac + sym_frac:
            gold, right, wrong = rng.choice(_SYMBOLIC)
            for _ in range(group):
                pred = right if rng.random() < 0.5 else wrong
                items.append((f"{body}So the answer is $\\boxed{{{pred}}}$.", gold, "symbolic"))
            continue
        g = rng.randint(1, 10 ** rng.randint(1, 6))
        gold = str(g) if rng.random() < 0.8 else f"\\frac{{{g}}}{{{rng.randint(2, 9)}}}"
        for _ in range(group):
            if rng.random() < 0.5:
                pred = gold if rng.random() < 0.5 else f"{g:,}" if "frac" not in gold else gold
            else:
                pred = str(g + rng.randint(1, 20))
            form = rng.choice(["\\boxed{%s}", "#### %s", "The answer is %s.", "giving %s"])
            items.append((body + form % pred, gold, "typical"))
    items = items[: max(0, n - len(_HOSTILE))]
    for h in _HOSTILE:  # each hostile kind once, somewhere in the run
        items.insert(rng.randrange(len(items) + 1), (h, "3", "hostile"))
    return items


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    items = build_set(args.n, args.group_size, args.symbolic_frac, args.hostile_frac, args.seed)
    cfg = RewardConfig(timeout_s=args.timeout, workers=args.workers)
    completions = [c for c, _, _ in items]
    golds = [g for _, g, _ in items]

    with Verifier(cfg) as v:  # throughput: batches of one GRPO step's worth
        t0 = time.perf_counter()
        v.score("\\boxed{\\sqrt{4}}", "2")  # start the worker outside the timed region
        startup_s = time.perf_counter() - t0
        batch = 256
        t0 = time.perf_counter()
        statuses: Counter[str] = Counter()
        for i in range(0, len(items), batch):
            statuses.update(
                s for _, s in v.score_batch(completions[i : i + batch], golds[i : i + batch])
            )
        wall = time.perf_counter() - t0

    lat: dict[str, list[float]] = {"typical": [], "symbolic": [], "hostile": []}
    clear_caches()  # the latency pass must not ride on the first pass's verdicts
    with Verifier(cfg) as v:  # latency: one item at a time
        v.score("\\boxed{\\sqrt{4}}", "2")
        for completion, gold, kind in items:
            t = time.perf_counter()
            v.score(completion, gold)
            lat[kind].append(time.perf_counter() - t)
    every = [x for xs in lat.values() for x in xs]
    typical_s = sum(lat["typical"])
    return {
        "items_per_s": round(len(items) / wall, 1),
        "typical_items_per_s": round(len(lat["typical"]) / typical_s, 1) if typical_s else None,
        "p50_ms": round(statistics.median(every) * 1e3, 4),
        "p99_ms": round(_pct(every, 0.99) * 1e3, 3),
        "max_ms": round(max(every) * 1e3, 1),
        "timeouts": statuses["timeout"],
        "statuses": dict(statuses),
        "kinds": {k: len(xs) for k, xs in lat.items()},
        "n_items": len(items),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "worker_startup_s": round(startup_s, 3),
        "wall_s": round(wall, 3),
    }


if __name__ == "__main__":
    import json

    p = argparse.ArgumentParser(description=__doc__)
    add_args(p)
    print(json.dumps(run(p.parse_args()), indent=2))
