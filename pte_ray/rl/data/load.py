"""Load a prompt dataset and validate every row before any compute is spent.

A bad row found after an hour of training wastes the hour, so all rows are checked up front: a
bad one is a ``DataError`` naming the file and the 1-based row (for JSONL, the line number), or,
with ``skip_bad_rows``, a counted skip listed in the ``LoadReport``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pte_ray.rl.answers.screen import screen_answer
from pte_ray.rl.data.read import Bad, read_rows, resolve_files
from pte_ray.rl.data.schema import DataConfig, DataError, Example

log = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant")
_MAX_LISTED = 10

Row = tuple[str, list[dict[str, str]] | None, str, str | None]  # prompt, messages, answer, sol


@dataclass
class LoadReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few, as "file: row N: why"
    unverifiable: list[str] = field(default_factory=list)  # gold answers the verifier refuses


def _chat_prompt(rec: dict, key: str) -> tuple[str | None, list[dict[str, str]]] | Bad:
    """(last user message, the messages as plain role/content dicts) of a chat row."""
    if key not in rec:
        return Bad(f"missing column {key!r}")
    messages = rec[key]
    if not isinstance(messages, list) or not messages:
        return Bad(f"{key!r} must be a non-empty list of messages")
    for m in messages:
        if not (
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
        ):
            return Bad(f"{key!r} has a message without role/content strings")
    users = [m["content"] for m in messages if m["role"] == "user"]
    prompt = users[-1] if users else None
    return prompt, [{"role": m["role"], "content": m["content"]} for m in messages]


def _plain_prompt(rec: dict, key: str) -> str | None | Bad:
    if key not in rec:
        return Bad(f"missing column {key!r}")
    prompt = rec[key]
    if not isinstance(prompt, str) and prompt is not None:
        return Bad(f"prompt is {type(prompt).__name__}, expected a string")
    return prompt


def _answer(rec: dict, key: str) -> str | Bad:
    if key not in rec:
        return Bad(f"missing column {key!r}")
    answer = rec[key]
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)  # AIME-style sets store integer answers
    if not isinstance(answer, str):
        return Bad(f"answer is {type(answer).__name__}, expected a string (quote it)")
    if not answer.strip():
        return Bad("empty answer")
    return answer


def _solution(rec: dict, key: str) -> str | Bad:
    sol = rec.get(key) if key in rec else Bad(f"missing column {key!r} (the SFT target)")
    if isinstance(sol, Bad):
        return sol
    if not isinstance(sol, str) or not sol.strip():
        return Bad(f"{key!r} must be a non-empty string, got {sol!r:.40}")
    return sol


def _validate(rec: Any, cfg: DataConfig, solutions: bool = False) -> Row | Bad:
    """(prompt, messages, answer, solution) of a good row, or why it is bad."""
    if isinstance(rec, Bad):
        return rec
    if not isinstance(rec, dict):
        return Bad(f"row is a {type(rec).__name__}, expected an object")
    messages = None
    if cfg.messages_key:
        chat = _chat_prompt(rec, cfg.messages_key)
        if isinstance(chat, Bad):
            return chat
        prompt, messages = chat
    else:
        prompt = _plain_prompt(rec, cfg.prompt_key)
        if isinstance(prompt, Bad):
            return prompt
    if not prompt or not prompt.strip():
        return Bad("empty prompt")
    answer = _answer(rec, cfg.answer_key)
    if isinstance(answer, Bad):
        return answer
    solution = _solution(rec, cfg.solution_key) if solutions else None
    if isinstance(solution, Bad):
        return solution
    return prompt, messages, answer, solution


def _unverifiable(answer: str, src: str, report: LoadReport) -> bool:
    """A gold answer goes through the completions' screen: one that could stall the verifier
    (a power tower, a 10^6-digit number) would score every sample of its group 0 after
    minutes of work. Named once, counted, and its prompt left out."""
    why = screen_answer(answer)
    if why is None:
        return False
    report.unverifiable.append(src)
    log.warning(
        "%s: gold answer %.40r cannot be verified safely (%s): prompt skipped", src, answer, why
    )
    return True


def _check(report: LoadReport, cfg: DataConfig) -> None:
    """Raises on bad rows unless they are to be skipped (then warns), and on no rows at all."""
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
    if not report.kept:
        raise DataError(f"{cfg.path}: no usable rows")


def load_dataset(cfg: DataConfig, solutions: bool = False) -> tuple[list[Example], LoadReport]:
    """All examples, validated; raises ``DataError`` listing bad rows unless ``skip_bad_rows``.
    ``solutions``: each row must also hold a worked solution (``solution_key``)."""
    report = LoadReport()
    examples: list[Example] = []
    keys = [cfg.messages_key] if cfg.messages_key else [cfg.prompt_key]
    keys += [cfg.answer_key] + ([cfg.solution_key] if solutions else [])
    for path in resolve_files(cfg.path):
        report.files.append(str(path))
        for row, rec in read_rows(path, keys):
            report.rows += rec.rows if isinstance(rec, Bad) else 1
            got = _validate(rec, cfg, solutions)
            if isinstance(got, Bad):
                report.skipped += got.rows
                report.reasons[got.reason.split(" (")[0]] += 1
                if len(report.errors) < _MAX_LISTED:
                    report.errors.append(f"{path}: row {row}: {got.reason}")
                continue
            prompt, messages, answer, solution = got
            src = f"{path}:{row}"
            if _unverifiable(answer, src, report):
                continue
            examples.append(Example(prompt, answer, len(examples), src, messages, solution))
    report.kept = len(examples)
    _check(report, cfg)
    return examples, report


def load_prompts(cfg: DataConfig) -> list[Example]:
    """The validated examples alone."""
    return load_dataset(cfg)[0]
