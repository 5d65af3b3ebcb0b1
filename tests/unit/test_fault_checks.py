"""The checks of the fault-injection suite (tests/support/faults.py) catch what they are there to catch:
a suite that cannot see an overlap would report 0 overlaps for nothing."""

from __future__ import annotations

from typing import Any

from tests.support.faults import JobPlan, overlaps, policy_problems, undisturbed_outcome_problems
from tests.support.trainer import Run


def run(attempt: int, start: float, last: float, *, pid: int | None = None, rc: int | None = 0) -> Run:
    return Run(7, attempt, pid or 100 + attempt, started_at=start, last_seen_at=last, rc=rc)


def job(state: str, *attempts: str | None) -> dict[str, Any]:
    rows = [{"number": i + 1, "failure_class": f} for i, f in enumerate(attempts)]
    return {"id": 7, "state": state, "attempt": len(rows), "attempts": rows}


def test_attempts_one_after_the_other_do_not_overlap() -> None:
    assert overlaps([run(1, 0.0, 1.0, rc=None), run(2, 1.5, 2.0)]) == []


def test_a_killed_attempt_that_was_still_beating_when_the_next_started_overlaps() -> None:
    (found,) = overlaps([run(1, 0.0, 3.0, rc=None), run(2, 2.0, 4.0)])
    assert "attempt 2 (pid 102) started 1.00 s before attempt 1" in found


def test_an_attempt_started_twice_is_found_even_without_overlap() -> None:
    found = overlaps([run(1, 0.0, 1.0, pid=5), run(1, 2.0, 3.0, pid=6)])
    assert found == ["job 7: attempt 1 was started 2 times"]


def test_a_job_retried_after_a_success_breaks_the_policy() -> None:
    plan = JobPlan("p", 0.1)
    problems = policy_problems(plan, job("succeeded", None, None), [run(1, 0, 1), run(2, 2, 3)], set())
    assert any("retried, against the policy" in p for p in problems)


def test_a_job_out_of_attempts_on_its_own_failures_must_be_a_dead_letter() -> None:
    plan = JobPlan("p", 0.1, fail_first=3, max_attempts=2, retry_on=True)
    history = job("failed", "exit_nonzero", "exit_nonzero")
    runs = [run(1, 0, 1, rc=3), run(2, 2, 3, rc=3)]
    assert policy_problems(plan, history, runs, {7}) == []
    assert undisturbed_outcome_problems(plan, history, {7}) == []
    assert any(
        "the policy says failed (dead letter: True)" in p for p in policy_problems(plan, history, runs, set())
    )


def test_an_api_record_that_disagrees_with_the_trainer_is_found() -> None:
    plan = JobPlan("p", 0.1, fail_first=1, max_attempts=3, retry_on=True)
    history = job("succeeded", "exit_nonzero", None)
    problems = policy_problems(plan, history, [run(1, 0, 1, rc=3), run(2, 2, 3, rc=3)], set())
    assert any("its trainer ended with 3" in p for p in problems)


def test_lost_attempts_are_retried_within_the_budget() -> None:
    plan = JobPlan("p", 0.1, max_attempts=2)
    ok = job("succeeded", "node_lost", None)
    assert policy_problems(plan, ok, [run(2, 2, 3)], set()) == []
    spent = job("failed", "node_lost", "node_lost")
    assert policy_problems(plan, spent, [], {7}) == []
