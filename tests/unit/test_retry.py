"""The retry policy, as a table of cases."""

from __future__ import annotations

import pytest

from gpuyard.domain.errors import InvalidJobSpec
from gpuyard.domain.jobs import FailureClass as F
from gpuyard.domain.retry import backoff_s, check_max_attempts, decide, end_class, parse_retry_on

NONE: frozenset[F] = frozenset()


@pytest.mark.parametrize(
    ("failure", "counted", "max_attempts", "retry_on", "retry", "delay_s", "dead"),
    [
        (F.NODE_LOST, 1, 3, NONE, True, 10.0, False),  # infrastructure: retried with backoff
        (F.NODE_LOST, 2, 3, NONE, True, 20.0, False),
        (F.NODE_LOST, 3, 3, NONE, False, 0.0, True),  # used up: dead letter
        (F.GPU_UNAVAILABLE, 5, 3, NONE, True, 0.0, False),  # never started: no attempt used, no wait
        (F.EXIT_NONZERO, 1, 3, NONE, False, 0.0, False),  # the job's own failure: final, not dead
        (F.OOM, 1, 3, NONE, False, 0.0, False),
        (F.TIMEOUT, 1, 3, NONE, False, 0.0, False),
        (F.LAUNCH_ERROR, 1, 3, NONE, False, 0.0, False),
        (F.EXIT_NONZERO, 1, 3, frozenset({F.EXIT_NONZERO}), True, 10.0, False),  # unless it asked
        (F.EXIT_NONZERO, 3, 3, frozenset({F.EXIT_NONZERO}), False, 0.0, True),
        (F.OOM, 1, 3, frozenset({F.EXIT_NONZERO}), False, 0.0, False),  # asked for another class only
        (F.CANCELLED, 1, 3, frozenset({F.EXIT_NONZERO}), False, 0.0, False),  # never
        (F.NODE_LOST, 1, 1, NONE, False, 0.0, True),  # max_attempts 1: no second try
        (F.PREEMPTED, 1, 3, NONE, True, 0.0, False),  # preempted: back in line at once
        (F.PREEMPTED, 3, 3, NONE, True, 0.0, False),  # whatever the budget: never a dead letter
        (F.PREEMPTED, 1, 1, frozenset({F.EXIT_NONZERO}), True, 0.0, False),
    ],
)
def test_what_follows_a_failed_attempt(
    failure: F,
    counted: int,
    max_attempts: int,
    retry_on: frozenset[F],
    retry: bool,
    delay_s: float,
    dead: bool,
) -> None:
    decision = decide(failure, counted_attempts=counted, max_attempts=max_attempts, retry_on=retry_on)
    assert (decision.retry, decision.delay_s, decision.dead_letter) == (retry, delay_s, dead)


@pytest.mark.parametrize(
    ("failures", "delay_s"), [(0, 10.0), (1, 10.0), (2, 20.0), (4, 80.0), (7, 600.0), (50, 600.0)]
)
def test_backoff_doubles_up_to_ten_minutes(failures: int, delay_s: float) -> None:
    assert backoff_s(failures) == delay_s


def test_retry_on_takes_the_job_s_own_failure_classes_only() -> None:
    assert parse_retry_on(["exit_nonzero", " oom"]) == {F.EXIT_NONZERO, F.OOM}
    with pytest.raises(InvalidJobSpec, match="always retried"):
        parse_retry_on(["node_lost"])
    with pytest.raises(InvalidJobSpec, match="never retried"):
        parse_retry_on(["cancelled"])
    with pytest.raises(InvalidJobSpec, match="preempted job always goes back in line"):
        parse_retry_on(["preempted"])
    with pytest.raises(InvalidJobSpec, match="Unknown failure class 'segfault'.*exit_nonzero"):
        parse_retry_on(["segfault"])


def test_max_attempts_is_at_least_one_and_under_the_cap() -> None:
    assert check_max_attempts(3, cap=5) == 3
    with pytest.raises(InvalidJobSpec, match="at least 1"):
        check_max_attempts(0, cap=5)
    with pytest.raises(InvalidJobSpec, match="at most 5"):
        check_max_attempts(6, cap=5)


@pytest.mark.parametrize(
    ("reported", "preempting", "cancelling", "ends_as"),
    [
        (F.PREEMPTED, True, False, F.PREEMPTED),  # stopped by the preemption, whatever its exit
        (F.EXIT_NONZERO, True, False, F.PREEMPTED),  # exited non-zero on (or just before) the SIGTERM
        (F.OOM, True, False, F.PREEMPTED),
        (None, True, False, None),  # succeeded before the stop reached it: a success
        (F.TIMEOUT, True, False, F.TIMEOUT),  # its time limit stopped it first
        (F.NODE_LOST, True, False, F.NODE_LOST),  # lost meanwhile: the lost handling
        (F.PREEMPTED, True, True, F.CANCELLED),  # a cancel wins over a preemption
        (F.EXIT_NONZERO, True, True, F.EXIT_NONZERO),
        (F.CANCELLED, True, True, F.CANCELLED),
        (F.EXIT_NONZERO, False, False, F.EXIT_NONZERO),  # no stop asked: as reported
        (F.PREEMPTED, False, True, F.CANCELLED),
    ],
)
def test_how_an_attempt_that_was_asked_to_stop_ends(
    reported: F | None, preempting: bool, cancelling: bool, ends_as: F | None
) -> None:
    assert end_class(reported, preempting=preempting, cancelling=cancelling) is ends_as
