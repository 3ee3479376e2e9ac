"""The text a model is given for an example, and which prompts fit the cache at all.

Rendering lives in one place so that training, length filtering and evaluation give the model
the same text; a prompt that does not fit is dropped and reported, never truncated, because a
cut-off question has a different answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pte_ray.rl.data.schema import DataConfig, Example

log = logging.getLogger(__name__)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


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
