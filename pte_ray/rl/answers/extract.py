"""Find the final answer in a completion: boxed, ``#### x``, "the answer is x", or a last number.

Model output is hostile input, so this is pure string work that never evaluates model text and
bounds its effort on adversarial text (``MAX_BOX_CANDIDATES``); comparing the answer found is
the business of ``normalize`` and, for what that cannot settle, the symbolic worker.
"""

from __future__ import annotations

import re

MAX_BOX_CANDIDATES = 8  # unclosed \boxed{ tried from the end; bounds work on hostile text

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"\\[{}]|[{}]")
_HASH_RE = re.compile(r"####[ \t]*([^\n]+)")
_MARKER_RE = re.compile(
    r"(?:final\s+answer\s*(?:is|:|=)?|\banswer\s*(?:is|:|=))[ \t]*(?::[ \t]*)?([^\n]+)",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:\\?%)?|(?<![\w.])-?\.\d+"
)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|;|\bI hope\b")
DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def balanced_group(text: str, open_pos: int) -> str | None:
    """Content of the ``{...}`` group opening at ``open_pos`` (``\\{``/``\\}`` are literals)."""
    depth = 0
    for m in _BRACE_RE.finditer(text, open_pos):
        tok = m.group()
        if len(tok) == 2:  # escaped brace, e.g. a set \{1,2\}
            continue
        depth += 1 if tok == "{" else -1
        if depth == 0:
            return text[open_pos + 1 : m.start()]
    return None


def extract_boxed(text: str) -> str | None:
    """Last *closed* ``\\boxed{...}`` / ``\\fbox{...}`` (nesting-aware), or ``\\boxed 5``."""
    ends = [m for m in _BOX_RE.finditer(text)][-MAX_BOX_CANDIDATES:]
    for m in reversed(ends):
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            content = balanced_group(text, j)
            if content is not None:
                return content.strip()
        elif j > m.end():  # "\boxed 5": TeX takes the next token
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group()
    return None


def _trim_marker_answer(s: str) -> str:
    s = s.strip().strip("*").strip()
    for left, right in DELIMS:
        if s.startswith(left):
            end = s.find(right, len(left))
            if end > 0:
                return s[len(left) : end].strip()
    m = _SENTENCE_END_RE.search(s)
    if m:
        s = s[: m.start()]
    return s.strip().rstrip(".,!").strip("*").strip()


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final binding
        pass
    return last


def extract_answer(completion: str, last_number_fallback: bool = True) -> str | None:
    """Final answer of a completion (pass the generated text only, never the prompt).

    Priority: last closed ``\\boxed``/``\\fbox``; last ``#### x``; the last "final answer: x" /
    "the answer is x"; then, if enabled, the last number in the text.
    """
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed or None
    hashes = _HASH_RE.findall(completion)
    if hashes:
        ans = hashes[-1].strip().rstrip(".").strip()
        if ans:
            return ans
    marker = _last_match(_MARKER_RE, completion)
    for _ in range(3):  # "Final Answer: The final answer is $42$." -> the inner one
        inner = _last_match(_MARKER_RE, marker.group(1)) if marker is not None else None
        if inner is None:
            break
        marker = inner
    if marker is not None:
        ans = _trim_marker_answer(marker.group(1))
        if ans:
            return ans
    if last_number_fallback:
        tail = completion[-4000:]
        for text in (tail, completion) if len(completion) > 4000 else (tail,):
            last = _last_match(_NUMBER_RE, text)
            if last is not None:
                return last.group()
    return None


def has_closed_box(completion: str) -> bool:
    return extract_boxed(completion) is not None
