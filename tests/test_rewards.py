"""Verifier behaviour: extraction, fast path, options, statuses, timeouts and worker lifecycle."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from pte_ray.rl.answers import normalize_answer, parse_number, screen_answer
from pte_ray.rl.rewards import STATUSES, RewardConfig, Verifier, decide_fast, extract_answer

SLOW = "\\boxed{\\int e^{x^2}\\sin(x)\\cos(x^3)\\,dx}"  # passes screening, sympy runs for minutes


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("so \\boxed{5}", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the group
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{1} then \\boxed{2", "1"),  # unclosed last box: the previous closed one
        ("\\fbox{7}", "7"),
        ("\\boxed 5", "5"),
        ("\\boxed{ 12 }", "12"),
        ("\\boxed{\\boxed{3}}", "3"),  # the innermost box starts last
        ("#### 72", "72"),
        ("#### 1,000.", "1,000"),
        ("The answer is 42.", "42"),
        ("the answer is $\\frac{1}{2}$. Yes.", "\\frac{1}{2}"),
        ("Final answer: x = 3", "x = 3"),
        ("Final Answer: The final answer is $7$. I hope it is correct.", "7"),
        ("**Answer:** 9", "9"),
        ("so 3 plus 4 makes 7 apples", "7"),
        ("values 1,2,3", "3"),
        ("it is -2.5 today", "-2.5"),
        ("ratio 3/4", "3/4"),
        ("up 12% overall", "12%"),
        ("no digits here", None),
        ("\\boxed{}", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None):
    assert extract_answer(completion) == expected


def test_extract_priorities_and_fallback_switch():
    assert extract_answer("#### 4\nThe answer is 5. \\boxed{6}") == "6"
    assert extract_answer("The answer is 5.\n#### 4") == "4"
    assert extract_answer("I think 5 is it", last_number_fallback=False) is None
    assert extract_answer("The answer is 5", last_number_fallback=False) == "5"


def test_answers_come_from_the_completion_only():
    prompt = "Compute 2+3. Put the answer in \\boxed{}. Example: \\boxed{5}"
    with Verifier(RewardConfig(last_number_fallback=False)) as v:
        assert v.score("I am not sure.", "5") == (0.0, "no_answer")
        assert v.score(prompt + " I am not sure.", "5") == (1.0, "ok")  # a prompt would leak


def test_normalisation_and_numbers():
    assert normalize_answer("\\$1,000.") == "1,000"
    assert normalize_answer("x = \\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("30^{\\circ}") == "30"
    assert normalize_answer("5x") == "5x"  # a variable is not a unit
    assert normalize_answer("2 1/2") == "\\frac{5}{2}"
    assert parse_number("1,000") is not None and parse_number("1,00") is None
    assert parse_number("9" * 400) is None  # capped before int()
    assert decide_fast("18", "18.0") == "ok"
    assert decide_fast("1/3", "0.3333333") == "ok" and decide_fast("1/3", "0.33") == "mismatch"
    assert decide_fast("(x+1)^2", "x^2+2x+1") is None  # needs the symbolic worker


@pytest.mark.parametrize(
    "ans,reason",
    [
        ("9^9^9", "power tower"),
        ("x^{10^{10}}", "power tower"),
        ("2^{123456}", "exponent too large"),
        ("(10!)!", "factorial too large"),
        ("1" * 301, "number too long"),
        ("(" * 41 + ")" * 41, "nesting too deep"),
        ("x" * 1001, "too long"),
    ],
)
def test_screen_rejects(ans: str, reason: str):
    assert screen_answer(ans) == reason


@pytest.mark.parametrize("ans", ["e^{x^2}", "2^{2024}", "5!", "(x+1)^2-(x-1)^2", "\\sqrt[3]{2}"])
def test_screen_accepts(ans: str):
    assert screen_answer(ans) is None


def test_options_percent_and_format_bonus():
    with Verifier(RewardConfig(percent_as_fraction=False)) as v:
        assert v.score("\\boxed{50\\%}", "0.5") == (0.0, "mismatch")
        assert v.score("\\boxed{50\\%}", "50") == (1.0, "ok")
    with Verifier(RewardConfig(format_bonus=0.1)) as v:
        assert v.score("\\boxed{4}", "5") == (pytest.approx(0.1), "mismatch")
        assert v.score("\\boxed{5}", "5") == (pytest.approx(1.1), "ok")
        assert v.score("#### 5", "5") == (1.0, "ok")
        assert v.score("\\boxed{5", "5") == (1.0, "ok")  # unclosed: no bonus (last number)


def test_batch_counts_and_statuses():
    with Verifier(RewardConfig()) as v:
        got = v.score_batch(
            ["\\boxed{5}", "\\boxed{6}", "nothing", "\\boxed{9^{9^{9}}}", "x" * 300_000],
            ["5", "5", "5", "5", "5"],
        )
        assert [s for _, s in got] == ["ok", "mismatch", "no_answer", "parse_error", "parse_error"]
        counts = v.take_counts()
        assert set(counts) == set(STATUSES)
        assert counts == {"ok": 1, "no_answer": 1, "parse_error": 2, "timeout": 0, "mismatch": 1}
        assert v.take_counts()["ok"] == 0
        with pytest.raises(ValueError):
            v.score_batch(["a"], [])
        assert v._pool is None  # nothing needed sympy: no process was started


def test_huge_inputs_are_fast():
    with Verifier(RewardConfig()) as v:
        for text in ["9" * 1_000_000, "\\boxed{" + "9" * 1_000_000 + "}", "\\boxed{" * 25_000]:
            t0 = time.perf_counter()
            _, status = v.score(text, "3")
            assert time.perf_counter() - t0 < 1.0
            assert status in ("parse_error", "no_answer")


def test_timeout_kills_and_replaces_worker_and_caches_verdict():
    with Verifier(RewardConfig(timeout_s=0.5, workers=1)) as v:
        assert v.score("\\boxed{\\sqrt{4}}", "2") == (1.0, "ok")  # worker started
        pid = v._pool.workers[0].proc.pid
        t0 = time.perf_counter()
        assert v.score(SLOW, "3") == (0.0, "timeout")
        assert time.perf_counter() - t0 < 2.0
        assert v.workers_replaced == 1
        old = v._pool.workers[0]
        assert old.proc.pid != pid
        t0 = time.perf_counter()
        assert v.score(SLOW, "3") == (0.0, "timeout")  # cached: no second wait
        assert time.perf_counter() - t0 < 0.1
        assert v.score("\\boxed{\\frac{x^2-1}{x-1}}", "x+1") == (1.0, "ok")


def test_replaced_worker_is_warm_before_it_takes_an_item():
    """A fresh worker's first symbolic check costs ~2 s on a cold machine (lazy parser and sympy
    set-up), as long as the default timeout: a cold replacement would score a right answer 0."""
    with Verifier(RewardConfig()) as v:  # the default timeout, as in training
        v.warm_up()
        first = v._pool.workers[0]
        assert first.ready and first.warmup_s > 0  # it ran the known pairs before serving
        first.proc.kill()  # a crash, or the OOM killer
        first.proc.wait()
        # a pair no warm-up or cache has seen: the replacement parses and simplifies it
        assert v.score("\\boxed{\\frac{y^2-9}{y+3}}", "y-3") == (1.0, "ok")
        assert v.workers_replaced == 1 and v._pool.workers[0].warmup_s > 0
        assert v.score(SLOW, "3") == (0.0, "timeout")  # killed and replaced once more
        assert v.score("\\boxed{\\frac{t^3-t}{t}}", "t^2-1") == (1.0, "ok")
        assert v.workers_replaced == 2


def test_batch_with_two_workers_one_timeout():
    with Verifier(RewardConfig(timeout_s=0.75, workers=2)) as v:
        comps = [SLOW, "\\boxed{(x+1)^2}", "\\boxed{x^2+1}", "\\boxed{\\sqrt{8}}"]
        golds = ["3", "x^2+2x+1", "(x+1)^2", "2\\sqrt{2}"]
        assert [s for _, s in v.score_batch(comps, golds)] == ["timeout", "ok", "mismatch", "ok"]
        assert v.workers_replaced == 1


def test_dead_idle_worker_is_replaced():
    with Verifier(RewardConfig()) as v:
        assert v.score("\\boxed{\\sqrt{9}}", "3") == (1.0, "ok")
        v._pool.workers[0].proc.kill()  # e.g. the OOM killer
        v._pool.workers[0].proc.wait()
        assert v.score("\\boxed{\\sqrt{25}}", "5") == (1.0, "ok")
        assert v.workers_replaced == 1


def test_close_kills_workers_and_lazily_restarts():
    v = Verifier(RewardConfig())
    assert v._pool is None
    assert v.score("\\boxed{\\sqrt{9}}", "3") == (1.0, "ok")
    procs = [w.proc for w in v._pool.workers]
    v.close()
    assert all(p.poll() is not None for p in procs)
    assert v.score("\\boxed{\\sqrt{16}}", "4") == (1.0, "ok")  # a new pool on demand
    v.close()


def test_pickle_and_non_main_thread():
    """Ray moves configs, not processes; sympy must run without signal.alarm off the main thread."""
    v = pickle.loads(pickle.dumps(Verifier(RewardConfig(timeout_s=5.0))))
    out: list = []
    t = threading.Thread(target=lambda: out.append(v.score("\\boxed{2\\sqrt{2}}", "\\sqrt{8}")))
    t.start()
    t.join(60)
    v.close()
    assert out == [(1.0, "ok")]
