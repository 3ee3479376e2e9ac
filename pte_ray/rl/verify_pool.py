"""A pool of killable ``python`` processes that run the symbolic check, each item on a deadline.

Threads and ``signal.alarm`` cannot interrupt sympy inside a Ray actor, a separate process can:
an item that overruns its deadline kills its worker, which is replaced. Workers are plain
``python`` subprocesses rather than multiprocessing children: spawn/forkserver re-import the
parent's ``__main__`` (fatal for unguarded scripts), and fork is unsafe in threaded actors.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from pte_ray.rl.verdict import STATUSES

Item = tuple[str, str, bool]  # (prediction, gold, percent_as_fraction)

_WORKER_FILE = Path(__file__).with_name("_verify_worker.py")
# run_path keeps pte_ray/rl off sys.path (its module names must not shadow anything).
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


class Worker:
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


class WorkerPool:
    """``n`` workers; each item runs on one with its own deadline, and a worker that overruns
    it or dies is replaced (it warms up while the others carry on)."""

    def __init__(self, n: int, mem_limit_mb: int, start_timeout_s: float) -> None:
        self.mem_limit_mb = mem_limit_mb
        self.start_timeout_s = start_timeout_s
        self.workers = [Worker(mem_limit_mb) for _ in range(max(1, n))]
        self.replaced = 0

    def wait_ready(self) -> None:
        for worker in self.workers:
            worker.wait_ready(self.start_timeout_s)

    def _replace(self, slot: int) -> None:
        self.workers[slot].kill()
        self.workers[slot] = Worker(self.mem_limit_mb)  # warms up while we carry on
        self.replaced += 1

    def run(self, items: list[Item], timeout_s: float) -> list[str]:
        """Statuses for (pred, gold, pct) items; each gets ``timeout_s`` once on a worker."""
        results = ["parse_error"] * len(items)
        queue = deque(range(len(items)))
        busy: dict[int, tuple[int, float]] = {}  # slot -> (item, deadline)
        retried: dict[int, int] = {}
        while queue or busy:
            self._dispatch(items, queue, busy, retried, timeout_s)
            if busy:
                self._collect(busy, results)
        return results

    def _dispatch(
        self,
        items: list[Item],
        queue: deque[int],
        busy: dict[int, tuple[int, float]],
        retried: dict[int, int],
        timeout_s: float,
    ) -> None:
        """Hands the next queued item to every idle worker; its deadline starts now."""
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

    def _collect(self, busy: dict[int, tuple[int, float]], results: list[str]) -> None:
        """Waits for an answer or the first deadline; settles every busy item it can."""
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

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []
