"""Symbolic equivalence check that runs in a disposable worker process.

Only answers the parent could not settle with exact string / numeric comparison come here, after
``answers.screen_answer`` has rejected the obviously dangerous ones. Parsing is LaTeX only:
``latex2sympy2_extended`` builds sympy trees from an ANTLR parse and never runs Python. We do not
use math-verify's ``ExprExtractionConfig``, whose plain-expression path calls sympy's
``parse_expr`` (Python ``eval`` semantics) on the model's text. math-verify's own timeouts use
``signal.alarm``, which cannot work in a Ray actor's non-main threads, so they are switched off
here and the parent enforces a wall-clock deadline by killing this process instead.
This file is run by path and imports nothing from ``pte_ray``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import sympy
from latex2sympy2_extended.latex2sympy2 import latex2sympy
from latex2sympy2_extended.math_normalization import NormalizationConfig, normalize_latex
from math_verify import verify
from math_verify.grader import should_treat_as_complex
from math_verify.parser import get_last_eq

logging.getLogger("math_verify").setLevel(logging.ERROR)

_NORM = NormalizationConfig(
    basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
)


def _parse(ans: str, is_real: bool):  # -> sympy object | None
    """LaTeX -> sympy; both sides of a pair share ``is_real`` so "i" means the same in each."""
    try:
        latex = normalize_latex(ans, _NORM)
        try:
            expr = latex2sympy(latex, is_real=is_real, normalization_config=None)
        except Exception:
            last = get_last_eq(latex)  # "a = b = 3" -> "3", as math-verify does
            if last == latex:
                raise
            expr = latex2sympy(last, is_real=is_real, normalization_config=None)
        if not is_real:  # complex context: the symbol i is the imaginary unit
            expr = expr.xreplace({s: sympy.I for s in expr.free_symbols if s.name == "i"})
        return expr
    except Exception:  # any parser failure is a parse_error, never a crash
        return None


def _strip_pct(s: str) -> str:
    return s.replace("\\%", "").replace("%", "")


def check(pred: str, gold: str, percent_as_fraction: bool) -> str:
    """ "ok", "mismatch" or "parse_error" for one (prediction, gold) pair."""
    variants = [(pred, gold)]
    if "%" in pred or "%" in gold:
        stripped = (_strip_pct(pred), _strip_pct(gold))
        variants = [(pred, gold), stripped] if percent_as_fraction else [stripped]
    parsed = False
    for p_str, g_str in variants:
        is_real = not (should_treat_as_complex(p_str) or should_treat_as_complex(g_str))
        p = _parse(p_str, is_real)
        if p is None:
            continue
        parsed = True
        g = _parse(g_str, is_real)
        if g is not None and verify(g, p, timeout_seconds=None, raise_on_error=False):
            return "ok"
    return "mismatch" if parsed else "parse_error"


# Pairs with known verdicts, run before the worker says it is ready. The first symbolic check in
# a new process pays for lazy imports and parser set-up (~2 s on a cold 2-core machine, as long as
# the default item timeout), so a cold worker would score a correct answer "timeout". Running these
# first keeps start-up out of every item's deadline, and a wrong verdict here (a broken install)
# is reported at start instead of silently scoring every answer 0.
WARMUP = (
    ("\\frac{x^2-1}{x-1}", "x+1", "ok"),
    ("(x+1)^2", "x^2+2x+1", "ok"),
    ("2\\sqrt{2}", "\\sqrt{8}", "ok"),
    ("\\{1,2\\}", "\\{2,1\\}", "ok"),
    ("1+3i", "3i+1", "ok"),
    ("50\\%", "\\frac{1}{2}", "ok"),
    ("x^2+1", "(x+1)^2", "mismatch"),
)


def warm_up() -> dict[str, object]:
    """Runs ``WARMUP``; the ready message carries its time and any pair that went wrong."""
    t0 = time.perf_counter()
    wrong = []
    for pred, gold, want in WARMUP:
        got = check(pred, gold, True)
        if got != want:
            wrong.append(f"{pred} vs {gold}: {got}, expected {want}")
    return {"warmup_s": round(time.perf_counter() - t0, 4), "warmup_wrong": wrong}


def _exit_with_parent(parent: int) -> None:
    """Die when the parent does, even mid-computation (stdin EOF is only seen between items)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def main() -> None:
    """Answer JSON-line requests ``{"k", "p", "g", "pct"}`` on stdin until it closes.

    Started as a plain ``python`` subprocess (not multiprocessing): spawn/forkserver re-import
    the parent's ``__main__``, which breaks under scripts without a main guard and Ray workers.
    argv[2] is the address-space limit in MiB (0: none).
    """
    mem_limit_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if mem_limit_mb > 0:
        try:
            import resource

            limit = mem_limit_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not Linux, or a lower hard limit
            pass
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from any library must not corrupt the protocol
    out.write(json.dumps({"ready": os.getpid(), **warm_up()}) + "\n")
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            status = check(req["p"], req["g"], req["pct"])
        except MemoryError:
            out.write(json.dumps({"k": req["k"], "s": "parse_error"}) + "\n")
            return  # state after a failed huge allocation is not worth trusting
        except Exception:
            status = "parse_error"
        out.write(json.dumps({"k": req["k"], "s": status}) + "\n")


if __name__ == "__main__":
    main()
