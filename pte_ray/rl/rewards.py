"""Math answer rewards: a fast in-process path plus a pool of killable symbolic-check workers.

Model output is hostile input. The parent extracts the answer, screens it, and settles most
pairs with exact string / ``Fraction`` comparison (tens of thousands per second). Only the rest
goes to worker processes running math-verify on LaTeX (``_verify_worker``); each item there has a
hard wall-clock deadline, and a worker that overruns is SIGKILLed and replaced. Threads and
``signal.alarm`` cannot interrupt sympy inside a Ray actor, a separate process can. Workers are
plain ``python`` subprocesses rather than multiprocessing children: spawn/forkserver re-import
the parent's ``__main__`` (fatal for unguarded scripts), and fork is unsafe in threaded actors.
The fast path is ``pte_ray.rl.verdict``, the worker processes ``pte_ray.rl.verify_pool``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pte_ray.rl.answers import extract_answer, has_closed_box
from pte_ray.rl.verdict import STATUSES, clear_caches, decide_fast
from pte_ray.rl.verify_pool import WorkerPool

__all__ = ["STATUSES", "RewardConfig", "Verifier", "clear_caches", "decide_fast", "extract_answer"]


class RewardConfig(BaseModel):
    """The verifier's settings; the run config's ``reward`` section extends it (declared once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(2.0, gt=0.0, description="hard per-item check time (then killed)")
    last_number_fallback: bool = Field(True, description="no boxed answer: use the last number")
    percent_as_fraction: bool = Field(True, description='"50%" also equals 0.5 (always 50)')
    format_bonus: float = Field(0.0, description="added for a closed \\boxed{}, right or wrong")
    workers: int = Field(1, ge=1, description="verifier processes per reward worker")
    max_completion_chars: int = Field(200_000, ge=1, description="longer: parse_error, unread")
    mem_limit_mb: int = Field(2048, ge=64, description="address-space limit of each verifier")
    cache_size: int = Field(16384, ge=0, description="verdicts kept per verifier (LRU)")
    start_timeout_s: float = Field(60.0, gt=0.0, description="a verifier slower to start fails")


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
        self._pool: WorkerPool | None = None
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

    def _start_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(
                self.cfg.workers, self.cfg.mem_limit_mb, self.cfg.start_timeout_s
            )
        return self._pool

    def _pool_run(self, keys: list[tuple[str, str, bool]]) -> list[str]:
        return self._start_pool().run(keys, self.cfg.timeout_s)
