"""Progress and event lines reach whatever stderr the run has, a file or a terminal."""

from __future__ import annotations

import contextlib
import io
import logging

from pte_ray.progress import LogProgress, log_events_to_stderr


def test_event_lines_follow_a_later_stderr_redirect():
    """The handler is made once per process; a stderr swapped in after that (pytest's capture
    per test, a caller's redirect) still gets the lines (CI once lost them to an old one)."""
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(first):
        log_events_to_stderr()
        log_events_to_stderr()  # once: no second handler
        logging.getLogger("pte_ray.actors.pool").info("rollout pool: %d actor(s) ready", 1)
    with contextlib.redirect_stderr(second):
        logging.getLogger("pte_ray.actors.pool").info("reward pool: %d actor(s) ready", 2)
    assert first.getvalue().endswith("rollout pool: 1 actor(s) ready\n")
    assert "reward" not in first.getvalue()
    assert second.getvalue().endswith("reward pool: 2 actor(s) ready\n")
    assert second.getvalue().count("\n") == 1


def test_log_progress_prints_plain_lines_with_rate_and_figures():
    out = io.StringIO()
    bar = LogProgress(total=4, desc="train", unit="step", every_s=0.0, file=out)
    bar.set_postfix(reward=0.5)
    bar.update(2)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines and lines[-1].startswith("train: 2/4 steps (50%)")
    assert "reward=0.5" in lines[-1]
