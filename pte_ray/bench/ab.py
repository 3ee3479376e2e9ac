"""`pte-ray bench rollout --ab cache.KEY=A,B` (or `--ab refill=on,off`): two settings, side by side.

Why: on a shared or throttled machine, two rollouts timed a minute apart in fresh processes
differ by more than the effect under test (the same R-KV/window pair read 0.75-1.01 in separate
runs on our 2-core box, whose speed drifts by 1.5x within a minute). So both settings run in
one process on the same model, prompts and adapter, after an untimed round of each, for
``--repeat`` rounds. On CPU each round advances the two rollouts one decode step each in turn
(``rollout_steps``) and a side's time is the sum of its own steps, so both see the same machine
within milliseconds. On CUDA a step is asynchronous (timing it would add a sync per step to
both sides), so a round runs the two whole rollouts back to back, A B then B A. The figure is
the median over rounds of B's tokens/s over A's.
Only ``cache.*`` keys and ``refill`` (``--requests`` beyond ``--batch``: rows refilled, or calls
of ``--batch`` one after another): they change the rollout, not the model or the adapter.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Generator
from typing import Any

from pte_ray.bench.calls import rollout_steps_fn
from pte_ray.bench.common import resolve_config, settings, setup
from pte_ray.bench.speed import measure, median_run, speed
from pte_ray.method.decode import finish
from pte_ray.method.outputs import Generation

Steps = Callable[[], Generator[int, None, Generation]]


def parse_ab(spec: str) -> tuple[str, list[str]]:
    """``cache.KEY=A,B`` -> (key, [A, B]); anything else is an error that shows the form."""
    key, sep, vals = spec.partition("=")
    values = vals.split(",")
    known = key.startswith("cache.") or (key == "refill" and set(values) == {"on", "off"})
    if not sep or not known or len(values) != 2 or not all(values):
        raise ValueError(
            f"--ab {spec!r}: expected cache.KEY=A,B, two values of one cache setting "
            "(e.g. --ab cache.eviction=window,rkv), or refill=on,off"
        )
    if values[0] == values[1]:
        raise ValueError(f"--ab {spec!r}: the two values are the same")
    return key, values


def step_pair(steps: dict[str, Steps], order: list[str]) -> dict[str, tuple[Generation, float]]:
    """Two rollouts advanced one step each in turn; each one's time is the sum of its steps."""
    gens = {v: steps[v]() for v in order}
    spent = dict.fromkeys(order, 0.0)
    done: dict[str, Generation] = {}
    while len(done) < len(order):
        for v in order:
            if v in done:
                continue
            t0 = time.perf_counter()
            try:
                next(gens[v])
            except StopIteration as stop:
                done[v] = stop.value
            spent[v] += time.perf_counter() - t0
    return {v: (done[v], spent[v]) for v in order}


def run_ab(args: argparse.Namespace) -> dict[str, Any]:
    """Both settings of ``args.ab`` over ``args.repeat`` rounds (see the module)."""
    key, values = parse_ab(args.ab)
    sides = {v: _side(args, f"{key}={v}") for v in values}
    model, adapter, prompts, _ = setup(sides[values[0]], infer=True)
    steps = {v: rollout_steps_fn(a, model, adapter, prompts) for v, a in sides.items()}
    for v in values:  # untimed: first-call allocations and caches are not what is compared
        finish(steps[v]())
    by_step = not args.device.startswith("cuda")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in values}
    for r in range(args.repeat):
        order = values if r % 2 == 0 else values[::-1]
        if by_step:
            for v, (out, wall) in step_pair(steps, order).items():
                runs[v].append(speed(out, wall, len(prompts)))
        else:
            for v in order:
                gen = steps[v]
                runs[v].append(measure(sides[v], lambda g=gen: finish(g()), len(prompts)))
    a, b = values
    ratios = [rb["tokens_per_s"] / ra["tokens_per_s"] for ra, rb in zip(runs[a], runs[b])]
    return {
        "bench": "rollout-ab",
        "key": key,
        "values": values,
        "repeat": args.repeat,
        "interleaved": "step" if by_step else "rollout",
        "runs": {v: {**settings(sides[v]), **median_run(runs[v])} for v in values},
        "ratio_b_over_a": statistics.median(ratios),
        "ratio_b_over_a_rounds": ratios,
    }


def _side(args: argparse.Namespace, override: str) -> argparse.Namespace:
    """``args`` with one more ``key=value`` override, resolved like the command line."""
    if override.startswith("refill="):
        return argparse.Namespace(**{**vars(args), "no_refill": override == "refill=off"})
    return resolve_config(
        argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, override]})
    )
