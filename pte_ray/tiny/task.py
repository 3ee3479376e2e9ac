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
    """The recall task: two counts, and the answer is where each one ended, last one first.

    Prompt ``Count from 21 by 5, 3 steps. Then from 40 by 3, 9 steps. Answer both.``;
    solution ``3: 21+5=26`` ``2: 26+5=31`` ``1: 31+5=36`` ``then`` ``9: 40+3=43`` ...
    ``1: 64+3=67`` ``#### 67 36``. Each line needs only the previous line and the prompt, as in
    the counting task (whose written-out additions a tiny model learns; ``3: 26`` ``2: 31``
    with the addition left implicit it got wrong on most problems). The
    answer's second number is the first count's last total, written once and never restated.
    With the whole context it is a copy (the value just before ``then``: no label matching,
    which a tiny model learns only after a long plateau); under the bounded cache it is gone
    once the second count is longer than the window (recomputing it, start + steps * add, is
    a multiplication the tiny model cannot do in one token). What PTE's state must carry.

    The answer's first number (the second count's end, still in the window) is there so that
    the task cannot be gamed: with only the first total asked for, GRPO learned to cut the
    second count short until the value stayed in the window (``version`` 2; README). Both
    numbers are compared as one (spaces are dropped: ``94 36`` == ``9436``), so each must be
    right. The second count's length is the distance knob: ``distance`` (written into each row
    for the default 64-token budget) counts the evictions between the value's eviction and
    its recall: 0 = still in the window, 1 = evicted by the last eviction before the recall
    (what truncated back-propagation can credit), 2+ = earlier.
    """

    min_first: int = 2
    max_first: int = 4
    min_steps: int = 3  # of the second count
    max_steps: int = 10
    digits: int = 1
    start_max: int = 99
    # Warm-start loss weight of the answer ("####" and after): 3 tokens in ~150, which at
    # weight 1 the model learns long after it counts well.
    answer_weight: float = 5.0
    version: int = 3  # of the format (names the cache): 3 asks for both totals, adds written out

    def __post_init__(self) -> None:
        if not (1 <= self.min_first <= self.max_first and 1 <= self.min_steps <= self.max_steps):
            raise ValueError(f"need 1 <= min <= max for both counts: {self}")
        if self.digits < 1 or self.start_max < 1:
            raise ValueError(f"need digits >= 1 and start_max >= 1: {self}")


def _count_lines(start: int, add: int, steps: int) -> list[str]:
    """``left: total+add=new`` counting down, as in the counting task's solutions."""
    return [
        f"{left}: {start + add * (steps - left)}+{add}={start + add * (steps - left + 1)}"
        for left in range(steps, 0, -1)
    ]


def format_recall(s1: int, a1: int, k: int, s2: int, a2: int, n: int) -> tuple[str, str, str]:
    """(prompt, solution, answer) of one recall problem."""
    prompt = f"Count from {s1} by {a1}, {k} steps. Then from {s2} by {a2}, {n} steps. "
    prompt += "Answer both.\n"
    answer = f"{s2 + a2 * n} {s1 + a1 * k}"
    lines = [*_count_lines(s1, a1, k), "then", *_count_lines(s2, a2, n), f"#### {answer}"]
    return prompt, "\n".join(lines), answer


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
        if isinstance(spec, RecallSpec):  # (s1, a1, k, s2, a2, n)
            key = (
                key[0],
                key[1],
                rng.randint(spec.min_first, spec.max_first),
                rng.randint(1, spec.start_max),
                rng.randint(2, 10**spec.digits - 1),
                key[2],
            )
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
    """Evictions between the first count's last total being evicted and its recall (the last
    number of the answer), under a ``budget``-token thought window that evicts ``evict_n`` at a
    time (0: the value is still in the window)."""
    from pte_ray.method.config import CacheConfig

    sol = row["solution"]
    value_end = len(encode(sol[: sol.index("\nthen")])) - 1  # index of the value's last token
    recall_at = len(encode(sol[: sol.rindex(" ")]))  # index of the recalled value's first token
    cfg = CacheConfig(budget=budget, evict_ratio=evict_n / budget)
    done = len(cfg.schedule(1, recall_at, recall_at))  # evictions before the recall is fed
    evicted_by = value_end // evict_n  # the eviction that removes it (the window's oldest go)
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
