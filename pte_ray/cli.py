"""`pte-ray` entry points: train, generate, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "reward":
        from pte_ray.bench import reward

        result = reward.run(args)
    else:
        from pte_ray.bench import method

        result = method.run_rollout(args) if args.bench == "rollout" else method.run_replay(args)
    print(json.dumps(result))
    return 0


def _train(args: argparse.Namespace) -> int:
    from pte_ray.train import main as train_main

    return train_main(args.config, args.overrides, resume=args.resume)


def _generate(args: argparse.Namespace) -> int:
    from pte_ray.generate import main as generate_main

    return generate_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pte-ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="GRPO training (no arguments: tiny model + task, locally)")
    t.add_argument("--config", default=None, help="YAML config (launch/configs/*.yaml)")
    t.add_argument("--resume", default=None, help="'auto' or a checkpoint directory")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cache.budget=64")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="generate with a checkpoint under the bounded cache")
    from pte_ray.generate import add_args as add_generate_args

    add_generate_args(g)
    g.set_defaults(func=_generate)

    b = sub.add_parser("bench", help="benchmarks, one JSON object on stdout")
    bsub = b.add_subparsers(dest="bench", required=True)
    from pte_ray.bench import method, reward

    for name, help_ in [("rollout", "bounded-cache generation"), ("replay", "segment replay")]:
        bp = bsub.add_parser(name, help=help_)
        method.add_args(bp)
    reward.add_args(bsub.add_parser("reward", help="math verifier throughput"))
    b.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"pte-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
