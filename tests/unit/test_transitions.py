"""The job state machine: the table in the domain layer against the lifecycle in DESIGN.md."""

from __future__ import annotations

import itertools

import pytest

from gpuyard.domain.errors import GpuyardError, InvalidTransition
from gpuyard.domain.jobs import FINAL_STATES, JobState
from gpuyard.domain.transitions import TRANSITIONS, can_transition, check_transition, sources_of

S = JobState

# Written from DESIGN.md "Job lifecycle", independently of the table under test.
ALLOWED = {
    (S.QUEUED, S.DISPATCHED): "the scheduler assigns GPUs",
    (S.QUEUED, S.CANCELLED): "cancelled while waiting",
    (S.DISPATCHED, S.RUNNING): "the worker started it",
    (S.DISPATCHED, S.QUEUED): "the dispatch is handed back (e.g. GPU taken by an outside process)",
    (S.DISPATCHED, S.FAILED): "launch error",
    (S.DISPATCHED, S.CANCELLED): "cancelled before it started",
    (S.DISPATCHED, S.LOST): "its worker vanished before it started",
    (S.DISPATCHED, S.SUCCEEDED): "finished before its `started` event was processed",
    (S.DISPATCHED, S.TIMED_OUT): "timed out before its `started` event was processed",
    (S.RUNNING, S.SUCCEEDED): "exit 0",
    (S.RUNNING, S.FAILED): "exit non-zero, OOM",
    (S.RUNNING, S.CANCELLED): "cancelled while running",
    (S.RUNNING, S.TIMED_OUT): "time limit",
    (S.RUNNING, S.LOST): "its worker vanished",
    (S.RUNNING, S.QUEUED): "a failed attempt retried per the retry policy",
    (S.FAILED, S.QUEUED): "requeued by its owner or an admin (a dead letter, say)",
    (S.TIMED_OUT, S.QUEUED): "requeued by its owner or an admin",
    (S.LOST, S.QUEUED): "next attempt",
    (S.LOST, S.FAILED): "no attempts left",
    (S.LOST, S.CANCELLED): "cancelled before its next attempt",
}

FORBIDDEN_EXAMPLES = [
    pytest.param(S.QUEUED, S.RUNNING, id="queued-running-skips-dispatch"),
    pytest.param(S.QUEUED, S.SUCCEEDED, id="queued-succeeded"),
    pytest.param(S.QUEUED, S.LOST, id="queued-lost-holds-no-worker"),
    pytest.param(S.QUEUED, S.QUEUED, id="queued-self"),
    pytest.param(S.RUNNING, S.DISPATCHED, id="running-backwards"),
    pytest.param(S.RUNNING, S.RUNNING, id="running-self"),
    pytest.param(S.LOST, S.RUNNING, id="lost-running"),
    pytest.param(S.LOST, S.DISPATCHED, id="lost-dispatched-must-requeue"),
    pytest.param(S.SUCCEEDED, S.QUEUED, id="succeeded-requeue"),
    pytest.param(S.FAILED, S.RUNNING, id="failed-running"),
    pytest.param(S.FAILED, S.DISPATCHED, id="failed-requeue-goes-through-the-line"),
    pytest.param(S.CANCELLED, S.QUEUED, id="cancelled-queued"),
    pytest.param(S.TIMED_OUT, S.SUCCEEDED, id="timed-out-succeeded"),
]


@pytest.mark.parametrize(("current", "target"), list(ALLOWED))
def test_allowed_transitions(current: JobState, target: JobState) -> None:
    assert can_transition(current, target)
    check_transition(current, target, job_id=1)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN_EXAMPLES)
def test_forbidden_transitions(current: JobState, target: JobState) -> None:
    assert not can_transition(current, target)


def test_the_table_is_exactly_the_lifecycle() -> None:
    for current, target in itertools.product(JobState, repeat=2):
        assert can_transition(current, target) == ((current, target) in ALLOWED), (current, target)


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_final_states_only_go_back_in_line_by_a_requeue(state: JobState) -> None:
    assert state.is_final
    assert TRANSITIONS[state] <= {S.QUEUED}


def test_succeeded_and_cancelled_jobs_stay_so() -> None:
    assert {s for s, targets in TRANSITIONS.items() if not targets} == {S.SUCCEEDED, S.CANCELLED}


def _reachable(start: JobState) -> set[JobState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_queued() -> None:
    assert _reachable(S.QUEUED) == set(JobState)


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_final])
def test_every_live_state_can_still_end(state: JobState) -> None:
    assert _reachable(state) & FINAL_STATES


@pytest.mark.parametrize("target", list(JobState))
def test_sources_of_agrees_with_the_table(target: JobState) -> None:
    expected = frozenset(s for s in JobState if (s, target) in ALLOWED)
    assert sources_of(target) == expected
    if target is not S.QUEUED:  # only a requeue leaves a final state
        assert not sources_of(target) & FINAL_STATES


@pytest.mark.parametrize(
    ("target", "sources"),
    [
        (S.QUEUED, {S.DISPATCHED, S.RUNNING, S.LOST, S.FAILED, S.TIMED_OUT}),
        (S.DISPATCHED, {S.QUEUED}),
        (S.RUNNING, {S.DISPATCHED}),
        (S.LOST, {S.DISPATCHED, S.RUNNING}),
        (S.SUCCEEDED, {S.DISPATCHED, S.RUNNING}),
        (S.CANCELLED, {S.QUEUED, S.DISPATCHED, S.RUNNING, S.LOST}),
    ],
)
def test_sources_of_examples(target: JobState, sources: set[JobState]) -> None:
    assert sources_of(target) == sources


@pytest.mark.parametrize(("current", "target"), FORBIDDEN_EXAMPLES)
def test_check_transition_names_the_job_and_both_states(current: JobState, target: JobState) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_transition(current, target, job_id=4242)
    error = caught.value
    assert isinstance(error, GpuyardError)
    assert error.code == "invalid_transition"
    assert "4242" in error.detail
    assert current.value in error.detail
    assert target.value in error.detail


def test_check_transition_refuses_every_pair_outside_the_table() -> None:
    for current, target in itertools.product(JobState, repeat=2):
        if (current, target) in ALLOWED:
            check_transition(current, target, job_id=7)
        else:
            with pytest.raises(InvalidTransition, match=r"\b7\b"):
                check_transition(current, target, job_id=7)
