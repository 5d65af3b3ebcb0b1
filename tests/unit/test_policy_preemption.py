"""Preemptible jobs in the policy: they backfill gaps their time limit could not prove, and give their GPUs
back to the jobs ahead of them in line, a grace before those need them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuyard.scheduling.explain import explain
from gpuyard.scheduling.model import Preemption, Rules, RunningJob, RuntimeSource, WaitReason
from gpuyard.scheduling.policy import schedule
from tests.unit.test_policy import LOW, NORMAL, NOW, at, job, node, placed, request, running

RULES = Rules(preempt_grace_s=30, preempt_min_run_s=50)


def busy_three(ends_in_s: float = 100) -> RunningJob:
    """A job on GPUs 0-2 until `ends_in_s`, known from its time limit."""
    return replace(running(1, "n", (0, 1, 2), ends_in_s), source=RuntimeSource.TIME_LIMIT)


def backfilled(ends_in_s: float = 1000, *, seq: int = 3, rank: int = NORMAL) -> RunningJob:
    """The preemptible job that took GPU 3 ahead of the 4-GPU job."""
    return replace(running(3, "n", (3,), ends_in_s), preemptible=True, seq=seq, priority_rank=rank)


HEAD = job(2, gpus=4, limit=500)


def test_a_preemptible_job_without_a_limit_starts_in_the_gap_before_a_big_job() -> None:
    small = replace(job(3, gpus=1), preemptible=True, expected_runtime_s=1000)
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD, small], run=[busy_three()], rules=RULES))
    assert placed(d) == {3: ("n", (3,))}
    assert d.estimates[2].start_at == at(100)  # the big job keeps its start
    assert d.estimates[3].backfill and d.preemptions == ()
    assert d.preempt_at == at(100 - 30)  # a pass must stop it a grace before the big job starts


@pytest.mark.parametrize("preemptible", [False, True])
def test_a_gap_shorter_than_the_minimum_run_and_the_grace_is_left_alone(preemptible: bool) -> None:
    small = replace(job(3, gpus=1), preemptible=preemptible, expected_runtime_s=1000)
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD, small], run=[busy_three(70)], rules=RULES))
    assert placed(d) == {}  # 70 s < 50 s of run + 30 s of grace


def test_the_job_ahead_stops_the_preemptible_job_when_its_gpus_are_otherwise_free() -> None:
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD], run=[backfilled()], rules=RULES))
    assert d.preemptions == (Preemption(3, 2),) and placed(d) == {}
    e = d.estimates[2]
    assert (e.reason, e.start_at, e.blocking_job_id) == (WaitReason.PREEMPTING, at(30), 3)
    assert "job 3, preemptible and behind it in line" in explain(e, gpus=4, now=NOW)


def test_while_other_gpus_are_busy_the_preemptible_job_runs_on() -> None:
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD], run=[busy_three(), backfilled()], rules=RULES))
    assert d.preemptions == () and d.estimates[2].start_at == at(100)
    assert d.preempt_at == at(70)


@pytest.mark.parametrize(
    "running_job",
    [
        pytest.param(replace(backfilled(), preemptible=False), id="not-preemptible"),
        pytest.param(backfilled(seq=1), id="ahead-in-line"),
        pytest.param(backfilled(seq=9, rank=2), id="higher-priority"),
        pytest.param(replace(backfilled(), stopping=True), id="stopping-already"),
    ],
)
def test_only_a_preemptible_job_behind_the_waiting_one_is_stopped(running_job: RunningJob) -> None:
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD], run=[running_job], rules=RULES))
    assert d.preemptions == ()


def test_a_job_behind_the_preemptible_one_never_stops_it() -> None:
    later = job(5, gpus=4, prio=LOW)
    d = schedule(request(nodes=[node("n", 4)], pending=[later], run=[backfilled(rank=NORMAL)], rules=RULES))
    assert d.preemptions == ()


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(replace(RULES, backfill=False), id="no-backfill"),
        pytest.param(replace(RULES, fair_share=True), id="fair-share"),
    ],
)
def test_without_backfill_or_with_fair_share_preemptible_jobs_are_like_any_other(rules: Rules) -> None:
    small = replace(job(3, gpus=1), preemptible=True, expected_runtime_s=1000)
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD, small], run=[busy_three()], rules=rules))
    assert placed(d) == {}
    d = schedule(request(nodes=[node("n", 4)], pending=[HEAD], run=[backfilled()], rules=rules))
    assert d.preemptions == ()


def test_a_newcomer_ahead_of_a_running_preemptible_job_needs_a_full_pass() -> None:
    from gpuyard.scheduling.policy import Timeline, extend

    d = schedule(
        request(nodes=[node("n", 4)], pending=[], run=[busy_three(), backfilled(rank=LOW)], rules=RULES)
    )
    assert isinstance(d.timeline, Timeline)
    assert extend(d.timeline, job(9, gpus=1, prio=NORMAL, seq=100)) is None  # it could stop job 3
    assert extend(d.timeline, job(10, gpus=1, prio=LOW, seq=101)) is not None
