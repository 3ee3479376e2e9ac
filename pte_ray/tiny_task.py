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


@dataclass(frozen=True)
class RecallSpec:
    """The recall task: count by ``add`` for N steps, then answer with the total of step M.

    Prompt ``Count from 44 by 5, 24 steps. Keep 19.``; solution ``24: 49`` ... ``19: 74*`` ...
    ``1: 164`` then ``#### 74``. Each line needs only the previous line and the prompt, as in
    the counting task, but the answer is the line marked ``*``, written once and never restated:
    with the whole context a copy, under the bounded cache gone once M lines are more than the
    window back (recomputing it, start + (N - M + 1) * add, is a multiplication the tiny model
    cannot do in one token). What PTE's state must carry. ``distance`` (written into each row
    for the default 64-token budget) counts the evictions between the marked value's eviction
    and the answer: 0 = still in the window, 1 = evicted by the last eviction before the answer
    (what truncated back-propagation can credit), 2+ = earlier.
    """

    min_steps: int = 16
    max_steps: int = 24
    digits: int = 1
    start_max: int = 99
    min_keep: int = 2  # the marked line's label M, drawn from [min_keep, N]

    def __post_init__(self) -> None:
        if not 2 <= self.min_keep <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 2 <= min_keep <= min_steps <= max_steps: {self}")
        if self.digits < 1 or self.start_max < 1:
            raise ValueError(f"need digits >= 1 and start_max >= 1: {self}")


def format_recall(start: int, add: int, steps: int, keep: int) -> tuple[str, str, str]:
    """(prompt, solution, answer) of one recall problem."""
    prompt = f"Count from {start} by {add}, {steps} steps. Keep {keep}.\n"
    lines, total, kept = [], start, start
    for left in range(steps, 0, -1):
        total += add
        lines.append(f"{left}: {total}" + ("*" if left == keep else ""))
        kept = total if left == keep else kept
    return prompt, "\n".join(lines) + f"\n#### {kept}", str(kept)


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


def is_test_problem(*key: int) -> bool:
    """Hash split on content, so train and test never share a problem whatever the seeds."""
    digest = hashlib.sha256(",".join(map(str, key)).encode()).digest()
    return digest[0] < 26  # ~10% of all problems


def make_task(
    n: int, seed: int = 0, split: str = "train", spec: TaskSpec | RecallSpec = DEFAULT_SPEC
) -> list[dict[str, str]]:
    """``n`` distinct problems with ``prompt``, ``answer``, ``solution``; deterministic in args."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"pte-ray-tiny-task/{seed}/{split}/{json.dumps(asdict(spec))}")
    out: list[dict[str, str]] = []
    seen: set[tuple[int, ...]] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 100_000:
            raise ValueError(f"fewer than {n} distinct {split} problems exist for {spec}")
        key: tuple[int, ...] = (
            rng.randint(1, spec.start_max),
            rng.randint(2, 10**spec.digits - 1),
            rng.randint(spec.min_steps, spec.max_steps),
        )
        if isinstance(spec, RecallSpec):
            key = (*key, rng.randint(spec.min_keep, key[2]))
        if key in seen or is_test_problem(*key) != (split == "test"):
            continue
        seen.add(key)
        if isinstance(spec, RecallSpec):
            prompt, solution, answer = format_recall(*key)
        else:
            prompt, solution, answer = format_prompt(*key), format_solution(*key), ""
            answer = str(key[0] + key[1] * key[2])
        out.append({"prompt": prompt, "answer": answer, "solution": solution})
    return out


def write_task(
    path: str | Path,
    n: int,
    seed: int = 0,
    split: str = "train",
    spec: TaskSpec | RecallSpec = DEFAULT_SPEC,
) -> Path:
    """Writes ``prompt``/``answer``/``solution`` rows as JSONL or Parquet (by extension)."""
    return write_rows(path, make_task(n, seed=seed, split=split, spec=spec))


def recall_distance(encode, row: dict[str, str], budget: int = 64, evict_n: int = 16) -> int:
    """Evictions between the marked value's and the answer's, under a ``budget``-token thought
    window that evicts ``evict_n`` at a time (0: the value is still in the window)."""
    sol = row["solution"]
    value_end = len(encode(sol[: sol.index("*")])) - 1  # thought index of the value's last token
    answer_at = len(encode(sol[: sol.rindex("####") + 4]))  # index of the answer's first token
    done = 0 if answer_at - 1 < budget else (answer_at - 1 - budget) // evict_n + 1
    evicted_by = value_end // evict_n  # the eviction that removes it
    return done - evicted_by if evicted_by < done else 0


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """Rows as JSONL or Parquet (by extension), renamed into place when complete."""
    path = Path(path)
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
