"""`pte-ray eval`: accuracy of a checkpoint (or the base model) on math benchmarks.

The same engine as training (the method layer's bounded-cache decode) and the same verifier, so
an evaluation number means what a training reward means. For each benchmark and seed it draws
``samples`` completions per problem and reports mean@n (the fraction right) and the unbiased
pass@k (Chen et al., 2021: 1 - C(n-c, k) / C(n, k)); over seeds, mean and std. Small public
samples in the MATH500, GSM8K and AIME formats ship in ``pte_ray/evalsets`` so it runs offline;
real sets are passed by path. Output goes to a temp folder renamed into place when complete,
so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pte_ray.config import Config, load_config
from pte_ray.evalsets import Bench, distances, problems, resolve_bench
from pte_ray.progress import progress
from pte_ray.rl.data import render_prompt
from pte_ray.rl.rewards import Verifier

ADAPTER_KEYS = ("method", "rank", "alpha", "global_tokens", "targets", "attention")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def eval_config(config: str | None, overrides: list[str], adapter_dir: str | None) -> Config:
    """The run config with the adapter's own settings; a flag that contradicts them is an error."""
    if adapter_dir is None:
        return load_config(config, ["adapter.method=base", *overrides])
    meta_file = Path(adapter_dir) / "adapter.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"--adapter {adapter_dir}: no adapter.json (not a checkpoint?)")
    saved = json.loads(meta_file.read_text()).get("adapter", {})
    asked = load_config(config, overrides).adapter
    explicit = {o.split("=", 1)[0].strip() for o in overrides}
    for key in ADAPTER_KEYS:
        want, have = getattr(asked, key), saved.get(key)
        if have is not None and f"adapter.{key}" in explicit and _norm(want) != _norm(have):
            raise ValueError(
                f"adapter.{key}={want!r} does not match the checkpoint {meta_file} "
                f"(trained with {key}={have!r})"
            )
    keep = [f"adapter.{k}={json.dumps(saved[k])}" for k in ADAPTER_KEYS if k in saved]
    return load_config(config, [*keep, *overrides])


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


class _Engine:
    """The sampling engine (torch: every method; vLLM: base and lora) and the verifier."""

    def __init__(
        self, cfg: Config, adapter_dir: str | None, device: str, engine: str, ablate: str | None
    ) -> None:
        from safetensors.torch import load_file

        from pte_ray.engines.choose import rollout_engine
        from pte_ray.engines.torch_engine import TorchEngine
        from pte_ray.method.checkpoint import load_adapter
        from pte_ray.run.models import resolve_model

        self.gen = rollout_engine(cfg, resolve_model(cfg.model.path), device, engine)
        self.tok = self.gen.tokenizer
        if ablate is not None and not isinstance(self.gen, TorchEngine):
            raise ValueError(f"--ablate {ablate} runs on the torch engine (the thought state)")
        if ablate is not None and (adapter_dir is None or self.gen.adapter is None):
            raise ValueError(f"--ablate {ablate} needs --adapter with a thought state (pte)")
        if adapter_dir is not None and cfg.adapter_config().has_adapter:
            if isinstance(self.gen, TorchEngine):
                load_adapter(self.gen.adapter, adapter_dir)
                self.gen.adapter.set_ablation(ablate)
            else:
                f = Path(adapter_dir) / "adapter.safetensors"
                if not f.is_file():
                    raise FileNotFoundError(f"no adapter.safetensors in {adapter_dir}")
                self.gen.load_state(load_file(str(f)), tag=Path(adapter_dir).name)
        r = cfg.reward
        self.verifier = Verifier(r.model_copy(update={"format_bonus": 0.0}))  # accuracy only
        self.verifier.warm_up()


def _run_bench(
    eng: _Engine,
    cfg: Config,
    bench: Bench,
    how: tuple[int, bool],
    n: int,
    batch: int,
    limit: int | None,
    bar: Any,
) -> list[dict[str, Any]]:
    """Every completion of one benchmark under one (seed, greedy), scored."""
    seed, greedy = how
    examples, golds, dcfg = problems(bench, cfg, limit)
    dist = distances(bench)
    special = not cfg.data.apply_chat_template
    texts = [render_prompt(e, dcfg, eng.tok) for e in examples]
    ids = [eng.tok(t, add_special_tokens=special).input_ids for t in texts]
    jobs = [(i, s) for i in range(len(examples)) for s in range(n)]
    rows: list[dict[str, Any]] = []
    for b0 in range(0, len(jobs), batch):
        part = jobs[b0 : b0 + batch]
        state = np.random.SeedSequence([seed, b0]).generate_state(1)[0]
        sp = cfg.sampling_params(seed=int(state), greedy=greedy)
        with torch.no_grad():
            out = eng.gen.sample([ids[i] for i, _ in part], sp)
        comps = [eng.tok.decode(t, skip_special_tokens=True) for t in out.tokens]
        scored = eng.verifier.score_batch(comps, [golds[i] for i, _ in part])
        for j, ((i, s), (reward, status)) in enumerate(zip(part, scored, strict=True)):
            rows.append(
                {
                    "benchmark": bench.name,
                    "seed": seed,
                    "problem": i,
                    "sample": s,
                    "prompt": texts[i],
                    "answer": golds[i],
                    "completion": comps[j],
                    "correct": status == "ok",
                    "reward": reward,
                    "status": status,
                    "num_tokens": len(out.tokens[j]),
                    "evictions": len(out.eviction_steps[j]),
                    "distance": dist[i] if dist else None,
                }
            )
        bar.update(len(part))
    return rows


def _scores(rows: list[dict[str, Any]], n: int, ks: list[int]) -> dict[str, float]:
    right: dict[int, int] = {}
    for r in rows:
        right[r["problem"]] = right.get(r["problem"], 0) + int(r["correct"])
    out = {f"mean@{n}": sum(right.values()) / (n * len(right))}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in right.values()]))
    for d in sorted({r["distance"] for r in rows if r["distance"] is not None}):
        hits = [r["correct"] for r in rows if r["distance"] == d]
        out[f"acc@d={d}"] = sum(hits) / len(hits)  # accuracy by evictions since the value
    far = [r["correct"] for r in rows if r["distance"] is not None and r["distance"] >= 2]
    if far:  # where only the thought state can carry the value (README, the recall task)
        out["acc@d>=2"] = sum(far) / len(far)
    return out


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate: what ``pte-ray eval``'s flags say, in one record."""

    samples: int = 1  # completions per problem (n)
    ks: tuple[int, ...] = ()  # pass@k values (default 1 and n)
    seeds: tuple[int, ...] = (0,)  # mean +- std over these
    out_dir: str | None = None  # default runs/eval-<time>
    batch: int = 32  # sequences per generate call
    limit: int | None = None  # the first N problems of each benchmark
    device: str | None = None  # default: cuda when present
    engine: str = "torch"  # torch (every method) | vllm (base, lora)
    ablate: str | None = None  # fold / state (``Adapter.set_ablation``)
    greedy: bool = False  # argmax decoding instead of sampling


def evaluate(
    cfg: Config, adapter_dir: str | None, benches: list[str], opts: EvalOptions = EvalOptions()
) -> dict[str, Any]:
    """Scores every benchmark under every seed; writes results.json + completions.parquet."""
    o = opts
    ks = _check_counts(sorted(set(o.ks or [1, o.samples])), o.samples, o.batch)
    specs = [resolve_bench(b, cfg) for b in benches]  # bad names / columns fail before compute
    counts = {b.name: len(problems(b, cfg, o.limit)[0]) for b in specs}
    out = Path(o.out_dir or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty")
    dev = o.device or ("cuda" if torch.cuda.is_available() else "cpu")
    eng = _Engine(cfg, adapter_dir, dev, o.engine, o.ablate)
    bar = progress(sum(counts.values()) * o.samples * len(o.seeds), "eval", "sample")
    rows: list[dict[str, Any]] = []
    per_seed: dict[str, list[dict[str, float]]] = {b.name: [] for b in specs}
    t0 = time.perf_counter()
    for seed in o.seeds:
        for bench in specs:
            got = _run_bench(eng, cfg, bench, (seed, o.greedy), o.samples, o.batch, o.limit, bar)
            per_seed[bench.name].append(_scores(got, o.samples, ks))
            rows += got
    bar.close()
    eng.verifier.close()
    results = {
        "method": cfg.adapter.method,
        "engine": o.engine,
        "ablate": o.ablate,
        "greedy": o.greedy,
        "adapter": adapter_dir,
        "cache": cfg.cache_config().model_dump(mode="json"),
        "samples": o.samples,
        "seeds": list(o.seeds),
        "seconds": time.perf_counter() - t0,
        "benchmarks": {name: _mean_std(v) for name, v in per_seed.items()},
        "problems": counts,  # a sample of 5 problems is a smoke test, not a benchmark
    }
    _write(out, results, rows)
    results["out_dir"] = str(out)
    return results


def _check_counts(ks: list[int], samples: int, batch: int) -> list[int]:
    if samples < 1 or batch < 1:
        raise ValueError(f"--samples and --batch must be >= 1, got {samples} and {batch}")
    if max(ks) > samples:
        raise ValueError(f"pass@{max(ks)} needs --samples >= {max(ks)}, got --samples {samples}")
    return ks


def _mean_std(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "mean": float(np.mean([d[k] for d in per_seed])),
            "std": float(np.std([d[k] for d in per_seed])),
        }
        for k in per_seed[0]
    }


def _write(out: Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        pq.write_table(pa.Table.from_pylist(rows), tmp / "completions.parquet")
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def table(results: dict[str, Any], metric: str) -> str:
    """The paper's layout: one row per method, one column per benchmark (with its number of
    problems), then the average."""
    names = list(results["benchmarks"])
    cells = [results["benchmarks"][b].get(metric) for b in names]
    have = [c["mean"] for c in cells if c is not None]
    n = results.get("problems", {})
    head = "| method | " + " | ".join(f"{b} ({n[b]})" if b in n else b for b in names) + " | avg |"
    rule = "|---" * (len(names) + 2) + "|"
    body = " | ".join(
        f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" if c is not None else "-" for c in cells
    )
    avg = f"{100 * float(np.mean(have)):.1f}"
    return f"{metric} (%)\n{head}\n{rule}\n| {results['method']} | {body} | {avg} |"
