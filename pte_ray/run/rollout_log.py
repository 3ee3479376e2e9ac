"""Rollouts on disk: one Parquet file per training step with a fixed schema.

``run_dir/rollouts/step_000012.parquet`` holds every sample scored at step 12. Files are written
to a dot-prefixed temporary name and renamed into place, so a crash never leaves a half file and
``pyarrow.dataset`` (which skips ``.``/``_`` names) never sees one. Re-writing a step (after a
resume) replaces it. Load a run with ``read_rollouts(run_dir)`` or
``pyarrow.dataset.dataset(run_dir + "/rollouts")`` and ``.to_table().to_pandas()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pte_ray.atomic import atomic_path

SCHEMA_VERSION = "3"  # 2: the never-filled "pred" column is gone; 3: evicted_slots


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


ROLLOUT_SCHEMA = pa.schema(
    [
        _f("step", pa.int64(), "training step whose update used this sample"),
        _f("prompt", pa.string(), "prompt text as given to the model (rendered)"),
        _f("completion", pa.string(), "generated text"),
        _f("answer", pa.string(), "gold answer"),
        _f("reward", pa.float64(), "scalar reward"),
        _f("status", pa.string(), "verifier status: ok/no_answer/parse_error/timeout/mismatch"),
        _f("version", pa.int64(), "adapter weight version that generated the sample"),
        _f("evictions", pa.int64(), "bounded-cache evictions during generation"),
        _f("num_tokens", pa.int64(), "generated tokens"),
        _f("group", pa.int64(), "GRPO group (prompt) id within the step"),
        _f("prompt_index", pa.int64(), "index of the prompt in the dataset", nullable=True),
        _f("advantage", pa.float64(), "GRPO advantage", nullable=True),
        _f(
            "evicted_slots",
            pa.list_(pa.list_(pa.int32())),
            "per eviction, the ring offsets freed (cache.eviction=rkv; null under window)",
            nullable=True,
        ),
    ],
    metadata={"pte_ray.rollouts.schema_version": SCHEMA_VERSION},
)
REQUIRED = [f.name for f in ROLLOUT_SCHEMA if not f.nullable]


class RolloutWriter:
    """Appends one Parquet file per step under ``run_dir/rollouts``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir) / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, step: int) -> Path:
        return self.dir / f"step_{step:06d}.parquet"

    def write(self, step: int, rows: list[dict[str, Any]] | dict[str, list[Any]]) -> Path:
        """Write step ``step`` (rows as dicts, or columns); ``step`` may be omitted per row."""
        if isinstance(rows, dict):
            cols = dict(rows)
            n = len(next(iter(cols.values()))) if cols else 0
        else:
            n = len(rows)
            present = {k for r in rows for k in r}
            cols = {k: [r.get(k) for r in rows] for k in present}
        unknown = set(cols) - set(ROLLOUT_SCHEMA.names)
        if unknown:
            raise ValueError(f"unknown rollout column(s) {sorted(unknown)}")
        if "step" not in cols or all(v is None for v in cols["step"]):
            cols["step"] = [step] * n
        elif any(v != step for v in cols["step"]):
            raise ValueError(f"rows carry a step other than {step}")
        for name in ROLLOUT_SCHEMA.names:
            values = cols.setdefault(name, [None] * n)
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values, expected {n}")
            if name in REQUIRED and any(v is None for v in values):
                raise ValueError(f"rollout column {name!r} is required (missing or null)")
        try:
            table = pa.Table.from_pydict(cols, schema=ROLLOUT_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(f"rollouts for step {step} do not fit the schema: {e}") from e
        final = self.path(step)
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        return final


def read_rollouts(run_dir: str | os.PathLike[str]) -> pa.Table:
    """Every step's rollouts of a run as one table (empty, with the schema, if none yet)."""
    d = Path(run_dir) / "rollouts"
    if not d.is_dir() or not any(d.glob("step_*.parquet")):
        return ROLLOUT_SCHEMA.empty_table()
    return ds.dataset(str(d), format="parquet", schema=ROLLOUT_SCHEMA).to_table()
