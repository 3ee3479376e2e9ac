"""Ray's exceptions, turned into one error that names the role, the call and the cause.

Pools and the learner group both wait on actors; both need to tell apart an exception raised
by the actor's own code (a bug or bad input: stop the run with the actor's message), a lost
actor (a dead process: the caller may retry elsewhere) and a timeout. One mapping serves both.
"""

from __future__ import annotations

from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

# An actor whose process died or is restarting: the call may be retried on another actor.
LOST = (RayActorError, ActorUnavailableError)


class PoolError(RuntimeError):
    """A role could not complete its work; the message names the role, the call and the cause."""


class LearnerLost(PoolError):
    """A learner rank died or hung: the group cannot go on, but a new one can resume."""


class WeightsLost(RuntimeError):
    """A published version can no longer be fetched (its object is gone): what a lost learner
    group means to a rollout worker. The controller treats it as the learner loss it is."""


def start_failure(e: RayActorError) -> str:
    """The error an actor's constructor raised, from the traceback Ray wraps it in."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def role_error(role: str, call: str, e: BaseException, timeout_s: float | None = None) -> PoolError:
    """``e`` from waiting on ``role``'s ``call`` as a ``PoolError`` naming both (raise ``from e``).

    ``call == "ready"`` means the actor was starting: a lost actor then failed to start.
    """
    if isinstance(e, RayTaskError):
        what = "failed to start" if call == "ready" else f"raised on {call}"
        kind = LearnerLost if isinstance(e.cause, WeightsLost) else PoolError
        return kind(f"{role} {what}: {e.cause!r}")
    if isinstance(e, LOST):
        if call == "ready":
            return PoolError(f"{role} failed to start: {start_failure(e)}")
        return PoolError(f"{role} died during {call}: {start_failure(e)}")
    if isinstance(e, GetTimeoutError):
        return PoolError(f"{role} {call} timed out ({timeout_s}s)")
    return PoolError(f"{role} {call}: {e!r}")
