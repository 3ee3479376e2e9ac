"""Prompt data: load and validate JSONL / JSON / Parquet (file or directory of shards), render
prompts, stream them in seeded, resumable, shardable order, and filter by prompt length.

Every row is validated before any compute is spent; a bad row is a ``DataError`` naming the file
and the 1-based row (for JSONL, the line number), or, with ``skip_bad_rows``, a counted skip.
Rollout output lives in ``pte_ray.run.rollout_log`` and is re-exported here.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pte_ray.run.rollout_log import ROLLOUT_SCHEMA, RolloutWriter, read_rollouts

__all__ = [
    "BOXED_INSTRUCTION",
    "ROLLOUT_SCHEMA",
    "DataConfig",
    "DataError",
    "Example",
    "LengthReport",
    "LoadReport",
    "PromptStream",
    "RolloutWriter",
    "filter_by_length",
    "load_dataset",
    "load_prompts",
    "read_rollouts",
    "render_prompt",
]

log = logging.getLogger(__name__)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_ROLES = ("system", "user", "assistant")
_MAX_LISTED = 10


@dataclass
class DataConfig:
    path: str
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    messages_key: str | None = None  # chat rows: a list of {"role", "content"} instead of prompt
    system_prompt: str | None = None
    instruction: str | None = None  # appended to the user turn; "boxed" = BOXED_INSTRUCTION
    apply_chat_template: bool = False
    skip_bad_rows: bool = False
    seed: int = 0


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


@dataclass
class Example:
    prompt: str  # the user turn (for chat rows: the last user message)
    answer: str
    index: int  # position in the loaded dataset
    source: str  # "file:row", 1-based row
    messages: list[dict[str, str]] | None = None


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few, as "file: row N: why"


# ----------------------------------------------------------------------------- reading


def _resolve_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f
            for f in p.iterdir()
            if f.is_file() and f.suffix.lower() in _SUFFIXES and not f.name.startswith((".", "_"))
        )
        if not files:
            raise DataError(f"{p}: directory has no .parquet / .jsonl / .json files")
        return files
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.suffix.lower() not in _SUFFIXES:
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
                yield lineno, _Bad(f"undecodable line ({type(e).__name__}: {e})")


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
    for batch in pf.iter_batches(columns=columns, batch_size=8192):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


@dataclass
class _Bad:
    reason: str


def _validate(rec: Any, cfg: DataConfig) -> tuple[str, list[dict[str, str]] | None, str] | _Bad:
    """(prompt, messages, answer) of a good row, or why it is bad."""
    if isinstance(rec, _Bad):
        return rec
    if not isinstance(rec, dict):
        return _Bad(f"row is a {type(rec).__name__}, expected an object")
    messages = None
    if cfg.messages_key:
        if cfg.messages_key not in rec:
            return _Bad(f"missing column {cfg.messages_key!r}")
        messages = rec[cfg.messages_key]
        if not isinstance(messages, list) or not messages:
            return _Bad(f"{cfg.messages_key!r} must be a non-empty list of messages")
        for m in messages:
            if not (
                isinstance(m, dict)
                and m.get("role") in _ROLES
                and isinstance(m.get("content"), str)
            ):
                return _Bad(f"{cfg.messages_key!r} has a message without role/content strings")
        users = [m["content"] for m in messages if m["role"] == "user"]
        prompt = users[-1] if users else None
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        if cfg.prompt_key not in rec:
            return _Bad(f"missing column {cfg.prompt_key!r}")
        prompt = rec[cfg.prompt_key]
        if not isinstance(prompt, str) and prompt is not None:
            return _Bad(f"prompt is {type(prompt).__name__}, expected a string")
    if not prompt or not prompt.strip():
        return _Bad("empty prompt")
    if cfg.answer_key not in rec:
        return _Bad(f"missing column {cfg.answer_key!r}")
    answer = rec[cfg.answer_key]
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)  # AIME-style sets store integer answers
    if not isinstance(answer, str):
        return _Bad(f"answer is {type(answer).__name__}, expected a string (quote it)")
    if not answer.strip():
        return _Bad("empty answer")
    return prompt, messages, answer


def load_dataset(cfg: DataConfig) -> tuple[list[Example], LoadReport]:
    """All examples, validated; raises ``DataError`` listing bad rows unless ``skip_bad_rows``."""
    report = LoadReport()
    examples: list[Example] = []
    keys = [cfg.messages_key] if cfg.messages_key else [cfg.prompt_key]
    keys.append(cfg.answer_key)
    for path in _resolve_files(cfg.path):
        report.files.append(str(path))
        kind = _SUFFIXES[path.suffix.lower()]
        rows = (
            _rows_parquet(path, keys)
            if kind == "parquet"
            else (_rows_jsonl(path) if kind == "jsonl" else _rows_json(path))
        )
        for row, rec in rows:
            report.rows += 1
            got = _validate(rec, cfg)
            if isinstance(got, _Bad):
                report.skipped += 1
                report.reasons[got.reason.split(" (")[0]] += 1
                if len(report.errors) < _MAX_LISTED:
                    report.errors.append(f"{path}: row {row}: {got.reason}")
                continue
            prompt, messages, answer = got
            src = f"{path}:{row}"
            examples.append(Example(prompt, answer, len(examples), src, messages))
    report.kept = len(examples)
    if report.skipped and not cfg.skip_bad_rows:
        more = report.skipped - len(report.errors)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(
            f"{report.skipped} bad row(s) (rows are 1-based; set skip_bad_rows to skip them):\n  "
            + "\n  ".join(report.errors)
            + tail
        )
    if report.skipped:
        log.warning("skipped %d bad rows of %d: %s", report.skipped, report.rows, report.errors[0])
    if not examples:
        raise DataError(f"{cfg.path}: no usable rows")
    return examples, report


def load_prompts(cfg: DataConfig) -> list[Example]:
    return load_dataset(cfg)[0]


# ----------------------------------------------------------------------------- rendering


def render_prompt(example: Example, cfg: DataConfig, tokenizer: Any = None) -> str:
    """The text the model is given: system prompt, the user turn plus the answer instruction,
    through the tokenizer's chat template when ``apply_chat_template`` is set."""
    instruction = BOXED_INSTRUCTION if cfg.instruction == "boxed" else cfg.instruction
    if example.messages:
        messages = [dict(m) for m in example.messages]
    else:
        messages = [{"role": "user", "content": example.prompt}]
    if instruction:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] += "\n\n" + instruction
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    if not cfg.apply_chat_template:
        return "\n\n".join(m["content"] for m in messages)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("apply_chat_template needs the model's tokenizer with a chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class LengthReport:
    max_prompt_tokens: int
    total: int
    kept: int
    dropped: list[tuple[int, str, int]]  # (index, source, tokens), never truncated instead
    longest_kept: int

    def __str__(self) -> str:
        head = ", ".join(f"{src} ({n} tokens)" for _, src, n in self.dropped[:5])
        more = f" and {len(self.dropped) - 5} more" if len(self.dropped) > 5 else ""
        return (
            f"{len(self.dropped)} of {self.total} prompts exceed {self.max_prompt_tokens} tokens"
            + (f": {head}{more}" if self.dropped else "")
        )


def _count_tokens(tokenizer: Any, texts: list[str], special: bool) -> list[int]:
    try:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    except TypeError:  # not a HF tokenizer: anything with encode(text)
        return [len(tokenizer.encode(t)) for t in texts]


def filter_by_length(
    examples: list[Example],
    tokenizer: Any,
    max_prompt_tokens: int,
    cfg: DataConfig | None = None,
) -> tuple[list[Example], LengthReport]:
    """Drop (and report) prompts whose rendered token count exceeds the cache budget.

    A prompt is never truncated: a cut-off question has a different answer.
    """
    texts = [render_prompt(ex, cfg, tokenizer) if cfg else ex.prompt for ex in examples]
    special = not (cfg is not None and cfg.apply_chat_template)  # templates add their own
    counts = _count_tokens(tokenizer, texts, special) if texts else []
    kept = [ex for ex, n in zip(examples, counts, strict=True) if n <= max_prompt_tokens]
    dropped = [
        (ex.index, ex.source, n)
        for ex, n in zip(examples, counts, strict=True)
        if n > max_prompt_tokens
    ]
    longest = max((n for n in counts if n <= max_prompt_tokens), default=0)
    report = LengthReport(max_prompt_tokens, len(examples), len(kept), dropped, longest)
    if dropped:
        log.warning("%s", report)
    return kept, report


# ----------------------------------------------------------------------------- streaming


class PromptStream:
    """Endless stream over ``examples`` in a fresh seeded permutation each epoch.

    Rank ``r`` of ``world`` takes positions ``r, r+world, ...`` of the shared permutation, so
    shards are disjoint and together cover each epoch. ``cursor()`` is the whole state needed
    to resume (with the same examples, seed, rank and world). Typical use:
    ``PromptStream(load_prompts(cfg), seed=cfg.seed).shard(rank, world)``.
    """

    def __init__(
        self, examples: list[Example], seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in [0, {world})")
        if len(examples) < world:
            raise ValueError(f"{len(examples)} examples cannot be split across {world} shards")
        self.examples = examples
        self.seed, self.rank, self.world = seed, rank, world
        self._epoch = 0
        self._index = 0
        self._order: tuple[int, list[int]] | None = None

    def shard(self, rank: int, world: int) -> PromptStream:
        """A stream over the same examples and seed that yields only shard ``rank``."""
        return PromptStream(self.examples, self.seed, rank, world)

    def epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._order = (epoch, perm[self.rank :: self.world].tolist())
        return self._order[1]

    @property
    def epoch_size(self) -> int:
        return len(range(self.rank, len(self.examples), self.world))

    def next_batch(self, n: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            order = self.epoch_order(self._epoch)
            take = order[self._index : self._index + n - len(out)]
            out.extend(self.examples[i] for i in take)
            self._index += len(take)
            if self._index >= len(order):
                self._epoch, self._index = self._epoch + 1, 0
        return out

    def cursor(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def restore(self, cursor: dict[str, int]) -> None:
        epoch, index = int(cursor["epoch"]), int(cursor["index"])
        if epoch < 0 or not 0 <= index <= self.epoch_size:
            raise ValueError(f"cursor {cursor} out of range for a shard of {self.epoch_size}")
        self._epoch, self._index = epoch, index
