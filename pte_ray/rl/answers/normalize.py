"""Cheap normalisation and exact numeric comparison of answers, in the caller's process.

Most (prediction, gold) pairs are settled here with string and ``fractions.Fraction`` work at
tens of thousands per second; only the rest needs symbolic algebra in the killable worker process
(``pte_ray.rl._verify_worker``). Every rewrite preserves meaning, so a match here is a match.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

from pte_ray.rl.answers.extract import DELIMS
from pte_ray.rl.answers.screen import MAX_DIGIT_RUN, longest_digit_run

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
    for left, right in DELIMS:
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
    if not s or longest_digit_run(s) > MAX_DIGIT_RUN:
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
