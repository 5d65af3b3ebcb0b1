"""What happens after a failed attempt: retry (after how long) or give up, and whether giving up makes a
dead letter. Pure: the services apply it.

Infrastructure failures (the node was lost, a GPU was taken by a process outside gpuyard) are retried with
backoff, up to the job's `max_attempts`. Failures of the job itself (exit code, out of memory, time limit,
a launch error such as a missing working directory) are not, unless the job asked for it with `retry_on`.
A cancelled attempt is never retried. A `gpu_unavailable` attempt never ran, so it does not use up the
job's attempts. A job that used up its attempts on failures that were to be retried is dead-lettered.

A `preempted` attempt is no failure: a preemptible job gave its GPUs to a job ahead of it in line. It goes
back to its place at once, whatever its budget, and the attempt does not use it up.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gpuyard.domain.errors import InvalidJobSpec
from gpuyard.domain.jobs import FailureClass

F = FailureClass
INFRASTRUCTURE = frozenset({F.NODE_LOST, F.GPU_UNAVAILABLE})
USER_RETRYABLE = frozenset({F.EXIT_NONZERO, F.OOM, F.TIMEOUT, F.LAUNCH_ERROR})
# never started, or stopped for a job ahead in line: does not use up an attempt
NOT_COUNTED = frozenset({F.GPU_UNAVAILABLE, F.PREEMPTED})
# How an attempt stopped for a preemption may end besides `preempted`: exiting non-zero on the SIGTERM.
_ENDS_OF_A_STOP = frozenset({F.EXIT_NONZERO, F.OOM})
DEFAULT_MAX_ATTEMPTS = 3
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 600.0


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0
    dead_letter: bool = False
    reason: str = ""


def parse_retry_on(values: Iterable[str]) -> frozenset[FailureClass]:
    """The failure classes of its own a job wants retried (exit_nonzero, oom, timeout, launch_error)."""
    chosen = set()
    for value in values:
        try:
            failure = FailureClass(value.strip())
        except ValueError:
            raise InvalidJobSpec(
                f"Unknown failure class {value!r} in retry_on: use some of "
                f"{', '.join(sorted(c.value for c in USER_RETRYABLE))}."
            ) from None
        if failure not in USER_RETRYABLE:
            raise InvalidJobSpec(
                f"retry_on cannot name {failure.value}: "
                + (
                    "infrastructure failures are always retried."
                    if failure in INFRASTRUCTURE
                    else "a preempted job always goes back in line."
                    if failure is F.PREEMPTED
                    else "a cancelled job is never retried."
                )
            )
        chosen.add(failure)
    return frozenset(chosen)


def check_max_attempts(value: int, *, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidJobSpec(f"max_attempts must be a whole number of at least 1, not {value!r}.")
    if value > cap:
        raise InvalidJobSpec(f"max_attempts may be at most {cap} here (the admins' cap): ask for fewer.")
    return value


def backoff_s(failures: int, *, base_s: float = BACKOFF_BASE_S) -> float:
    """Wait before the next attempt after `failures` counted failures: 10 s, 20 s, 40 s, ... up to 10 min."""
    return float(min(base_s * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def decide(
    failure: FailureClass,
    *,
    counted_attempts: int,
    max_attempts: int,
    retry_on: Collection[FailureClass],
    base_s: float = BACKOFF_BASE_S,
) -> RetryDecision:
    """`counted_attempts`: the attempts that used up the budget so far, this one included."""
    if failure is F.CANCELLED:
        return RetryDecision(False)
    if failure is F.PREEMPTED:
        return RetryDecision(True, 0.0, reason="preempted: it goes back to its place in line")
    wanted = failure in INFRASTRUCTURE or failure in retry_on
    if not wanted:
        return RetryDecision(False)
    if failure in NOT_COUNTED:
        return RetryDecision(True, 0.0, reason=f"{failure.value}: it did not start, so it goes back in line")
    if counted_attempts >= max_attempts:
        return RetryDecision(
            False,
            dead_letter=True,
            reason=f"{failure.value} on each of its {max_attempts} attempt(s), and it may not try again",
        )
    delay_s = backoff_s(counted_attempts, base_s=base_s)
    return RetryDecision(
        True, delay_s, reason=f"{failure.value}: attempt {counted_attempts + 1} of {max_attempts} follows"
    )


def end_class(failure: FailureClass | None, *, preempting: bool, cancelling: bool) -> FailureClass | None:
    """The failure class an attempt ends with, given the stops the controller asked for (`preempting`: a
    stop for a preemption; `cancelling`: a cancel). A cancel wins over a preemption. An attempt being
    preempted that exits non-zero (on the SIGTERM, or just before it) was ended by the preemption; one
    that succeeded first, ran out of time first, or was lost keeps what it reported."""
    if failure is F.PREEMPTED and cancelling:
        return F.CANCELLED
    if preempting and not cancelling and failure in _ENDS_OF_A_STOP:
        return F.PREEMPTED
    return failure
