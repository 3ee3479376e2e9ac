"""`pte-ray prepare-data`: train/test Parquet from a user's copy of a public math set.

Reads the layouts the sets ship in: MATH (``problem`` + ``solution`` with a ``\\boxed{}`` answer,
as per-problem JSON files in topic folders or as JSONL/Parquet exports, an ``answer`` column used
when present) and GSM8K (``question`` + ``answer`` ending in ``#### 72``). Writes ``prompt``,
``answer``, ``solution`` (the worked solution: SFT targets) and ``source`` columns, a seeded
held-out split, and ``report.json`` with what was kept and why rows were dropped (a row whose
answer cannot be found is dropped and counted, never guessed). Files are renamed into place
when complete.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pte_ray.atomic import atomic_path
from pte_ray.rl.answers import extract_boxed
from pte_ray.rl.data.read import Bad, read_rows

FORMATS = ("auto", "math", "gsm8k")
SUFFIXES = (".jsonl", ".json", ".parquet", ".pq", ".ndjson")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a MATH / GSM8K file (JSONL, JSON, Parquet) or directory")
    p.add_argument("--out", required=True, help="directory for train.parquet and test.parquet")
    p.add_argument("--format", choices=FORMATS, default="auto", help="the source's layout")
    p.add_argument("--test-size", type=int, default=500, help="held-out rows (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"prepare-data: {src} does not exist")
    found = sorted(f for f in src.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
    if not found:
        raise FileNotFoundError(f"prepare-data: no {'/'.join(SUFFIXES)} files under {src}")
    return found


def _records(f: Path) -> Iterator[tuple[int, Any]]:
    """(row, record) of one file; a MATH problem file is one JSON object."""
    if f.suffix == ".json":
        text = f.read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            try:
                yield 1, json.loads(text)
            except json.JSONDecodeError as e:
                yield 1, Bad(f"not JSON ({e.msg})")
            return
    cols = ["problem", "solution", "answer", "question"]
    if f.suffix in (".parquet", ".pq"):
        cols = [c for c in cols if c in pq.read_schema(f).names]
    yield from read_rows(f, cols)


def _layout(rec: dict[str, Any], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if "question" in rec and "answer" in rec:
        return "gsm8k"
    if "problem" in rec:
        return "math"
    raise ValueError(f"no known layout (columns {sorted(rec)}; need problem or question)")


def convert(rec: Any, fmt: str) -> dict[str, str] | str:
    """One source record as (prompt, answer, solution), or why it cannot be used."""
    if isinstance(rec, Bad) or not isinstance(rec, dict):
        return rec.reason if isinstance(rec, Bad) else "not an object"
    try:
        kind = _layout(rec, fmt)
    except ValueError as e:
        return str(e)
    if kind == "gsm8k":
        q, a = rec.get("question"), rec.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
            return "gsm8k row without a question or an answer ending in '#### x'"
        gold = a.rsplit("####", 1)[1].strip().replace(",", "")
        return {"prompt": q, "answer": gold, "solution": a.strip()}
    p, sol = rec.get("problem"), rec.get("solution")
    if not isinstance(p, str) or not isinstance(sol, str):
        return "math row without a problem and a solution"
    gold = rec.get("answer") if isinstance(rec.get("answer"), str) else extract_boxed(sol)
    if not gold:
        return "math solution without a \\boxed{} answer"
    return {"prompt": p, "answer": gold.strip(), "solution": sol.strip()}


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


def prepare_data(src: str, out: str, fmt: str = "auto", test_size: int = 500, seed: int = 0):
    """Converts, splits and writes; returns the report (also written as report.json)."""
    if test_size < 0:
        raise ValueError(f"--test-size must be >= 0, got {test_size}")
    kept, dropped, why = [], 0, Counter()
    for f in _files(Path(src)):
        for row, rec in _records(f):
            got = convert(rec, fmt)
            if isinstance(got, str):
                dropped, why[f"{got}"] = dropped + 1, why[got] + 1
                continue
            kept.append({**got, "source": f"{f}:{row}"})
    if not kept:
        raise ValueError(f"prepare-data: no usable rows in {src} ({dict(why)})")
    random.Random(seed).shuffle(kept)
    test, train = kept[: min(test_size, len(kept) // 2)], kept[min(test_size, len(kept) // 2) :]
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    _write(dest / "train.parquet", train)
    if test:
        _write(dest / "test.parquet", test)
    report = {
        "source": src,
        "train": len(train),
        "test": len(test),
        "dropped": dropped,
        "dropped_why": dict(why),
    }
    (dest / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
