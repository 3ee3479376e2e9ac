"""What a prompt dataset is read as: which columns (``DataConfig``) and what a good row becomes.

Kept apart from reading and rendering so that every stage (load, render, stream) and its callers
share one definition of a row, and a bad row has one error type naming its file and row.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


@dataclass
class Example:
    prompt: str  # the user turn (for chat rows: the last user message)
    answer: str
    index: int  # position in the loaded dataset
    source: str  # "file:row", 1-based row
    messages: list[dict[str, str]] | None = None
