"""Progress that shows wherever a run is watched: a bar on a terminal, plain lines in a log.

tqdm draws nothing useful when stderr is a file or a pipe (a `ray job submit` log, CI): its
carriage-return updates either vanish (``disable=None``) or pile up on one line. So off a
terminal we print one plain line every ``every_s`` seconds and one at the end, each with the
count, the rate, the time left and the caller's latest figures. Nothing long stays silent.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class LogProgress:
    """The part of tqdm's interface we use, as timed log lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        every_s: float = 10.0,
        file: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = initial
        self.every_s = every_s
        self.file = file or sys.stderr
        self._t0 = self._last = time.monotonic()
        self._postfix = ""

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s or self.n >= self.total:
            self._last = now
            self.file.write(self.line(now) + "\n")
            self.file.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self._t0
        done = self.n - self._start_n
        rate = elapsed / done if done else float("nan")
        left = _hms(rate * (self.total - self.n)) if done else "?"
        pct = 100.0 * self.n / self.total if self.total else 100.0
        text = (
            f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), "
            f"{rate:.2f} s/{self.unit}, elapsed {_hms(elapsed)}, ~{left} left"
        )
        return f"{text}; {self._postfix}" if self._postfix else text

    def close(self) -> None:
        pass


def progress(
    total: int, desc: str, unit: str = "it", initial: int = 0, every_s: float = 10.0
) -> tqdm | LogProgress:
    """A tqdm bar when stderr is a terminal, else :class:`LogProgress` lines."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return LogProgress(total, desc, unit, initial, every_s)


def say(message: str) -> None:
    """One status line on stderr (where progress goes), flushed at once."""
    print(message, file=sys.stderr, flush=True)


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, not as it was when the handler was
    made: a later redirect (pytest's capture, a caller's ``redirect_stderr``) gets the lines."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def log_events_to_stderr() -> None:
    """The package's INFO lines (pool events: a worker lost, back, replaced, added, retired; a
    learner group restarted) to stderr, which is the job log under ``ray job submit``. Once."""
    pkg = logging.getLogger("pte_ray")
    if any(getattr(h, "_pte_ray", False) for h in pkg.handlers):
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._pte_ray = True  # type: ignore[attr-defined]
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)
    pkg.propagate = False
