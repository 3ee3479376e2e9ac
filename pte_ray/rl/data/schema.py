"""What a prompt dataset is read as: which columns (``DataConfig``) and what a good row becomes.

Kept apart from reading and rendering so that every stage (load, render, stream) and its callers
share one definition of a row, and a bad row has one error type naming its file and row.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class DataColumns(BaseModel):
    """How rows are read and rendered: declared once, shared by ``DataConfig`` and the run
    config's ``data`` section (which names the file ``data.train``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_key: str = Field("prompt", description="column holding the prompt text")
    answer_key: str = Field("answer", description="column holding the gold answer")
    solution_key: str = Field(
        "solution", description="column holding a worked solution (SFT targets; read then only)"
    )
    messages_key: str | None = Field(
        None, description="column of chat messages ({role, content}) instead of a prompt"
    )
    system_prompt: str | None = Field(None, description="system message before every prompt")
    instruction: str | None = Field(
        None, description="appended to the user turn; boxed = 'put it in \\boxed{}'"
    )
    apply_chat_template: bool = Field(False, description="render with the chat template")
    skip_bad_rows: bool = Field(False, description="drop bad rows with a warning, not fail")


class DataConfig(DataColumns):
    """One dataset to load: its path and how its rows are read."""

    path: str = Field(description="JSONL / JSON / Parquet file or a directory of Parquet shards")


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


@dataclass
class Example:
    prompt: str  # the user turn (for chat rows: the last user message)
    answer: str
    index: int  # position in the loaded dataset
    source: str  # "file:row", 1-based row
    messages: list[dict[str, str]] | None = None
    solution: str | None = None  # read only for the SFT stage (sft.source=solutions)
