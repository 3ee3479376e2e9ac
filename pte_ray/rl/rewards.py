"""Math answer rewards: a fast in-process path plus a pool of killable symbolic-check workers.

Model output is hostile input. The parent extracts the answer, screens it, and settles most
pairs with exact string / ``Fraction`` comparison (tens of thousands per second). Only the rest
goes to worker processes running math-verify on LaTeX (``_verify_worker``); each item there has a
hard wall-clock deadline, and a worker that overruns is SIGKILLed and replaced. Threads and
``signal.alarm`` cannot interrupt sympy inside a Ray actor, a separate process can. Workers are
plain ``python`` subprocesses rather than multiprocessing children: spawn/forkserver re-import
the parent's ``__main__`` (fatal for unguarded scripts), and fork is unsafe in threaded actors.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pte_ray.rl.answers import (
    MAX_ANSWER_CHARS,
    extract_answer,
    has_closed_box,
    is_word_answer,
    normalize_answer,
    numbers_equal,
    parse_number,
    screen_answer,
)

__all__ = ["STATUSES", "RewardConfig", "Verifier", "clear_caches", "decide_fast", "extract_answer"]

STATUSES = ("ok", "no_answer", "parse_error", "timeout", "mismatch")


@dataclass
class RewardConfig:
    timeout_s: float = 2.0  # per item that reaches a worker process
    last_number_fallback: bool = True
    percent_as_fraction: bool = True  # "50%" also equals 0.5 (it always equals 50)
    format_bonus: float = 0.0  # added when the completion has a closed \boxed{}, right or wrong
    workers: int = 1
    max_completion_chars: int = 200_000  # longer completions score parse_error unread
    mem_limit_mb: int = 2048  # RLIMIT_AS of each worker process (Linux)
    cache_size: int = 16384  # worker verdicts kept per Verifier, oldest dropped first
    start_timeout_s: float = 60.0  # a worker that cannot start in this long is a setup error


@lru_cache(maxsize=16384)
def _decide_cached(pred: str, gold: str, percent_as_fraction: bool) -> str | None:
    pn, gn = normalize_answer(pred), normalize_answer(gold)
    if pn and pn == gn:
        return "ok"
    pnum, gnum = parse_number(pn), parse_number(gn)
    if pnum is not None and gnum is not None:
        return "ok" if numbers_equal(pnum, gnum, percent_as_fraction) else "mismatch"
    if is_word_answer(gn) or is_word_answer(pn):
        return "ok" if pn.lower() == gn.lower() else "mismatch"
    if screen_answer(pred) is not None:
        return "parse_error"
    return None


def decide_fast(pred: str, gold: str, percent_as_fraction: bool = True) -> str | None:
    """Status decided without sympy, or None when the pair needs the symbolic worker."""
    if len(pred) > MAX_ANSWER_CHARS:
        return "parse_error"
    try:
        return _decide_cached(pred, gold, percent_as_fraction)
    except ValueError:  # e.g. an over-long integer in a trusted gold answer: let sympy try
        return None


_WORKER_FILE = Path(__file__).with_name("_verify_worker.py")
# run_path keeps pte_ray/rl off sys.path (its module names must not shadow anything).
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


def clear_caches() -> None:
    """Forget the process-wide fast-path verdicts (benchmarks; memory)."""
    for fn in (_decide_cached, normalize_answer, parse_number):
        fn.cache_clear()


class _Worker:
    """One ``python`` subprocess speaking JSON lines; ready once warm (it checked known pairs)."""

    def __init__(self, mem_limit_mb: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(_WORKER_FILE), str(mem_limit_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        self._buf = b""
        self.ready = False  # set once it has run the warm-up pairs (``_verify_worker.WARMUP``)
        self.warmup_s = 0.0

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def poll_message(self) -> dict[str, Any] | None:
        """Read what is available (call after the fd selected readable); EOFError if it died."""
        if b"\n" not in self._buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise EOFError("verifier worker exited")
            self._buf += chunk
        if b"\n" not in self._buf:
            return None
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise RuntimeError(f"verifier worker did not start within {timeout_s:.0f}s")
            try:
                msg = self.poll_message()
            except EOFError:
                raise RuntimeError(
                    f"verifier worker exited during start-up (code {self.proc.wait()}); "
                    "is math-verify installed, and mem_limit_mb large enough?"
                ) from None
            if msg is not None and "ready" in msg:
                if msg.get("warmup_wrong"):
                    raise RuntimeError(
                        "verifier self-check failed at start-up (broken math-verify / "
                        f"latex2sympy2_extended install?): {'; '.join(msg['warmup_wrong'])}"
                    )
                self.warmup_s = float(msg.get("warmup_s", 0.0))
                self.ready = True

    def has_line(self) -> bool:
        return b"\n" in self._buf

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]  # EOF ends its loop
            self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _WorkerPool:
    def __init__(self, n: int, mem_limit_mb: int, start_timeout_s: float) -> None:
        self.mem_limit_mb = mem_limit_mb
        self.start_timeout_s = start_timeout_s
        self.workers = [_Worker(mem_limit_mb) for _ in range(max(1, n))]
        self.replaced = 0

    def wait_ready(self) -> None:
        for worker in self.workers:
            worker.wait_ready(self.start_timeout_s)

    def _replace(self, slot: int) -> None:
        self.workers[slot].kill()
        self.workers[slot] = _Worker(self.mem_limit_mb)  # warms up while we carry on
        self.replaced += 1

    def run(self, items: list[tuple[str, str, bool]], timeout_s: float) -> list[str]:
        """Statuses for (pred, gold, pct) items; each gets ``timeout_s`` once on a worker."""
        results = ["parse_error"] * len(items)
        queue = deque(range(len(items)))
        busy: dict[int, tuple[int, float]] = {}  # slot -> (item, deadline)
        retried: dict[int, int] = {}
        while queue or busy:
            for slot in range(len(self.workers)):
                if queue and slot not in busy:
                    if self.workers[slot].proc.poll() is not None:  # died while idle
                        self._replace(slot)
                    worker = self.workers[slot]
                    worker.wait_ready(self.start_timeout_s)
                    i = queue.popleft()
                    pred, gold, pct = items[i]
                    try:
                        worker.send({"k": i, "p": pred, "g": gold, "pct": pct})
                    except OSError:  # broken pipe: it died just now; retry the item once
                        self._replace(slot)
                        retried[i] = retried.get(i, 0) + 1
                        if retried[i] <= 1:
                            queue.appendleft(i)
                        continue
                    busy[slot] = (i, time.monotonic() + timeout_s)
            if not busy:
                continue
            next_deadline = min(deadline for _, deadline in busy.values())
            buffered = any(self.workers[s].has_line() for s in busy)
            wait_s = 0.0 if buffered else max(0.0, next_deadline - time.monotonic())
            fds = [self.workers[s].fd for s in busy]
            readable = set(select.select(fds, [], [], wait_s)[0])
            now = time.monotonic()
            for slot, (i, deadline) in list(busy.items()):
                worker = self.workers[slot]
                msg = None
                if worker.fd in readable or worker.has_line():
                    try:
                        msg = worker.poll_message()
                    except (EOFError, OSError, ValueError):  # died, e.g. over its memory limit
                        del busy[slot]
                        self._replace(slot)
                        continue
                if msg is not None:
                    del busy[slot]
                    ok = msg.get("k") == i and msg.get("s") in STATUSES
                    results[i] = msg["s"] if ok else "parse_error"
                elif now >= deadline:
                    del busy[slot]
                    results[i] = "timeout"
                    self._replace(slot)
        return results

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []


class Verifier:
    """Scores completions against gold answers; ``with Verifier(cfg) as v: v.score(c, a)``.

    Worker processes start on the first item that needs one, or at ``warm_up()``; each runs
    known pairs before it takes items, so its start-up never counts against an item's timeout
    (a cold worker would score a correct answer "timeout"). ``close()`` kills them. Safe to
    call from several threads (the symbolic part is serialised). Linux/macOS: ``select`` on pipes.
    """

    def __init__(self, cfg: RewardConfig | None = None) -> None:
        self.cfg = cfg or RewardConfig()
        self.counts: Counter[str] = Counter()
        self._pool: _WorkerPool | None = None
        self._cache: OrderedDict[tuple[str, str, bool], str] = OrderedDict()
        self._lock = threading.Lock()  # threaded Ray actors may score concurrently

    # ------------------------------------------------------------------ public
    def score(self, completion: str, answer: str) -> tuple[float, str]:
        return self.score_batch([completion], [answer])[0]

    def score_batch(self, completions: list[str], answers: list[str]) -> list[tuple[float, str]]:
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        preds: list[str | None] = []
        too_long: list[bool] = []
        for completion in completions:
            too_long.append(len(completion) > self.cfg.max_completion_chars)
            preds.append(
                None if too_long[-1] else extract_answer(completion, self.cfg.last_number_fallback)
            )
        statuses = self.check_answers(preds, answers, count=False)
        out = []
        for completion, status, long in zip(completions, statuses, too_long, strict=True):
            status = "parse_error" if long else status
            reward = 1.0 if status == "ok" else 0.0
            if self.cfg.format_bonus and not long and has_closed_box(completion):
                reward += self.cfg.format_bonus
            self.counts[status] += 1
            out.append((reward, status))
        return out

    def check_answers(
        self, preds: list[str | None], answers: list[str], count: bool = True
    ) -> list[str]:
        """Statuses of already extracted answers (``None``: no answer was found)."""
        pct = self.cfg.percent_as_fraction
        statuses: list[str | None] = []
        slow: dict[tuple[str, str, bool], list[int]] = {}
        for i, (pred, gold) in enumerate(zip(preds, answers, strict=True)):
            pred = pred.strip() if pred is not None else ""
            if not pred:
                statuses.append("no_answer")
                continue
            key = (pred, gold.strip(), pct)
            status = decide_fast(*key)
            if status is None:
                status = self._cache.get(key)
            statuses.append(status)
            if status is None:
                slow.setdefault(key, []).append(i)
        if slow:
            keys = list(slow)
            with self._lock:
                verdicts = self._pool_run(keys)
                for key, status in zip(keys, verdicts, strict=True):
                    self._remember(key, status)
            for key, status in zip(keys, verdicts, strict=True):
                for i in slow[key]:
                    statuses[i] = status
        if count:
            self.counts.update(statuses)
        return statuses  # type: ignore[return-value]

    def take_counts(self) -> dict[str, int]:
        """Status counts since the last call (every status present), for per-step metrics."""
        counts = {s: self.counts.get(s, 0) for s in STATUSES}
        self.counts.clear()
        return counts

    def warm_up(self) -> None:
        """Starts the worker processes now and waits until each has warmed up.

        Called where start-up may take time (a reward actor's constructor), so that no step
        pays for it; items never do either way (an item's deadline starts when a warm worker
        takes it).
        """
        with self._lock:
            self._start_pool().wait_ready()

    @property
    def workers_replaced(self) -> int:
        return self._pool.replaced if self._pool else 0

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:  # processes and pipes do not travel
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cfg"])

    # ------------------------------------------------------------------ internals
    def _remember(self, key: tuple[str, str, bool], status: str) -> None:
        self._cache[key] = status
        self._cache.move_to_end(key)
        if len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    def _start_pool(self) -> _WorkerPool:
        if self._pool is None:
            self._pool = _WorkerPool(
                self.cfg.workers, self.cfg.mem_limit_mb, self.cfg.start_timeout_s
            )
        return self._pool

    def _pool_run(self, keys: list[tuple[str, str, bool]]) -> list[str]:
        return self._start_pool().run(keys, self.cfg.timeout_s)
