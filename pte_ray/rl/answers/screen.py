"""Screen answers before they reach sympy: reject what could run for minutes or take gigabytes.

The symbolic check runs in a worker with a hard timeout, but a killed worker costs a restart and
its warm-up; these limits, far above any answer in MATH / GSM8K / AIME / DAPO, keep hostile text
from getting that far. Nothing here evaluates model text.
"""

from __future__ import annotations

import re

from pte_ray.rl.answers.extract import balanced_group

# Limits for what may reach sympy. Answers in MATH / GSM8K / AIME / DAPO are far below all of them.
MAX_ANSWER_CHARS = 1000
MAX_DIGIT_RUN = 300  # longest run of digits (a 10^6-digit number is rejected, not converted)
MAX_NESTING = 40  # bracket depth ({[( together)
MAX_EXPONENT_DIGITS = 4  # 2^{2024} is fine, 9^{99999} is not
MAX_CARETS = 8

_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")


def longest_digit_run(s: str) -> int:
    runs = re.findall(r"\d+", s)
    return max(map(len, runs)) if runs else 0


def _max_nesting(s: str) -> int:
    depth = best = 0
    for ch in re.findall(r"[{}()\[\]]", s):
        depth = depth + 1 if ch in "{([" else max(depth - 1, 0)
        best = max(best, depth)
    return best


def _exponent_operands(s: str) -> list[tuple[str, str]]:
    """(operand, text right after it) for every ``^`` / ``**``."""
    out = []
    for m in re.finditer(r"\^|\*\*", s):
        j = m.end()
        while j < len(s) and s[j] == " ":
            j += 1
        if j < len(s) and s[j] == "{":
            group = balanced_group(s, j)
            op = group if group is not None else s[j:]
            end = j + len(op) + 2
        else:
            tok = re.match(r"\\[A-Za-z]+|-?\d+|.", s[j:])
            op = tok.group() if tok else ""
            end = j + len(op)
        out.append((op, s[end : end + 8].lstrip()))
    return out


def screen_answer(ans: str) -> str | None:
    """Why an answer is too dangerous to hand to sympy, or None if it may go.

    Rejects what could make sympy run for minutes or allocate gigabytes: huge text, huge
    integers, deep nesting, power towers (``9^9^9``, ``10^{10^{10}}``), large exponents and
    factorials. The worker's hard timeout remains the backstop for anything not caught here.
    """
    if len(ans) > MAX_ANSWER_CHARS:
        return "too long"
    if "\x00" in ans:
        return "control characters"
    if longest_digit_run(ans) > MAX_DIGIT_RUN:
        return "number too long"
    if _max_nesting(ans) > MAX_NESTING:
        return "nesting too deep"
    if ans.count("^") + ans.count("**") > MAX_CARETS:
        return "too many exponents"
    for op, after in _exponent_operands(ans):
        nested = ("^" in op or "**" in op) and not re.search(r"[A-Za-z]", _LATEX_CMD_RE.sub("", op))
        if nested or after.startswith(("^", "**")):  # numeric tower; e^{x^2} is fine
            return "power tower"
        if longest_digit_run(op) > MAX_EXPONENT_DIGITS:
            return "exponent too large"
    bangs = ans.replace("\\!", "").count("!")
    if bangs > 1 or re.search(r"\d{4,}\s*!|[)}\]]\s*!", ans):
        return "factorial too large"
    return None
