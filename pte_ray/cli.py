"""`pte-ray` entry points: train, sft, eval, compare, generate, bench, config, plot,
prepare-data."""

# size: one parser per command, side by side, so `pte-ray --help` and this file read alike

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from pte_ray.env import apply_defaults

apply_defaults()


def _bench(args: argparse.Namespace) -> int:
    if args.bench not in ("reward", "train", "weights", "chaos"):  # the others read the config
        from pte_ray.bench.common import resolve_config

        resolve_config(args)
    if args.bench == "train":
        from pte_ray.bench import train

        result = train.run(args)
    elif args.bench == "reward":
        from pte_ray.bench import reward

        result = reward.run(args)
    elif args.bench == "grad":
        from pte_ray.bench import grad

        result = grad.run(args)
    elif args.bench == "weights":
        from pte_ray.bench import weights

        result = weights.run(args)
    elif args.bench == "chaos":
        from pte_ray.bench import chaos

        result = chaos.run(args)
    elif args.bench == "eviction":
        from pte_ray.bench import eviction

        result = eviction.run(args)
    else:
        from pte_ray.bench import replay, rollout

        result = rollout.run_rollout(args) if args.bench == "rollout" else replay.run_replay(args)
    print(json.dumps(result))
    return 0


def _train(args: argparse.Namespace) -> int:
    from pte_ray.commands.train import main as train_main

    return train_main(args.config, args.overrides, resume=args.resume)


def _eval(args: argparse.Namespace) -> int:
    from pte_ray.commands.evaluate import EvalOptions, eval_config, evaluate, table

    cfg = eval_config(args.config, args.overrides, args.adapter)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    opts = EvalOptions(
        samples=args.samples,
        ks=tuple(ints(args.pass_k)) if args.pass_k else (),
        seeds=tuple(ints(args.seeds)),
        out_dir=args.out,
        batch=args.batch,
        limit=args.limit,
        device=args.device,
        engine=args.engine,
        ablate=args.ablate,
        greedy=args.greedy,
    )
    res = evaluate(cfg, args.adapter, args.bench or ["tiny"], opts)
    metrics = dict.fromkeys(m for b in res["benchmarks"].values() for m in b)
    for metric in metrics:
        print(table(res, metric))
    print(f"wrote {res['out_dir']}/results.json and completions.parquet", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    import ray

    from pte_ray.commands.compare import Setup
    from pte_ray.commands.compare_report import compare, print_table
    from pte_ray.config import load_config

    grpo = [o.removeprefix("grpo:") for o in args.overrides if not o.startswith("sft:")]
    cfg = load_config(args.config, grpo)
    started = not ray.is_initialized()
    if started:  # one local cluster for every run
        ray.init(address=cfg.train.ray_address or os.environ.get("RAY_ADDRESS"))
    try:
        out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
        setup = Setup(
            args.config,
            args.sft_config,
            list(args.overrides),
            Path(out),
            args.distill_coef,
            args.ablate_fold,
        )
        methods = [m for m in args.methods.split(",") if m]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        summary = compare(setup, methods, seeds, args.bench or ["tiny"], args.samples)
    finally:
        if started:
            ray.shutdown()
    print(print_table(summary))
    print(f"wrote {out}/compare.json and compare.png", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from pte_ray.commands.generate import main as generate_main

    return generate_main(args)


def _sft(args: argparse.Namespace) -> int:
    from pte_ray.commands.train import main as train_main

    return train_main(args.config, ["train.stage=sft", *args.overrides], resume=args.resume)


def _add_train(sub: argparse._SubParsersAction) -> None:
    for name, help_, func in (
        ("train", "training, GRPO or SFT by train.stage (no arguments: tiny model + task)", _train),
        ("sft", "the supervised stage: pte-ray train train.stage=sft", _sft),
    ):
        t = sub.add_parser(name, help=help_)
        t.add_argument("--config", default=None, help="YAML config (launch/configs/*.yaml)")
        t.add_argument("--resume", default=None, help="'auto' or a checkpoint directory")
        t.add_argument(
            "overrides", nargs="*", help="dotted key=value overrides, e.g. cache.budget=64"
        )
        t.set_defaults(func=func)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="accuracy of a checkpoint (or the base model) on benchmarks")
    e.add_argument("--config", default=None, help="YAML config (model, cache, sampling, data)")
    e.add_argument("--adapter", default=None, help="checkpoint dir (none: the base model)")
    e.add_argument(
        "--bench",
        action="append",
        default=[],
        help="math500-sample | gsm8k-sample | aime-sample (a few problems each) | tiny | "
        "tiny-recall | a JSONL/Parquet path; repeatable",
    )
    e.add_argument("--samples", type=int, default=1, help="completions per problem (n)")
    e.add_argument("--pass-k", default=None, help="k values for pass@k, e.g. 1,4 (default 1,n)")
    e.add_argument("--seeds", default="0", help="comma-separated seeds: mean +- std over them")
    e.add_argument("--out", default=None, help="output dir (default runs/eval-<time>)")
    e.add_argument("--batch", type=int, default=32, help="sequences per generate call")
    e.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    e.add_argument(
        "--engine",
        choices=("torch", "vllm"),
        default="torch",
        help="torch: every method; vllm: base and lora (full cache; needs the vllm extra)",
    )
    e.add_argument(
        "--ablate",
        choices=("fold", "state"),
        default=None,
        help="fold: the thought state is never updated from evicted tokens; state: S is zero",
    )
    e.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    e.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cache.budget=64")
    e.set_defaults(func=_eval)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="train + evaluate several methods x seeds (Table 1)")
    c.add_argument("--config", default=None, help="YAML config shared by every run")
    c.add_argument(
        "--methods",
        default="lora,lora_c,global_only,pte",
        help="comma-separated method[+stage...][:grad][@eviction], e.g. pte+sft+grpo, "
        "lora_c+distill, pte+sft:truncated, pte@rkv, base",
    )
    c.add_argument("--sft-config", default=None, help="the SFT stage's config (default --config)")
    c.add_argument(
        "--distill-coef", type=float, default=1.0, help="distill.coef of +distill stages"
    )
    c.add_argument(
        "--ablate-fold",
        action="store_true",
        help="also evaluate every pte adapter with the fold off (row NAME/fold-off)",
    )
    c.add_argument("--seeds", default="0,1,2", help="comma-separated training / eval seeds")
    c.add_argument("--bench", action="append", default=[], help="held-out benchmark(s), as eval")
    c.add_argument("--samples", type=int, default=1, help="completions per problem in eval")
    c.add_argument("--out", default=None, help="output dir (default runs/compare-<time>)")
    c.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides for every run; sft:key=value / grpo:key=value for one stage",
    )
    c.set_defaults(func=_compare)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from pte_ray.commands.generate import add_args

    g = sub.add_parser("generate", help="generate with a checkpoint under the bounded cache")
    add_args(g)
    g.set_defaults(func=_generate)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks, one JSON object on stdout")
    bsub = b.add_subparsers(dest="bench", required=True)
    from pte_ray.bench import chaos, common, eviction, grad, reward, train, weights

    for name, help_ in [("rollout", "bounded-cache generation"), ("replay", "segment replay")]:
        bp = bsub.add_parser(name, help=help_)
        common.add_args(bp)
    reward.add_args(bsub.add_parser("reward", help="math verifier throughput"))
    grad.add_args(bsub.add_parser("grad", help="truncated vs exact replay gradient (fp64)"))
    eviction.add_args(bsub.add_parser("eviction", help="R-KV: per-layer vs shared choice"))
    train.add_args(bsub.add_parser("train", help="synchronous vs asynchronous rollouts"))
    weights.add_args(bsub.add_parser("weights", help="publish to every rollout worker serving"))
    chaos.add_args(bsub.add_parser("chaos", help="SIGKILLs of every role vs an undisturbed run"))
    b.set_defaults(func=_bench)


def _config(args: argparse.Namespace) -> int:
    from pte_ray.config import annotated_yaml, load_config

    print(annotated_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="print the resolved config, every key with its help")
    c.add_argument("--config", default=None, help="YAML config (launch/configs/*.yaml)")
    c.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cache.budget=64")
    c.set_defaults(func=_config)


def _plot(args: argparse.Namespace) -> int:
    from pte_ray.commands.plot import plot_run

    files = plot_run(args.run_dir, args.out)
    print(f"wrote {len(files)} files to {files[-1].parent}", file=sys.stderr)
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG figures and a one-page summary of a run's metrics")
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="output dir (default RUN_DIR/plots)")
    p.set_defaults(func=_plot)


def _prepare_data(args: argparse.Namespace) -> int:
    from pte_ray.commands.prepare_data import prepare_data

    rep = prepare_data(args.source, args.out, args.format, args.test_size, args.seed)
    print(json.dumps(rep))
    print(
        f"wrote {args.out}/train.parquet ({rep['train']} rows), test.parquet ({rep['test']})",
        file=sys.stderr,
    )
    return 0


def _add_prepare_data(sub: argparse._SubParsersAction) -> None:
    from pte_ray.commands.prepare_data import add_args

    p = sub.add_parser("prepare-data", help="train/test Parquet from a MATH or GSM8K copy")
    add_args(p)
    p.set_defaults(func=_prepare_data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pte-ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_eval,
        _add_compare,
        _add_generate,
        _add_bench,
        _add_config,
        _add_plot,
        _add_prepare_data,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["pte-ray", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"pte-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
