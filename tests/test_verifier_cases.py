"""Labelled answer pairs (MATH / GSM8K / AIME kinds) and hostile inputs, all asserted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pte_ray.rl.rewards import RewardConfig, Verifier


def B(x: str) -> str:
    return f"We simplify and check the constraints.\nTherefore the answer is $\\boxed{{{x}}}$."


Y, N = True, False

# (completion, gold, equivalent?)
GSM8K = [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72", Y),
    ("She earns 12 * 5 = 60.\n#### 60", "60", Y),
    ("#### 1,000", "1000", Y),
    ("#### 1000", "1,000", Y),
    ("#### $18", "18", Y),
    ("#### 18.00", "18", Y),
    ("#### 5", "6", N),
    ("#### 71", "72", N),
    ("#### 1,001", "1000", N),
    ("The answer is 42.", "42", Y),
    ("The answer is 42. I hope it is correct.", "42", Y),
    ("So the answer is: 3.5", "3.5", Y),
    ("The final answer is 7", "7", Y),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42", Y),
    ("**Answer:** 42", "42", Y),
    ("Answer: 15 dollars", "15", Y),
    ("The answer is $15.", "15", Y),
    ("The answer is 14.", "15", N),
    ("Final answer: 2,500", "2500", Y),
    ("Final answer: 250", "2500", N),
    ("She has 3 apples and buys 4 more, so she has 7 apples.", "7", Y),
    ("He pays 20 dollars for 2 books so each costs 10", "10", Y),
    ("After 3 days, the tank holds 1,250 liters.", "1250", Y),
    ("After 3 days, the tank holds 1,250 liters.", "125", N),
    ("The total is 5 + 6 = 11", "11", Y),
    ("The total is 5 + 6 = 11", "12", N),
    ("It costs $0.75 each.", "0.75", Y),
    ("It costs -4 degrees.", "-4", Y),
    ("so the result is 1/2", "0.5", Y),
    ("\\boxed{18}", "18", Y),
    ("\\boxed{\\$18}", "18", Y),
    ("\\boxed{18 \\text{ dollars}}", "18", Y),
    ("\\boxed{18\\text{ dollars}}", "18", Y),
    ("\\boxed{18.0}", "18", Y),
    ("\\boxed{17}", "18", N),
    ("\\boxed{-3}", "-3", Y),
    ("\\boxed{3}", "-3", N),
    ("\\boxed{+3}", "3", Y),
    ("\\boxed{7 \\text{ apples}}", "7", Y),
    ("\\boxed{40 \\text{ minutes}}", "40", Y),
    ("\\boxed{40 \\text{ minutes}}", "45", N),
    ("\\boxed{1{,}234}", "1234", Y),
    ("\\boxed{1\\,234}", "1234", Y),
    ("\\boxed{1,234,567}", "1234567", Y),
    ("\\boxed{1,234,568}", "1234567", N),
    ("\\boxed{0.25}", "0.25", Y),
    ("\\boxed{0.250}", "0.25", Y),
    ("\\boxed{.25}", "0.25", Y),
    ("\\boxed{0.26}", "0.25", N),
    ("\\boxed{2.5}", "5/2", Y),
    ("#### 0", "10", N),
    ("The answer is 100.", "1000", N),
    ("\\boxed{18.01}", "18", N),
    ("#### 1.5", "15", N),
]

NUMBERS = [
    (B("\\frac{1}{2}"), "0.5", Y),
    (B("0.5"), "\\frac{1}{2}", Y),
    (B("\\dfrac{1}{2}"), "\\frac12", Y),
    (B("\\tfrac{3}{4}"), "0.75", Y),
    (B("3/4"), "\\frac{3}{4}", Y),
    (B("\\frac{6}{8}"), "\\frac{3}{4}", Y),
    (B("\\frac{3}{4}"), "\\frac{4}{3}", N),
    (B("-\\frac{1}{2}"), "-0.5", Y),
    (B("\\frac{-1}{2}"), "-\\frac{1}{2}", Y),
    (B("\\frac{1}{2}"), "-\\frac{1}{2}", N),
    (B("2\\frac{1}{2}"), "\\frac{5}{2}", Y),
    (B("2 \\frac{1}{2}"), "2.5", Y),
    ("The answer is 2 1/2.", "\\frac52", Y),
    (B("\\frac{7}{3}"), "2\\frac{1}{3}", Y),
    (B("2\\frac{1}{3}"), "\\frac{5}{3}", N),
    (B("0.333333"), "\\frac{1}{3}", Y),
    (B("0.3333333333"), "\\frac{1}{3}", Y),
    (B("0.33"), "\\frac{1}{3}", N),
    (B("0.333"), "\\frac13", N),
    (B("1234567.5"), "1234567", N),
    (B("1.0"), "1", Y),
    (B("100"), "10^2", Y),
    (B("10^{3}"), "1000", Y),
    (B("1.5 \\times 10^{3}"), "1500", Y),
    (B("2^{10}"), "1024", Y),
    (B("2^{10}"), "1000", N),
    (B("3^4"), "81", Y),
    (B("\\frac{100}{3}"), "33\\frac{1}{3}", Y),
    (B("0"), "0", Y),
    (B("-0"), "0", Y),
    (B("0.0"), "0", Y),
    (B("1"), "0", N),
    (B("1000000"), "10^6", Y),
    (B("999999"), "10^6", N),
    (B("\\frac{22}{7}"), "\\pi", N),
    (B("3.14"), "\\pi", N),
    (B("3.14159265358979"), "\\pi", Y),
    (B("12\\%"), "12", Y),
    (B("12\\%"), "0.12", Y),
    (B("12\\%"), "13", N),
    (B("\\frac{1}{4}"), "0.2", N),
    (B("0.1"), "0.01", N),
    (B("-1"), "1", N),
    (B("1/3"), "0.3", N),
]

MATH = [
    (B("\\sqrt{8}"), "2\\sqrt{2}", Y),
    (B("2\\sqrt{2}"), "\\sqrt{8}", Y),
    (B("\\sqrt{8}"), "3\\sqrt{2}", N),
    (B("3\\sqrt{3}"), "\\sqrt{27}", Y),
    (B("\\sqrt{4}"), "2", Y),
    (B("\\sqrt{5}"), "2", N),
    (B("\\frac{\\sqrt{3}}{2}"), "\\frac{1}{2}\\sqrt{3}", Y),
    (B("\\frac{\\sqrt3}{2}"), "\\frac{\\sqrt{3}}{2}", Y),
    (B("\\frac{1}{\\sqrt{2}}"), "\\frac{\\sqrt{2}}{2}", Y),
    (B("\\sqrt{2}/2"), "\\frac{\\sqrt{2}}{2}", Y),
    (B("\\frac{\\sqrt{2}}{2}"), "0.70710678", Y),
    (B("\\frac{\\sqrt{2}}{2}"), "\\frac{\\sqrt{3}}{2}", N),
    (B("2\\pi"), "2 \\pi", Y),
    (B("2\\pi"), "6.283185", Y),
    (B("2\\pi"), "\\pi", N),
    (B("\\pi/2"), "\\frac{\\pi}{2}", Y),
    (B("\\frac{\\pi}{3}"), "\\frac{\\pi}{2}", N),
    (B("6\\pi"), "6 \\pi", Y),
    (B("\\frac{2\\pi}{3}"), "\\frac{2}{3}\\pi", Y),
    (B("4\\pi^2"), "4\\pi^{2}", Y),
    (B("\\sqrt{2}+1"), "1+\\sqrt{2}", Y),
    (B("\\sqrt{2}-1"), "1-\\sqrt{2}", N),
    (B("\\frac{1+\\sqrt{5}}{2}"), "\\frac{\\sqrt{5}+1}{2}", Y),
    (B("\\frac{1-\\sqrt{5}}{2}"), "\\frac{\\sqrt{5}+1}{2}", N),
    (B("\\sqrt[3]{8}"), "2", Y),
    (B("\\sqrt[3]{27}"), "2", N),
    (B("e^2"), "e^{2}", Y),
    (B("\\log_{10} 100"), "2", Y),
    (B("\\infty"), "\\infty", Y),
    (B("-\\infty"), "\\infty", N),
    (B("\\frac{5}{\\sqrt{5}}"), "\\sqrt{5}", Y),
    (B("\\frac{9}{4}"), "2.25", Y),
    (B("\\left(\\frac{1}{2}\\right)^2"), "\\frac{1}{4}", Y),
    (B("\\binom{5}{2}"), "10", Y),
    (B("\\binom{5}{2}"), "20", N),
    (B("5!"), "120", Y),
    (B("5!"), "24", N),
    (B("\\sin\\frac{\\pi}{6}"), "\\frac{1}{2}", Y),
    (B("\\cos 0"), "1", Y),
    (B("\\tan\\frac{\\pi}{4}"), "2", N),
    (B("\\frac{3+3i}{3}"), "1+i", Y),
    (B("(1+i)^2"), "2i", Y),
    (B("i^2"), "-1", Y),
    (B("3+2i"), "2i+3", Y),
    (B("3-2i"), "3+2i", N),
    (B("\\frac{3}{2}\\sqrt{2}"), "\\frac{3\\sqrt{2}}{2}", Y),
    (B("10\\sqrt{3}"), "\\sqrt{300}", Y),
    (B("\\sqrt{2}"), "1.41", N),
    (B("\\pi"), "3", N),
    (B("e"), "2.7", N),
]

DEGREES_UNITS_TEXT = [
    (B("30^\\circ"), "30", Y),
    (B("30^{\\circ}"), "30", Y),
    (B("30°"), "30", Y),
    (B("30"), "30^\\circ", Y),
    (B("30^\\circ"), "60", N),
    (B("10 \\text{ cm}"), "10", Y),
    (B("10\\text{ cm}^2"), "10", Y),
    (B("5 \\mbox{ inches}"), "5", Y),
    (B("4 \\text{hours}"), "4", Y),
    (B("10 \\text{ cm}"), "100", N),
    (B("12 \\text{ m}"), "12", Y),
    (B("\\text{Monday}"), "Monday", Y),
    (B("monday"), "\\text{Monday}", Y),
    (B("\\text{Tuesday}"), "Monday", N),
    (B("dynamo"), "\\text{Monday}", N),
    (B("\\text{even}"), "\\text{even}", Y),
    (B("\\text{odd}"), "\\text{even}", N),
    (B("\\text{(A)}"), "A", Y),
    (B("A"), "\\text{(A)}", Y),
    (B("(B)"), "B", Y),
    (B("B"), "A", N),
    (B("50\\%"), "50", Y),
    (B("50\\%"), "0.5", Y),
    (B("50\\%"), "0.05", N),
    (B("75\\%"), "\\frac{3}{4}", Y),
    (B("45^\\circ"), "30", N),
]

STRUCTURED = [
    (B("x = 3"), "3", Y),
    (B("x=3"), "3", Y),
    (B("3"), "x=3", Y),
    (B("x = 4"), "3", N),
    (B("k = -2"), "-2", Y),
    (B("y = 2x + 3"), "2x+3", Y),
    (B("2x+3"), "y=2x+3", Y),
    (B("y = 2x - 3"), "y=2x+3", N),
    (B("(1,2)"), "\\left(1, 2\\right)", Y),
    (B("(1, 2)"), "(2, 1)", N),
    (B("(3, -1)"), "(3,-1)", Y),
    (B("(3, -1)"), "(-1, 3)", N),
    (B("(\\frac{1}{2}, 3)"), "(0.5, 3)", Y),
    (B("[1, 2)"), "[1,2)", Y),
    (B("[1, 2]"), "(1, 2)", N),
    (B("[1, 2)"), "(1, 2]", N),
    (B("(-\\infty, 3]"), "(-\\infty,3]", Y),
    (B("(-\\infty, 3)"), "(-\\infty,3]", N),
    (B("(-\\infty, 0) \\cup (1, \\infty)"), "(-\\infty,0)\\cup(1,\\infty)", Y),
    (B("(-\\infty, 0) \\cup (2, \\infty)"), "(-\\infty,0)\\cup(1,\\infty)", N),
    (B("\\{1, 2, 3\\}"), "\\{3, 2, 1\\}", Y),
    (B("\\{1, 2\\}"), "\\{1, 2, 3\\}", N),
    (B("1, 2, 3"), "3, 2, 1", Y),
    (B("1, 2"), "1, 2, 3", N),
    (B("-2, 3"), "3, -2", Y),
    (B("x \\in [1, 2]"), "[1, 2]", Y),
    (B("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", Y),
    (B("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"), "\\begin{pmatrix}1\\\\2\\end{pmatrix}", N),
    (B("x = 2, y = 3"), "x=2,y=3", Y),
    (B("x > 2"), "x>2", Y),
    (B("x = 3"), "x=-3", N),
    (B("\\{1, 2\\}"), "\\{1, 3\\}", N),
]

SYMBOLIC = [
    (B("(x+1)^2"), "x^2+2x+1", Y),
    (B("x^2+2x+1"), "(x+1)^2", Y),
    (B("x^2+1"), "(x+1)^2", N),
    (B("(x-1)(x+1)"), "x^2-1", Y),
    (B("(x-1)^2"), "x^2-1", N),
    (B("2x+3"), "3+2x", Y),
    (B("2x"), "x^2", N),
    (B("\\frac{x^2-1}{x-1}"), "x+1", Y),
    (B("\\sin^2 x + \\cos^2 x"), "1", Y),
    (B("\\frac{1}{x}+\\frac{1}{y}"), "\\frac{x+y}{xy}", Y),
    (B("\\frac{1}{x}+\\frac{1}{y}"), "\\frac{1}{x+y}", N),
    (B("a^2 - b^2"), "(a-b)(a+b)", Y),
    (B("a^2 + b^2"), "(a+b)^2", N),
    (B("x^3"), "x \\cdot x^2", Y),
    (B("2^{n+1}"), "2 \\cdot 2^n", Y),
    (B("\\frac{n(n+1)}{2}"), "\\frac{n^2+n}{2}", Y),
    (B("\\frac{n(n-1)}{2}"), "\\frac{n^2+n}{2}", N),
    (B("e^{x^2}"), "e^{x \\cdot x}", Y),
    (B("3x^2 - 12x + 9"), "3(x-1)(x-3)", Y),
    (B("3x^2 - 12x + 9"), "3(x-1)(x+3)", N),
    (B("\\sqrt{x^2}"), "|x|", Y),
    (B("\\log_2 8"), "3", Y),
    (B("4\\sqrt{x}"), "\\sqrt{16x}", Y),
    (B("\\frac{a}{b}"), "a/b", Y),
    (B("\\frac{a}{b}"), "b/a", N),
    (B("x^2"), "x^3", N),
    (B("\\frac{x}{2}"), "2x", N),
    (B("\\sin x"), "\\cos x", N),
]

AIME = [
    (B("033"), "33", Y),
    (B("33"), "033", Y),
    (B("000"), "0", Y),
    (B("999"), "999", Y),
    (B("998"), "999", N),
    (B("204"), "204", Y),
    (B("402"), "204", N),
    ("The answer is 017.", "17", Y),
    ("#### 080", "80", Y),
    (B("80"), "8", N),
    ("Thus m+n = 5 + 12 = 17. The answer is \\boxed{17}.", "17", Y),
    ("So m + n = 29, hence \\boxed{029}", "29", Y),
    ("\\boxed{\\boxed{125}}", "125", Y),
    ("First \\boxed{12} was wrong; the correct value is \\boxed{13}.", "13", Y),
    ("First \\boxed{12} was wrong; the correct value is \\boxed{13}.", "12", N),
    (B("17"), "71", N),
    (B("0"), "100", N),
]

PAIRS = GSM8K + NUMBERS + MATH + DEGREES_UNITS_TEXT + STRUCTURED + SYMBOLIC + AIME


@pytest.fixture(scope="module")
def verifier():
    with Verifier(RewardConfig(timeout_s=20.0)) as v:  # generous: these must never time out
        yield v


def test_enough_cases():
    assert len(PAIRS) >= 200
    assert len(HOSTILE) >= 50
    assert sum(1 for *_, eq in PAIRS if eq) >= 100 and sum(1 for *_, eq in PAIRS if not eq) >= 80


@pytest.mark.parametrize("completion,gold,equivalent", PAIRS)
def test_labelled_pair(verifier: Verifier, completion: str, gold: str, equivalent: bool):
    reward, status = verifier.score(completion, gold)
    if equivalent:
        assert (reward, status) == (1.0, "ok")
    else:
        assert reward == 0.0 and status == "mismatch"


# ----------------------------------------------------------------------------- hostile inputs

PWNED = Path("/tmp/pte_ray_verifier_pwned")
_INJECT = [
    "__import__('os').system('touch /tmp/pte_ray_verifier_pwned')",
    "eval('1+1')",
    "exec('import os')",
    "lambda: 2",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "__builtins__",
    "globals()",
    "\\input{/etc/passwd}",
    "\\def\\x{\\x}\\x",
    "<script>alert(2)</script>",
    "'; DROP TABLE answers; --",
]
HOSTILE = (
    [B(s) for s in _INJECT]
    + ["The answer is " + s for s in _INJECT[:4]]
    + [
        B("9" * 1_000_000),
        B("9" * 5000),
        "#### " + "1" * 100_000,
        "The answer is " + "7" * 200_000,
        B("1." + "0" * 900 + "1"),
        B("9^9^9^9"),
        B("9^{9^{9^{9}}}"),
        B("10^{10^{10}}"),
        B("2^{2^{2^{2^{2}}}}"),
        B("x^{9^{9^{9}}}"),
        B("10^{1000000}"),
        B("9**9**9"),
        B("(10!)!"),
        B("100000!"),
        B("\\prod_{k=1}^{99999} k"),
        B("\\sum_{n=1}^{10^{9}} n"),
        B("{" * 10_000 + "1" + "}" * 10_000),
        B("(" * 10_000 + "1" + ")" * 10_000),
        B("\\frac{1}{" * 200 + "2" + "}" * 200),
        B("\\sqrt{" * 100 + "2" + "}" * 100),
        "a" * 1_000_000,
        "\\boxed{" * 100_000,
        "\\boxed{" * 20_000 + "1",
        "The answer is " + " " * 100_000 + "\n",
        "answer is " * 20_000,
        "1," * 100_000,
        B("\x00\x00"),
        B("\ud800"),
        B("\u202e5"),
        B("x+" * 400 + "x"),
        B("\\text{" + "a" * 2000 + "}"),
        B("1,000," * 300),
        B("\\frac{1}{0}"),
        B("0/0"),
        B("\\infty"),
        B("\\mathbb{R}"),
        B("1e999999"),
        B("\\begin{pmatrix}" + "1&" * 400 + "1\\end{pmatrix}"),
        B("x = y = z = " * 80),
        B("\\int e^{x^2}\\sin(x)\\cos(x^3)\\,dx"),  # screened through; sympy runs for minutes
        B("(x+1)^{999}-(x-1)^{999}"),  # seconds of expansion
    ]
)
TIMEOUT_S = 0.75


class HostileRun:
    """The module's one verifier and the hostile inputs it has scored, each checked once."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.scored: set[int] = set()

    def check(self, i: int) -> None:
        t0 = time.perf_counter()
        reward, status = self.verifier.score(HOSTILE[i], "3")
        elapsed = time.perf_counter() - t0
        self.scored.add(i)
        # a timed-out worker is replaced in the background; the next call may wait for its start-up
        assert elapsed < TIMEOUT_S + 5.0
        assert status in ("no_answer", "parse_error", "timeout", "mismatch")
        assert reward == 0.0
        assert not PWNED.exists()


@pytest.fixture(scope="module")
def hostile():
    PWNED.unlink(missing_ok=True)
    with Verifier(RewardConfig(timeout_s=TIMEOUT_S)) as v:
        v.score(B("\\sqrt{4}"), "2")  # start the worker outside the timed calls
        yield HostileRun(v)


@pytest.mark.parametrize("i", range(len(HOSTILE)))
def test_hostile_input(hostile: HostileRun, i: int):
    hostile.check(i)


def test_pool_still_works_after_hostile_inputs(hostile: HostileRun):
    # run alone (-k), it puts the whole battery through the verifier itself first
    for i in range(len(HOSTILE)):
        if i not in hostile.scored:
            hostile.check(i)
    v = hostile.verifier
    counts = v.take_counts()
    assert counts["timeout"] >= 1  # the integral really reached a worker and was killed
    assert v.workers_replaced >= 1
    assert v.score(B("\\frac{x^2-1}{x-1}"), "x+1") == (1.0, "ok")
    assert v.score(B("(x+1)^2"), "x^2+1") == (0.0, "mismatch")
    assert not PWNED.exists()
