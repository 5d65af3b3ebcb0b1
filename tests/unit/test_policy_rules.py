"""The policy's rules: backfill with reservations, holds, user limits, aging, fair share, topology,
best-fit placement, and where estimates come from."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpuyard.scheduling.model import NodeView, PendingJob, Rules, RuntimeSource, WaitReason
from gpuyard.scheduling.policy import queue_order, schedule
from tests.unit.test_policy import HIGH, LOW, NORMAL, at, job, node, placed, request, running

R = WaitReason


def blocked_head(*later: PendingJob, rules: Rules | None = None):  # type: ignore[no-untyped-def]
    """Node a: GPU 0 busy until +600; the 4-GPU head job must wait for it; GPUs 1-3 idle until then."""
    return schedule(
        request(
            nodes=[node("a", 4)],
            pending=[job(1, gpus=4, limit=1000), *later],
            run=[running(90, "a", (0,), ends_in_s=600)],
            rules=rules,
        )
    )


def test_a_short_limited_job_backfills_in_front_of_the_blocked_head() -> None:
    d = blocked_head(job(2, limit=300))
    assert placed(d) == {2: ("a", (1,))}
    assert d.estimates[2].backfill is True and d.estimates[2].reason is R.STARTING
    assert d.estimates[1].start_at == at(600), "the head still starts when GPU 0 frees"


@pytest.mark.parametrize(
    ("later", "why"),
    [
        (job(2, limit=900), "its limit would run past the head's reserved start"),
        (job(2), "with no time limit it could run forever"),
        (job(2, gpus=4, limit=60), "it needs GPU 0 too"),
    ],
)
def test_no_backfill_that_could_delay_the_head(later: PendingJob, why: str) -> None:
    d = blocked_head(later)
    assert placed(d) == {}, why
    assert d.estimates[1].start_at == at(600)
    assert d.estimates[2].start_at is not None and d.estimates[2].start_at >= at(600)


def test_backfill_can_be_turned_off() -> None:
    d = blocked_head(job(2, limit=300), rules=Rules(backfill=False))
    assert placed(d) == {}
    assert d.estimates[2].start_at == at(1600), "only after the head, which takes all four GPUs"
    assert d.estimates[2].reason is R.BEHIND_EARLIER


def test_a_later_job_is_booked_into_a_future_gap() -> None:
    # GPUs 1-3 idle until +600: job 2 takes them now until +300; job 3 fits after it, before the head.
    d = blocked_head(job(2, gpus=3, limit=300), job(3, gpus=3, limit=250), job(4, gpus=3, limit=400))
    assert placed(d).keys() == {2}
    assert (d.estimates[3].start_at, d.estimates[3].backfill) == (at(300), True)
    assert d.estimates[4].start_at == at(1600), "job 4 does not fit before the head: after it"


def test_a_held_job_keeps_its_place_but_books_nothing() -> None:
    d = schedule(request(nodes=[node("a", 1)], pending=[replace(job(1), held=True), job(2)]))
    assert placed(d) == {2: ("a", (0,))}
    held = d.estimates[1]
    assert (held.reason, held.start_at, held.position) == (R.HELD, None, 1)


def test_the_user_limit_holds_back_a_users_jobs_not_the_others() -> None:
    ann = [replace(job(1, limit=100), user="ann"), replace(job(2, limit=100), user="ann")]
    bob = [replace(job(3, limit=100), user="bob")]
    d = schedule(
        request(
            nodes=[node("a", 4)],
            pending=[*ann, *bob],
            run=[replace(running(90, "a", (0,), ends_in_s=500), user="ann")],
            rules=Rules(max_gpus_per_user=2),
        )
    )
    assert placed(d).keys() == {1, 3}
    assert d.estimates[2].reason is R.USER_LIMIT
    assert d.estimates[2].start_at == at(100), "when ann's first job (limit 100) ends"


def test_aging_lifts_a_long_waiting_job() -> None:
    old_low = replace(job(1, prio=LOW), waiting_s=7300)
    fresh = job(2, prio=NORMAL)
    rules = Rules(aging_s=3600)
    assert [j.job_id for j in queue_order((fresh, old_low), rules)] == [1, 2]
    assert [j.job_id for j in queue_order((fresh, old_low), Rules())] == [2, 1]
    capped = replace(job(3, prio=LOW), waiting_s=10**6)
    urgent = job(4, prio=3)
    assert [j.job_id for j in queue_order((capped, urgent), rules)] == [4, 3], "aging stops below urgent"


def test_fair_share_puts_the_lighter_user_first_within_a_priority() -> None:
    heavy = replace(job(1), user="ann")
    light = replace(job(2), user="bob")
    higher = replace(job(3, prio=HIGH), user="ann")
    rules = Rules(fair_share=True, usage_s={"ann": 50_000.0, "bob": 10.0})
    assert [j.job_id for j in queue_order((heavy, light, higher), rules)] == [3, 2, 1]
    assert [j.job_id for j in queue_order((heavy, light, higher), Rules())] == [3, 1, 2]


def test_multi_gpu_jobs_take_linked_pairs_and_single_jobs_spare_them() -> None:
    linked = NodeView("a", node("a", 4).gpus, links=frozenset({(0, 1), (2, 3)}))
    d = schedule(request(nodes=[linked], pending=[job(1, gpus=2)], run=[running(90, "a", (1,), 100)]))
    assert placed(d) == {1: ("a", (2, 3))}, "the free linked pair, not 0 with 2"
    d = schedule(request(nodes=[linked], pending=[job(1)], run=[running(90, "a", (3,), 100)]))
    assert placed(d) == {1: ("a", (2,))}, "GPU 2's partner is busy: the 0-1 pair stays whole"


def test_a_small_job_goes_where_it_leaves_large_free_sets_intact() -> None:
    d = schedule(
        request(nodes=[node("a", 4), node("b", 4)], pending=[job(1)], run=[running(90, "b", (0, 1, 2), 100)])
    )
    assert placed(d) == {1: ("b", (3,))}


def test_estimates_say_where_their_runtimes_come_from() -> None:
    limited = running(90, "a", (0,), ends_in_s=600)
    d = schedule(
        request(
            nodes=[node("a", 1)],
            pending=[job(1, limit=100)],
            run=[replace(limited, source=RuntimeSource.TIME_LIMIT)],
        )
    )
    e = d.estimates[1]
    assert (e.source, e.late_s, e.early_s) == (RuntimeSource.TIME_LIMIT, 0.0, 300.0), (
        "a limit is an upper bound"
    )
    d = schedule(request(nodes=[node("a", 1)], pending=[job(1)], run=[limited]))
    assert d.estimates[1].source is RuntimeSource.DEFAULT and d.estimates[1].late_s > 0
    d = schedule(request(nodes=[node("a", 1)], pending=[job(1), replace(job(2), expected_runtime_s=50.0)]))
    assert d.estimates[2].start_at is not None
    e3 = schedule(
        request(nodes=[node("a", 1)], pending=[replace(job(1), expected_runtime_s=50.0), job(2)])
    ).estimates[2]
    assert (e3.start_at, e3.source) == (at(50), RuntimeSource.HISTORY), "history gives job 1's runtime"


def test_a_job_running_past_its_expected_end_is_expected_to_run_as_long_again() -> None:
    # Job 90 (no limit) started 2 h ago and expected to end 1 h ago: assume about 2 h more, which leaves a
    # gap on GPUs 1-3 in front of the 4-GPU job for a short limited job.
    overdue = replace(running(90, "a", (0,), ends_in_s=-3600), started_at=at(-7200))
    d = schedule(request(nodes=[node("a", 4)], pending=[job(1, gpus=4), job(2, limit=600)], run=[overdue]))
    assert d.estimates[1].start_at == at(7200)
    assert placed(d) == {2: ("a", (1,))}


def test_the_user_limit_holds_over_the_whole_run_not_just_its_start() -> None:
    # ann may hold 2 GPUs; her 2-GPU job is booked at +1000; a 1-GPU job of hers must not start now if it
    # would still run at +1000.
    rules = Rules(max_gpus_per_user=2)
    pending = [
        replace(job(1, gpus=3, limit=1000), user="bob"),
        replace(job(2, gpus=2, limit=500), user="ann"),
        replace(job(3, limit=5000), user="ann"),
    ]
    d = schedule(request(nodes=[node("a", 4)], pending=pending, rules=rules))
    assert placed(d).keys() == {1}
    assert d.estimates[2].start_at == at(1000)
    assert d.estimates[3].start_at is not None and d.estimates[3].start_at >= at(1500)


@pytest.mark.parametrize(
    ("expected_in_s", "limit_in_s", "frees_in_s"),
    [
        pytest.param(-3600, 5400, 2700, id="overdue: halfway to its limit"),
        pytest.param(-3600, -60, 1, id="past its limit: a moment from now"),
        pytest.param(9000, 5400, 5400, id="expected after its limit: at its limit"),
        pytest.param(1800, 5400, 1800, id="expected before its limit: as expected"),
    ],
)
def test_a_running_job_never_holds_its_gpus_past_its_time_limit(
    expected_in_s: float, limit_in_s: float, frees_in_s: float
) -> None:
    run = replace(
        running(90, "a", (0,), ends_in_s=expected_in_s),
        source=RuntimeSource.HISTORY,
        started_at=at(-7200),
        time_limit_at=at(limit_in_s),
    )
    d = schedule(request(nodes=[node("a", 1)], pending=[job(1)], run=[run]))
    assert d.estimates[1].start_at == at(frees_in_s)


@pytest.mark.parametrize(("value", "rank"), [("normal", 1), ("high", 2)])
def test_the_aging_ceiling_comes_from_the_settings(tmp_path: Path, value: str, rank: int) -> None:
    from gpuyard.entrypoints.api.controller import scheduling_config
    from gpuyard.settings import Settings

    settings = Settings(data_dir=tmp_path, aging_s=3600, aging_max_priority=value)  # type: ignore[arg-type]
    assert scheduling_config(settings).aging_max_rank == rank


def test_an_aging_ceiling_above_high_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from gpuyard.settings import Settings

    with pytest.raises(ValidationError, match="aging_max_priority"):
        Settings(data_dir=tmp_path, aging_max_priority="urgent")  # type: ignore[arg-type]


def test_aging_to_normal_lifts_low_jobs_but_never_past_high_ones() -> None:
    rules = Rules(aging_s=3600, aging_max_rank=1)
    old_low = replace(job(1, prio=0), waiting_s=10 * 3600)
    high = replace(job(2, prio=2), waiting_s=0)
    normal = replace(job(3, prio=1), waiting_s=0)
    assert [j.job_id for j in queue_order((normal, high, old_low), rules)] == [2, 1, 3]
