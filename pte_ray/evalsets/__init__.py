"""Benchmarks: the bundled samples (MATH500, GSM8K, AIME formats), the tiny tasks, or a path.

A benchmark is found by name or path and read with the same loader as training data, with its
prompt and answer columns found by name, so a public set works as downloaded. Small public
samples ship beside this file so ``pte-ray eval`` runs offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pte_ray.config import Config
from pte_ray.rl.data import DataConfig, load_dataset

EVALSETS = Path(__file__).parent
# A handful of public problems in each format, so `pte-ray eval` runs offline; a result on
# them is a smoke test, not a benchmark figure (their counts are printed with every table).
BUNDLED = {n: f"{n}.jsonl" for n in ("math500-sample", "gsm8k-sample", "aime-sample")}
PROMPT_KEYS = ("prompt", "problem", "question", "Problem", "Question")
ANSWER_KEYS = ("answer", "Answer")


@dataclass
class Bench:
    name: str
    path: str
    prompt_key: str
    answer_key: str
    has_distance: bool = False  # the recall task's rows carry it: accuracy per distance


def resolve_bench(spec: str, cfg: Config) -> Bench:
    """A bundled sample (math500-sample, gsm8k-sample, aime-sample), 'tiny' / 'tiny-recall' (the
    tiny tasks' test splits) or a path."""
    if spec in BUNDLED:
        path, name = EVALSETS / BUNDLED[spec], spec
    elif spec in ("tiny", "tiny-recall"):  # the tiny tasks' held-out splits
        from pte_ray.tiny import RECIPES, build_tiny_task

        path, name = build_tiny_task(recipe=RECIPES[spec])["test"], spec
    else:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"benchmark {spec!r}: no such file or directory (bundled: {sorted(BUNDLED)}, tiny)"
            )
        name = path.stem
    first = first_row(path)
    pkey = next((k for k in (cfg.data.prompt_key, *PROMPT_KEYS) if k in first), None)
    akey = next((k for k in (cfg.data.answer_key, *ANSWER_KEYS) if k in first), None)
    if pkey is None or akey is None:
        raise ValueError(
            f"benchmark {path}: row 1 has columns {sorted(first)}; need a prompt column "
            f"({', '.join(PROMPT_KEYS)} or data.prompt_key) and an answer column "
            f"({', '.join(ANSWER_KEYS)} or data.answer_key)"
        )
    return Bench(name, str(path), pkey, akey, "distance" in first)


def first_row(path: Path) -> dict[str, Any]:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    for f in files:
        if f.suffix == ".parquet":
            return {k: None for k in pq.read_schema(f).names}
        if f.suffix in (".jsonl", ".json"):
            with f.open() as fh:
                line = fh.readline()
            row = json.loads(line) if f.suffix == ".jsonl" else json.loads(f.read_text())[0]
            return row if isinstance(row, dict) else {}
    raise ValueError(f"{path}: no .jsonl, .json or .parquet file")


def problems(bench: Bench, cfg: Config, limit: int | None) -> tuple[list, list[str], DataConfig]:
    dcfg = cfg.data.loader(bench.path).model_copy(
        update={
            "prompt_key": bench.prompt_key,
            "answer_key": bench.answer_key,
            "messages_key": None,
            "skip_bad_rows": False,
        }
    )
    examples = load_dataset(dcfg)[0][:limit]  # GSM8K's answers end in "#### 72"
    return examples, [e.answer.split("####")[-1].strip() for e in examples], dcfg


def distances(bench: Bench) -> list[int | None]:
    """The ``distance`` column in file order (None where a benchmark has none)."""
    if not bench.has_distance:
        return []
    path = Path(bench.path)
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=["distance"]).column("distance").to_pylist()
    return [json.loads(line).get("distance") for line in path.read_text().splitlines() if line]
