"""Answer extraction, cheap normalisation, exact numeric comparison and hostile-input screening.

Everything here is pure string / ``fractions.Fraction`` work that runs in the caller's process at
tens of thousands of items per second; only answers that need symbolic algebra go on to the
killable worker process (``pte_ray.rl._verify_worker``). Nothing here evaluates model text.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

# Limits for what may reach sympy. Answers in MATH / GSM8K / AIME / DAPO are far below all of them.
MAX_ANSWER_CHARS = 1000
MAX_DIGIT_RUN = 300  # longest run of digits (a 10^6-digit number is rejected, not converted)
MAX_NESTING = 40  # bracket depth ({[( together)
MAX_EXPONENT_DIGITS = 4  # 2^{2024} is fine, 9^{99999} is not
MAX_CARETS = 8
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
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _balanced_group(text: str, open_pos: int) -> str | None:
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
            content = _balanced_group(text, j)
            if content is not None:
                return content.strip()
        elif j > m.end():  # "\boxed 5": TeX takes the next token
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group()
    return None


def _trim_marker_answer(s: str) -> str:
    s = s.strip().strip("*").strip()
    for left, right in _DELIMS:
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


# ----------------------------------------------------------------------------- normalisation

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(
    r"\\(?:left|right|displaystyle|textstyle|big|Big|bigg|Bigg)(?![A-Za-z])|"
    r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
# "cm", "sq. ft", "m^2", "g": words of 2+ letters or single-letter SI units (not x, i, n, e...).
_UNIT = r"(?:[A-Za-z]{2,}|[mgshlLKAVWJN])\.?(?: ?\^\{?[23]\}?)?"
_UNIT_TAIL_RE = re.compile(rf"^([^A-Za-z]*?\d\.?)\s+({_UNIT}(?:\s+{_UNIT})*)$")
_ASSIGN_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*(?!=)(.+)$")
_WORD_RE = re.compile(r"^[a-z][a-z ]{2,}$")
_MIXED_RE = re.compile(r"^(-?)(\d+)\s+(\d+)/(\d+)$|^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$|^(-?)\\frac(\d)(\d)$")
_PLAIN_RE = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+|\d*)(\.\d*)?(?:/(\d+))?$")


@lru_cache(maxsize=65536)
def normalize_answer(ans: str) -> str:
    """Canonical string of an answer for exact matching and cache keys (meaning-preserving)."""
    s = ans.strip()
    for left, right in _DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",").replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    for _ in range(3):
        s2 = _TEXT_CMD_RE.sub(r" \1 ", s)
        if s2 == s:
            break
        s = s2
    s = " ".join(s.split()).strip().rstrip(".").strip()
    m = _ASSIGN_RE.match(s)
    if m and "=" not in m.group(1):
        s = m.group(1).strip()
    m = _UNIT_TAIL_RE.match(s) if len(s) < 100 else None
    if m and parse_number(m.group(1)) is not None:
        s = m.group(1)
    mixed = _MIXED_RE.match(s)
    if mixed:  # "2 1/2" means 5/2; removing the space below would make it 21/2
        sign, whole, num, den = (g for g in mixed.groups() if g is not None)
        s = f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"
    s = s.replace(" ", "")
    if s.startswith("+"):
        s = s[1:]
    return s


def is_word_answer(norm: str) -> bool:
    """Text answers ("Monday", "east") are compared as words, never as products of symbols."""
    return bool(_WORD_RE.match(norm.lower())) and len(norm) >= 3


@lru_cache(maxsize=65536)
def parse_number(s: str) -> tuple[Fraction, bool, bool] | None:
    """``(value, is_percent, is_inexact)`` for a plain number, fraction or percent; else None.

    Handles ``1,000``, ``-3.50``, ``.5``, ``7/8``, ``\\frac{7}{8}``, ``\\frac78``, ``-\\frac{1}{2}``
    and ``12%``. Digit runs are capped before any int conversion.
    """
    s = s.strip().replace(" ", "")
    pct = s.endswith("%")
    if pct:
        s = s[:-1]
    if not s or _longest_digit_run(s) > MAX_DIGIT_RUN:
        return None
    m = _FRAC_RE.match(s)
    if m:
        sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.group(2) else m.group(4, 5, 6)
        try:
            val = Fraction(num) / Fraction(den)
        except (ValueError, ZeroDivisionError):
            return None
        return (-val if sign else val), pct, "." in num + den
    m = _PLAIN_RE.match(s)
    if not m or not (m.group(2) or (m.group(3) and len(m.group(3)) > 1)):
        return None
    sign, whole, frac, den = m.groups()
    if den is not None and frac:
        return None
    val = Fraction(int(whole.replace(",", "") or 0))
    if frac and len(frac) > 1:
        val += Fraction(int(frac[1:]), 10 ** (len(frac) - 1))
    if den is not None:
        if int(den) == 0:
            return None
        val /= int(den)
    return (-val if sign == "-" else val), pct, bool(frac)


def _values(num: tuple[Fraction, bool, bool], percent_as_fraction: bool) -> list[Fraction]:
    val, pct, _ = num
    return [val, val / 100] if pct and percent_as_fraction else [val]


def numbers_equal(
    pred: tuple[Fraction, bool, bool], gold: tuple[Fraction, bool, bool], percent_as_fraction: bool
) -> bool:
    """Exact for integers and fractions; decimals must agree to ~6 places (as graders round)."""
    inexact = pred[2] or gold[2]
    for p in _values(pred, percent_as_fraction):
        for g in _values(gold, percent_as_fraction):
            if p == g:
                return True
            if inexact and abs(p - g) <= max(Fraction(1, 10**6), abs(g) / 10**9):
                return True
    return False


# ----------------------------------------------------------------------------- screening


_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")


def _longest_digit_run(s: str) -> int:
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
            group = _balanced_group(s, j)
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
    if _longest_digit_run(ans) > MAX_DIGIT_RUN:
        return "number too long"
    if _max_nesting(ans) > MAX_NESTING:
        return "nesting too deep"
    if ans.count("^") + ans.count("**") > MAX_CARETS:
        return "too many exponents"
    for op, after in _exponent_operands(ans):
        nested = ("^" in op or "**" in op) and not re.search(r"[A-Za-z]", _LATEX_CMD_RE.sub("", op))
        if nested or after.startswith(("^", "**")):  # numeric tower; e^{x^2} is fine
            return "power tower"
        if _longest_digit_run(op) > MAX_EXPONENT_DIGITS:
            return "exponent too large"
    bangs = ans.replace("\\!", "").count("!")
    if bangs > 1 or re.search(r"\d{4,}\s*!|[)}\]]\s*!", ans):
        return "factorial too large"
    return None
