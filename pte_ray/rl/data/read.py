"""Raw rows of JSONL / JSON / Parquet files (or a directory of shards), with 1-based row numbers.

Reading is separate from validation so that each format only has to say where a row is; an
undecodable JSONL line is yielded as a ``Bad`` row rather than raised, so that the loader can
report it with every other bad row (or skip it) instead of stopping at the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pte_ray.rl.data.schema import DataError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Bad:
    """A row (or ``rows`` rows: an unreadable Parquet row group) that cannot be used, and why."""

    reason: str
    rows: int = 1


def resolve_files(path: str) -> list[Path]:
    """The data files of ``path``: itself, or a directory's visible files of a known type."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file() and f.suffix.lower() in SUFFIXES and not f.name.startswith((".", "_"))
        )
        if not files:
            raise DataError(f"{p}: directory has no .parquet / .jsonl / .json files")
        return files
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"{p}: unsupported file type {p.suffix!r} (use .jsonl, .json or .parquet)")
    return [p]


def _rows_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield lineno, Bad(f"undecodable line ({type(e).__name__}: {e})")


def _rows_json(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict):
        lists = [k for k in ("data", "rows", "examples") if isinstance(data.get(k), list)]
        if not lists:
            raise DataError(f"{path}: expected a JSON array of rows or an object with 'data'")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    yield from enumerate(data, 1)


def _rows_parquet(path: Path, columns: list[str]) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({e})") from e
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {names}")
    row = 0
    for rg in range(pf.num_row_groups):  # a corrupt page spoils its row group, not the file
        n = pf.metadata.row_group(rg).num_rows
        try:
            recs = pf.read_row_group(rg, columns=columns).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt pages
            why = f"row group {rg} (rows {row + 1}-{row + n}) unreadable: {type(e).__name__}: {e}"
            yield row + 1, Bad(why, rows=n)
            row += n
            continue
        for rec in recs:
            row += 1
            yield row, rec


def read_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, Any]]:
    """(1-based row, record) of one file; Parquet reads only ``columns``."""
    kind = SUFFIXES[path.suffix.lower()]
    if kind == "parquet":
        return _rows_parquet(path, columns)
    return _rows_jsonl(path) if kind == "jsonl" else _rows_json(path)
