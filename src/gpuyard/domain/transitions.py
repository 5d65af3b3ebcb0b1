"""The job state machine as a pure table. Every database write is conditional on the state it came from."""

from __future__ import annotations

from gpuyard.domain.errors import InvalidTransition
from gpuyard.domain.jobs import JobState

S = JobState

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.DISPATCHED, S.CANCELLED}),
    S.DISPATCHED: frozenset({S.RUNNING, S.QUEUED, S.FAILED, S.CANCELLED, S.LOST, S.SUCCEEDED, S.TIMED_OUT}),
    # RUNNING -> QUEUED: a failed attempt retried per the policy (domain/retry.py)
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.LOST, S.QUEUED}),
    S.LOST: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    # FAILED / TIMED_OUT -> QUEUED: a dead letter requeued by its owner or an admin
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset({S.QUEUED}),
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobState, target: JobState, *, job_id: int) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(f"Job {job_id} is {current.value} and cannot become {target.value}.")


def sources_of(target: JobState) -> frozenset[JobState]:
    """Every state from which `target` may be reached: the WHERE clause of a conditional update."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
