"""Synthetic reasoning task for the tiny model: counted repeated addition.

Prompt: ``Start at 44 and add 5, 11 times.`` The worked solution writes one line per addition,
counting down the additions left (``11: 44+5=49`` ... ``1: 94+5=99``) and ends with ``#### 99``.

Why this task: every line needs only the prompt (never evicted) and the previous line (the most
recent thought tokens), so it stays solvable under a bounded cache although the worked solution
(~90-160 tokens) is longer than the cache budget. A tiny model learns it smoothly (no sudden
phase change, unlike label look-ups), so a short warm-start gives a model that is right on some
problems and wrong on others (mostly carries), which leaves GRPO room to climb.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskSpec:
    """Difficulty knobs: more steps make longer solutions, more digits make harder additions."""

    min_steps: int = 8
    max_steps: int = 12
    digits: int = 1  # digits of the addend (drawn from 2 .. 10**digits - 1)
    start_max: int = 99

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps: {self}")
        if self.digits < 1 or self.start_max < 1:
            raise ValueError(f"need digits >= 1 and start_max >= 1: {self}")


DEFAULT_SPEC = TaskSpec()


def format_prompt(start: int, add: int, steps: int) -> str:
    """Raw prompt text; it ends with a newline that the solution continues from directly."""
    return f"Start at {start} and add {add}, {steps} times.\n"


def format_solution(start: int, add: int, steps: int) -> str:
    """Lines ``left: total+add=new`` counting down, then ``#### final`` with nothing after."""
    lines, total = [], start
    for left in range(steps, 0, -1):
        lines.append(f"{left}: {total}+{add}={total + add}")
        total += add
    return "\n".join(lines) + f"\n#### {total}"


def is_test_problem(start: int, add: int, steps: int) -> bool:
    """Hash split on content, so train and test never share a problem whatever the seeds."""
    digest = hashlib.sha256(f"{start},{add},{steps}".encode()).digest()
    return digest[0] < 26  # ~10% of all problems


def make_task(
    n: int, seed: int = 0, split: str = "train", spec: TaskSpec = DEFAULT_SPEC
) -> list[dict[str, str]]:
    """``n`` distinct problems with ``prompt``, ``answer``, ``solution``; deterministic in args."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"pte-ray-tiny-task/{seed}/{split}/{json.dumps(asdict(spec))}")
    out: list[dict[str, str]] = []
    seen: set[tuple[int, int, int]] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 100_000:
            raise ValueError(f"fewer than {n} distinct {split} problems exist for {spec}")
        key = (
            rng.randint(1, spec.start_max),
            rng.randint(2, 10**spec.digits - 1),
            rng.randint(spec.min_steps, spec.max_steps),
        )
        if key in seen or is_test_problem(*key) != (split == "test"):
            continue
        seen.add(key)
        out.append(
            {
                "prompt": format_prompt(*key),
                "answer": str(key[0] + key[1] * key[2]),
                "solution": format_solution(*key),
            }
        )
    return out


def write_task(
    path: str | Path, n: int, seed: int = 0, split: str = "train", spec: TaskSpec = DEFAULT_SPEC
) -> Path:
    """Writes ``prompt``/``answer``/``solution`` rows as JSONL or Parquet (by extension)."""
    path = Path(path)
    rows = make_task(n, seed=seed, split=split, spec=spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    elif path.suffix in (".jsonl", ".json"):
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"unsupported task file extension {path.suffix!r} (use .jsonl/.parquet)")
    os.replace(tmp, path)  # readers never see a half-written file
    return path
