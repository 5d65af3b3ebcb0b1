"""The pure scheduling policy: placements, estimates and reasons (DESIGN.md "Scheduling policy")."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuyard.scheduling.model import (
    Decision,
    Estimate,
    GpuSlot,
    NodeView,
    PendingJob,
    Placement,
    Rules,
    RunningJob,
    ScheduleRequest,
    WaitReason,
)
from gpuyard.scheduling.policy import Timeline, extend, planned_runtime, schedule

R = WaitReason
NOW = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
LOW, NORMAL, HIGH, URGENT = 0, 1, 2, 3
UNFORESEEABLE = {R.NO_NODE_FITS, R.NO_NODE_ONLINE, R.GPU_HELD_OUTSIDE}


# --- builders ----------------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def node(name: str, gpus: int, *, outside: Iterable[int] = (), online: bool = True) -> NodeView:
    held = set(outside)
    return NodeView(name, tuple(GpuSlot(i, outside=i in held) for i in range(gpus)), online)


def job(
    job_id: int,
    gpus: int = 1,
    prio: int = NORMAL,
    limit: float | None = None,
    *,
    seq: int | None = None,
) -> PendingJob:
    return PendingJob(
        job_id=job_id, seq=job_id if seq is None else seq, gpus=gpus, priority_rank=prio, time_limit_s=limit
    )


def running(
    job_id: int,
    node_name: str,
    gpus: Iterable[int],
    ends_in_s: float | None = None,
    progress: float | None = None,
) -> RunningJob:
    end = at(ends_in_s) if ends_in_s is not None else None
    return RunningJob(job_id, node_name, tuple(gpus), end, progress)


def request(
    *,
    nodes: Iterable[NodeView],
    pending: Iterable[PendingJob] = (),
    run: Iterable[RunningJob] = (),
    default_runtime_s: float = 3600.0,
    rules: Rules | None = None,
) -> ScheduleRequest:
    return ScheduleRequest(NOW, tuple(pending), tuple(run), tuple(nodes), default_runtime_s, rules or Rules())


def placed(decision: Decision) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {p.job_id: (p.node, p.gpu_indices) for p in decision.placements}


# --- scenarios ---------------------------------------------------------------------------------------


def test_four_free_gpus_six_jobs_fill_gpus_in_order_and_the_rest_wait() -> None:
    limits = {1: 100, 2: 200, 3: 300, 4: 400, 5: 500, 6: 600}
    d = schedule(request(nodes=[node("a", 4)], pending=[job(i, limit=limits[i]) for i in range(1, 7)]))

    assert d.placements == tuple(Placement(i, "a", (i - 1,)) for i in range(1, 5))
    for i in range(1, 5):
        e = d.estimates[i]
        assert (e.position, e.start_at, e.reason) == (0, NOW, R.STARTING)  # no longer in line
    # The earliest expected ends among the jobs just started: job 1 at +100, job 2 at +200.
    e5, e6 = d.estimates[5], d.estimates[6]
    assert (e5.position, e5.start_at, e5.reason, e5.blocking_job_id) == (1, at(100), R.GPUS_BUSY, 1)
    assert (e6.position, e6.start_at, e6.reason, e6.blocking_job_id) == (2, at(200), R.GPUS_BUSY, 2)
    assert (e5.gpus_busy, e5.gpus_total, e5.jobs_ahead, e5.gpus_ahead) == (4, 4, 0, 0)


def test_six_jobs_without_limits_wait_for_the_default_runtime() -> None:
    d = schedule(request(nodes=[node("a", 4)], pending=[job(i) for i in range(1, 7)], default_runtime_s=900))
    assert [d.estimates[i].start_at for i in range(1, 7)] == [NOW] * 4 + [at(900)] * 2


def test_a_big_job_waits_for_all_its_gpus_and_a_later_small_job_does_not_overtake_it() -> None:
    busy = [running(90, "a", (0, 1), ends_in_s=600), running(91, "a", (2,), ends_in_s=1200)]
    d = schedule(
        request(nodes=[node("a", 4)], pending=[job(1, gpus=4, limit=1800), job(2, gpus=1)], run=busy)
    )

    assert d.placements == ()  # GPU 3 is free, but job 2 may not start ahead of job 1
    big, small = d.estimates[1], d.estimates[2]
    assert (big.start_at, big.reason, big.blocking_job_id) == (at(1200), R.GPUS_BUSY, 91)
    assert small.reason is R.BEHIND_EARLIER
    assert small.start_at is not None and big.start_at is not None
    assert small.start_at >= big.start_at
    assert small.start_at == at(1200 + 1800)  # all four GPUs are the big job's until it ends


@pytest.mark.parametrize(
    ("still_running", "big_placed"),
    [
        pytest.param([running(90, "a", (0, 1), 600), running(91, "a", (2,), 1200)], False, id="3-busy"),
        pytest.param([running(91, "a", (2,), 1200)], False, id="1-busy"),
        pytest.param([running(91, "a", (2,), -5)], False, id="1-overdue"),
        pytest.param([], True, id="all-free"),
    ],
)
def test_a_four_gpu_job_starts_only_when_all_four_are_free(
    still_running: list[RunningJob], big_placed: bool
) -> None:
    d = schedule(request(nodes=[node("a", 4)], pending=[job(1, gpus=4), job(2)], run=still_running))
    assert placed(d) == ({1: ("a", (0, 1, 2, 3))} if big_placed else {})


def test_a_later_high_priority_job_goes_first_and_fifo_holds_within_a_priority() -> None:
    pending = [
        job(1, prio=NORMAL),
        job(2, prio=NORMAL),
        job(3, prio=HIGH),
        job(4, prio=LOW),
        job(5, prio=HIGH),
    ]
    d = schedule(request(nodes=[node("a", 1)], pending=pending, run=[running(90, "a", (0,), 60)]))
    order = sorted(d.estimates.values(), key=lambda e: e.position)
    assert [e.position for e in order] == [1, 2, 3, 4, 5]
    assert [e.job_id for e in order] == [3, 5, 1, 2, 4]
    assert [e.start_at for e in order] == [at(60 + 3600 * k) for k in range(5)]


def test_fifo_uses_submission_order_not_job_id() -> None:
    pending = [job(10, seq=3), job(11, seq=1), job(12, seq=2)]
    d = schedule(request(nodes=[node("a", 1)], pending=pending))
    assert placed(d) == {11: ("a", (0,))}
    assert [d.estimates[j].position for j in (11, 12, 10)] == [0, 1, 2]


def test_a_high_priority_job_takes_the_free_gpu_ahead_of_an_earlier_normal_one() -> None:
    d = schedule(request(nodes=[node("a", 1)], pending=[job(1, prio=NORMAL), job(2, prio=URGENT)]))
    assert placed(d) == {2: ("a", (0,))}
    assert d.estimates[1].reason is R.GPUS_BUSY
    assert (d.estimates[2].position, d.estimates[1].position) == (0, 1)


def test_a_job_held_back_by_a_waiting_higher_priority_job_says_so() -> None:
    # GPU 1 is free, but the later 2-GPU high-priority job goes first; it waits for GPU 0 (no overtaking).
    d = schedule(
        request(
            nodes=[node("a", 2)],
            pending=[job(1, gpus=1, prio=NORMAL), job(2, gpus=2, prio=HIGH, limit=1000)],
            run=[running(90, "a", (0,), ends_in_s=600)],
        )
    )
    assert d.placements == ()
    assert (d.estimates[2].position, d.estimates[2].reason, d.estimates[2].start_at) == (
        1,
        R.GPUS_BUSY,
        at(600),
    )
    held = d.estimates[1]
    assert (held.position, held.reason, held.start_at) == (2, R.BEHIND_HIGHER_PRIORITY, at(600 + 1000))


@pytest.mark.parametrize(
    ("small_prio", "big_prio", "reason"),
    [
        (NORMAL, HIGH, R.BEHIND_HIGHER_PRIORITY),
        (NORMAL, NORMAL, R.BEHIND_EARLIER),
        (LOW, URGENT, R.BEHIND_HIGHER_PRIORITY),
    ],
)
def test_reason_names_what_holds_a_job_back_when_gpus_are_free(
    small_prio: int, big_prio: int, reason: WaitReason
) -> None:
    # Without backfill: node b's two GPUs are free; the 4-GPU job ahead waits for node a; the 1-GPU job
    # may not overtake it.
    d = schedule(
        request(
            nodes=[node("a", 4), node("b", 2)],
            pending=[job(1, gpus=4, prio=big_prio, limit=100), job(2, gpus=1, prio=small_prio)],
            run=[running(90, "a", (0, 1, 2, 3), ends_in_s=600)],
            rules=Rules(backfill=False),
        )
    )
    assert d.placements == ()
    assert (d.estimates[1].reason, d.estimates[1].start_at) == (R.GPUS_BUSY, at(600))
    assert (d.estimates[2].reason, d.estimates[2].start_at) == (reason, at(600))


def test_gpus_held_outside_are_never_used() -> None:
    d = schedule(
        request(
            nodes=[node("a", 4, outside=(0, 2))],
            pending=[job(1, gpus=1, limit=100), job(2, gpus=1, limit=200), job(3, gpus=1)],
        )
    )
    assert placed(d) == {1: ("a", (1,)), 2: ("a", (3,))}
    e3 = d.estimates[3]
    assert (e3.start_at, e3.reason, e3.blocking_job_id) == (at(100), R.GPUS_BUSY, 1)
    assert (e3.gpus_busy, e3.gpus_total) == (4, 4)


def test_a_job_that_fits_only_with_outside_gpus_has_no_start_and_does_not_block_the_line() -> None:
    d = schedule(
        request(
            nodes=[node("a", 4, outside=(3,))],
            pending=[job(1, gpus=4), job(2, gpus=2), job(3, gpus=1)],
            run=[running(90, "a", (0,), ends_in_s=600)],
        )
    )
    e1 = d.estimates[1]
    assert (e1.start_at, e1.reason, e1.position) == (None, R.GPU_HELD_OUTSIDE, 1)
    assert placed(d) == {2: ("a", (1, 2))}
    assert (d.estimates[3].start_at, d.estimates[3].reason) == (at(600), R.GPUS_BUSY)


def test_offline_nodes_are_never_used() -> None:
    d = schedule(
        request(
            nodes=[node("a", 4, online=False), node("b", 2)],
            pending=[job(1), job(2), job(3)],
        )
    )
    assert {n for n, _ in placed(d).values()} == {"b"}
    assert set(placed(d)) == {1, 2}
    assert d.estimates[3].reason is R.GPUS_BUSY
    assert d.estimates[3].gpus_total == 2


@pytest.mark.parametrize(
    ("nodes", "gpus", "reason"),
    [
        pytest.param([], 1, R.NO_NODE_ONLINE, id="no-nodes"),
        pytest.param([node("a", 4, online=False)], 1, R.NO_NODE_ONLINE, id="all-offline"),
        pytest.param([node("a", 4, online=False), node("b", 2)], 4, R.NO_NODE_ONLINE, id="big-one-offline"),
        pytest.param([node("a", 2), node("b", 2)], 3, R.NO_NODE_FITS, id="never-split"),
        pytest.param([node("a", 2, online=False), node("b", 2)], 8, R.NO_NODE_FITS, id="none-big-enough"),
        pytest.param([node("a", 4, outside=(1,))], 4, R.GPU_HELD_OUTSIDE, id="outside"),
        pytest.param([node("a", 4, outside=(0, 1, 2, 3))], 1, R.GPU_HELD_OUTSIDE, id="all-outside"),
    ],
)
def test_jobs_that_cannot_start_say_why(nodes: list[NodeView], gpus: int, reason: WaitReason) -> None:
    d = schedule(request(nodes=nodes, pending=[job(1, gpus=gpus), job(2, gpus=1, prio=LOW)]))
    e = d.estimates[1]
    assert (e.start_at, e.reason, e.position) == (None, reason, 1)
    assert 1 not in placed(d)


def test_a_job_is_never_split_across_nodes() -> None:
    d = schedule(
        request(nodes=[node("a", 2), node("b", 2)], pending=[job(1, gpus=2), job(2, gpus=2), job(3, gpus=2)])
    )
    assert placed(d) == {1: ("a", (0, 1)), 2: ("b", (0, 1))}
    assert d.estimates[3].reason is R.GPUS_BUSY


def test_a_job_goes_to_the_node_where_it_fits_now() -> None:
    d = schedule(
        request(
            nodes=[node("a", 2), node("b", 2)], pending=[job(1, gpus=2)], run=[running(90, "a", (0,), 600)]
        )
    )
    assert placed(d) == {1: ("b", (0, 1))}


def test_a_waiting_job_goes_to_the_node_that_frees_first() -> None:
    d = schedule(
        request(
            nodes=[node("a", 2), node("b", 2)],
            pending=[job(1, gpus=2)],
            run=[running(90, "a", (0, 1), 600), running(91, "b", (0,), 300)],
        )
    )
    assert (d.estimates[1].start_at, d.estimates[1].blocking_job_id) == (at(300), 91)


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")])
def test_node_ties_break_by_name_whatever_the_input_order(order: tuple[str, ...]) -> None:
    d = schedule(request(nodes=[node(n, 2) for n in order], pending=[job(1, gpus=2), job(2, gpus=1)]))
    assert placed(d) == {1: ("a", (0, 1)), 2: ("b", (0,))}


@pytest.mark.parametrize(
    ("pending", "expected_starts"),
    [
        # GPU 0 frees at +600, GPU 1 at +1200.
        pytest.param([job(1, limit=300)], {1: 600}, id="first-free"),
        pytest.param([job(1, limit=300), job(2, limit=100)], {1: 600, 2: 900}, id="reuse-gpu0"),
        pytest.param(
            [job(1, limit=300), job(2, limit=100), job(3, gpus=2)],
            {1: 600, 2: 900, 3: 1200},
            id="two-gpu-waits-both",
        ),
        pytest.param([job(1, gpus=2, limit=50), job(2)], {1: 1200, 2: 1250}, id="fifo-after-big"),
        pytest.param([job(1)], {1: 600}, id="no-limit-default"),
        pytest.param([job(1), job(2)], {1: 600, 2: 1200}, id="second-gpu"),
        pytest.param([job(1), job(2), job(3)], {1: 600, 2: 1200, 3: 600 + 3600}, id="default-runtime"),
    ],
)
def test_estimates_follow_expected_ends_and_time_limits(
    pending: list[PendingJob], expected_starts: dict[int, int]
) -> None:
    busy = [running(90, "a", (0,), ends_in_s=600, progress=0.5), running(91, "a", (1,), ends_in_s=1200)]
    d = schedule(request(nodes=[node("a", 2)], pending=pending, run=busy))
    assert {j: d.estimates[j].start_at for j in expected_starts} == {
        j: at(s) for j, s in expected_starts.items()
    }


def test_a_running_job_with_no_expected_end_is_assumed_to_take_the_default_runtime() -> None:
    d = schedule(
        request(nodes=[node("a", 1)], pending=[job(1)], run=[running(90, "a", (0,))], default_runtime_s=120)
    )
    assert d.estimates[1].start_at == at(120)


def test_an_overdue_running_job_frees_its_gpu_just_after_now_not_now() -> None:
    d = schedule(
        request(nodes=[node("a", 1)], pending=[job(1)], run=[running(90, "a", (0,), ends_in_s=-300)])
    )
    assert d.placements == ()
    e = d.estimates[1]
    assert e.start_at is not None and NOW < e.start_at <= at(60)
    assert (e.reason, e.blocking_job_id) == (R.GPUS_BUSY, 90)


def test_blocking_progress_comes_from_the_running_job() -> None:
    d = schedule(
        request(
            nodes=[node("a", 1)], pending=[job(1)], run=[running(812, "a", (0,), ends_in_s=300, progress=0.8)]
        )
    )
    assert (d.estimates[1].blocking_job_id, d.estimates[1].blocking_progress) == (812, 0.8)


@pytest.mark.parametrize(
    ("pending", "default_runtime_s"),
    [
        pytest.param([job(1, limit=0), job(2, limit=0)], 3600.0, id="zero-time-limit"),
        pytest.param([job(1), job(2)], 0.0, id="zero-default-runtime"),
    ],
)
def test_a_zero_runtime_never_puts_two_jobs_on_one_gpu(
    pending: list[PendingJob], default_runtime_s: float
) -> None:
    d = schedule(request(nodes=[node("a", 1)], pending=pending, default_runtime_s=default_runtime_s))
    assert len(d.placements) == 1


def test_the_same_request_gives_the_same_decision() -> None:
    req = request(
        nodes=[node("b", 4, outside=(1,)), node("a", 2)],
        pending=[job(i, gpus=1 + i % 3, prio=i % 4, limit=100 * i) for i in range(1, 12)],
        run=[running(90, "a", (0,), 600), running(91, "b", (2, 3), 60)],
    )
    assert schedule(req) == schedule(req)


def test_the_order_of_pending_jobs_in_the_request_does_not_matter() -> None:
    pending = [job(i, gpus=1 + i % 3, prio=i % 4, limit=100 * i, seq=(7 * i) % 13) for i in range(1, 13)]
    nodes = [node("b", 4, outside=(1,)), node("a", 2)]
    run = [running(90, "a", (0,), 600), running(91, "b", (2, 3), 60)]
    expected = schedule(request(nodes=nodes, pending=pending, run=run))
    shuffler = random.Random(1234)
    for _ in range(20):
        shuffled = pending[:]
        shuffler.shuffle(shuffled)
        assert schedule(request(nodes=nodes, pending=shuffled, run=run)) == expected


def test_an_empty_line_gives_an_empty_decision() -> None:
    assert schedule(request(nodes=[node("a", 4)])) == Decision(placements=(), estimates={})


# --- properties --------------------------------------------------------------------------------------


_RUNNING_END = st.one_of(st.none(), st.integers(-600, 20_000))
_PROGRESS = st.one_of(st.none(), st.floats(0, 1))
_PENDING = st.tuples(st.integers(1, 8), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 50_000)))


@st.composite
def requests(draw: st.DrawFn) -> ScheduleRequest:
    """1-3 nodes of 1-8 GPUs (some outside-held, some offline); running jobs on disjoint GPUs; pending."""
    nodes: list[NodeView] = []
    run: list[RunningJob] = []
    for n in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 8))
        outside = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        online = draw(st.sampled_from([True, True, True, False]))
        nodes.append(NodeView(f"n{n}", tuple(GpuSlot(i, outside=o) for i, o in enumerate(outside)), online))
        # Each GPU is free (0) or held by running job 1..3 of this node: disjoint by construction.
        labels = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
        for label in sorted({lab for lab, o in zip(labels, outside, strict=True) if lab and not o}):
            gpus = tuple(
                i for i, (lab, o) in enumerate(zip(labels, outside, strict=True)) if lab == label and not o
            )
            one = running(1000 + 10 * n + label, f"n{n}", gpus, draw(_RUNNING_END), draw(_PROGRESS))
            if draw(st.integers(0, 2)) == 0:  # a preemptible one, somewhere in the line, maybe stopping
                one = replace(
                    one,
                    preemptible=True,
                    seq=2 * draw(st.integers(-2, 6)) + 1,  # odd: between waiting jobs
                    priority_rank=draw(st.integers(0, 3)),
                    stopping=draw(st.sampled_from([False, False, True])),
                )
            run.append(one)
    wanted = draw(st.lists(_PENDING, max_size=10))
    backfill = draw(st.booleans())
    seqs = draw(st.permutations(range(len(wanted))))
    preemptible = draw(st.lists(st.booleans(), min_size=len(wanted), max_size=len(wanted)))
    pending = [
        replace(job(i + 1, gpus=gpus, prio=prio, limit=limit, seq=2 * seqs[i]), preemptible=preemptible[i])
        for i, (gpus, prio, limit) in enumerate(wanted)
    ]
    default_runtime_s = draw(st.sampled_from([60.0, 3600.0]))
    return request(
        nodes=nodes,
        pending=pending,
        run=run,
        default_runtime_s=default_runtime_s,
        rules=Rules(
            backfill=backfill,
            preempt_grace_s=draw(st.sampled_from([0.0, 30.0, 600.0])),
            preempt_min_run_s=draw(st.sampled_from([0.0, 60.0, 3600.0])),
        ),
    )


def queue(req: ScheduleRequest) -> list[PendingJob]:
    return sorted(req.pending, key=lambda j: (-j.priority_rank, j.seq))


def free_now(req: ScheduleRequest) -> dict[str, set[int]]:
    """The GPUs of each online node that are neither held by a running job nor by an outside process."""
    held = {(r.node, i) for r in req.running for i in r.gpu_indices}
    return {
        n.name: {g.index for g in n.gpus if not g.outside and (n.name, g.index) not in held}
        for n in req.nodes
        if n.online
    }


def ever_usable(req: ScheduleRequest) -> dict[str, int]:
    held = {(r.node, i) for r in req.running for i in r.gpu_indices}
    return {
        n.name: sum(1 for g in n.gpus if not g.outside or (n.name, g.index) in held)
        for n in req.nodes
        if n.online
    }


def foreseeable(e: Estimate) -> bool:
    return e.start_at is not None


# Each invariant is a check on one (request, decision); one property test runs them all on the same examples.


def check_no_gpu_given_twice_or_taken(req: ScheduleRequest, d: Decision) -> None:
    """(a) No GPU placed twice; none held by a running job or an outside process, or on an offline node."""
    used = [(p.node, i) for p in d.placements for i in p.gpu_indices]
    assert len(used) == len(set(used)), "a GPU is placed twice"
    free = free_now(req)
    for p in d.placements:
        assert p.node in free, f"job {p.job_id} placed on an offline or unknown node"
        assert set(p.gpu_indices) <= free[p.node], f"job {p.job_id} placed on a busy or outside-held GPU"


def check_exact_gpus_on_one_node(req: ScheduleRequest, d: Decision) -> None:
    """(b) Each placement is one job, on one node, with exactly the GPUs it asked for."""
    wanted = {j.job_id: j.gpus for j in req.pending}
    assert len({p.job_id for p in d.placements}) == len(d.placements), "a job is placed twice"
    for p in d.placements:
        assert len(set(p.gpu_indices)) == len(p.gpu_indices) == wanted[p.job_id], p
        assert list(p.gpu_indices) == sorted(p.gpu_indices), p


def check_no_overtaking(req: ScheduleRequest, d: Decision) -> None:
    """(c) Without backfill, a job placed now has every foreseeable job ahead of it placed now too."""
    if req.rules.backfill:
        return
    started = {p.job_id for p in d.placements}
    line = queue(req)
    for k, j in enumerate(line):
        if j.job_id in started:
            for ahead in line[:k]:
                if foreseeable(d.estimates[ahead.job_id]):
                    assert ahead.job_id in started, f"job {j.job_id} overtook job {ahead.job_id}"


def check_starts_never_go_down(req: ScheduleRequest, d: Decision) -> None:
    """(d) Foreseeable starts are never before now and, without backfill, non-decreasing along the line."""
    known = [e.start_at for e in (d.estimates[j.job_id] for j in queue(req)) if e.start_at is not None]
    assert req.rules.backfill or known == sorted(known), "an estimate is earlier than that of a job ahead"
    assert all(s >= req.now for s in known)


def check_backfill_delays_nobody(req: ScheduleRequest, d: Decision) -> None:
    """(g) No job is delayed by a job behind it: in the next pass, with the jobs placed ahead of a placed
    job running as planned and that job running for its whole time limit (forever, without one; a
    preemptible one as long as it may before a job ahead stops it), no job ahead of it starts later than
    estimated."""
    line = queue(req)
    placed_at = {p.job_id: p for p in d.placements}
    for p in d.placements:
        placed_job = next(j for j in req.pending if j.job_id == p.job_id)
        if line.index(placed_job) == 0:
            continue
        holds_for = placed_job.time_limit_s if placed_job.time_limit_s is not None else 10**8
        started = [
            RunningJob(
                p.job_id,
                p.node,
                p.gpu_indices,
                NOW + timedelta(seconds=holds_for),
                preemptible=placed_job.preemptible,
                seq=placed_job.seq,
                priority_rank=placed_job.priority_rank,
            )
        ]
        for ahead in line[: line.index(placed_job)]:
            if ahead.job_id in placed_at:
                q = placed_at[ahead.job_id]
                planned_s = planned_runtime(ahead, req.default_runtime_s)[0]
                started.append(
                    RunningJob(q.job_id, q.node, q.gpu_indices, NOW + timedelta(seconds=planned_s))
                )
        gone = {r.job_id for r in started}
        rest = tuple(j for j in req.pending if j.job_id not in gone)
        after = schedule(replace(req, pending=rest, running=(*req.running, *started)))
        for ahead in line[: line.index(placed_job)]:
            if ahead.job_id in gone:
                continue  # it starts now
            before_at, after_at = d.estimates[ahead.job_id].start_at, after.estimates[ahead.job_id].start_at
            if before_at is not None:
                assert after_at is not None and after_at <= before_at, (p, ahead, before_at, after_at)


def check_one_estimate_each_in_line_order(req: ScheduleRequest, d: Decision) -> None:
    """(e) Every pending job has exactly one estimate; the jobs that wait are numbered 1..n in line order,
    those that start now have position 0."""
    assert set(d.estimates) == {j.job_id for j in req.pending}
    waiting = [j for j in queue(req) if d.estimates[j.job_id].reason is not WaitReason.STARTING]
    assert [d.estimates[j.job_id].position for j in waiting] == list(range(1, len(waiting) + 1))
    for job_id, e in d.estimates.items():
        assert e.job_id == job_id
        assert (e.position == 0) == (e.reason is WaitReason.STARTING)
        assert e.jobs_ahead == max(e.position - 1, 0)
        assert 0 <= e.gpus_busy <= e.gpus_total


def check_placed_jobs_start_now(req: ScheduleRequest, d: Decision) -> None:
    """(f) A job is placed exactly when its estimate starts now, with reason STARTING."""
    started = {p.job_id for p in d.placements}
    for job_id, e in d.estimates.items():
        assert (job_id in started) == (e.start_at == req.now), e
        assert (job_id in started) == (e.reason is R.STARTING), e


def check_unforeseeable_only_when_no_node_could_ever_hold_it(req: ScheduleRequest, d: Decision) -> None:
    """A start is unknown (with an unforeseeable reason) exactly when no online node can ever hold the job."""
    usable = ever_usable(req)
    for j in req.pending:
        e = d.estimates[j.job_id]
        could_fit = any(n >= j.gpus for n in usable.values())
        assert foreseeable(e) == could_fit, (j, e)
        assert (e.reason in UNFORESEEABLE) == (not could_fit), (j, e)


def check_head_starts_when_it_fits(req: ScheduleRequest, d: Decision) -> None:
    """The first foreseeable job in line starts now whenever one online node has enough free GPUs."""
    head = next((j for j in queue(req) if foreseeable(d.estimates[j.job_id])), None)
    if head is not None and any(len(f) >= head.gpus for f in free_now(req).values()):
        assert head.job_id in {p.job_id for p in d.placements}, "GPUs idle while the head of the line fits"


def check_preemptions_only_for_jobs_ahead(req: ScheduleRequest, d: Decision) -> None:
    """A pass stops only running preemptible jobs not stopping already, each once, each for a waiting job
    ahead of it in line that waits with reason PREEMPTING on some of its GPUs; no job starts on them now."""
    running = {r.job_id: r for r in req.running}
    pending = {j.job_id: j for j in req.pending}
    stopped = [p.job_id for p in d.preemptions]
    assert len(stopped) == len(set(stopped)), "a job is preempted twice"
    assert req.rules.backfill or not stopped, "preemption without backfill"
    for p in d.preemptions:
        run, ahead = running[p.job_id], pending[p.for_job_id]
        assert run.preemptible and not run.stopping, p
        assert (-ahead.priority_rank, ahead.seq) < (-run.priority_rank, run.seq), p
        e = d.estimates[ahead.job_id]
        assert e.reason is R.PREEMPTING and e.start_at is not None and e.start_at > req.now, (p, e)
    for e in d.estimates.values():
        if e.reason is R.PREEMPTING:
            assert any(p.for_job_id == e.job_id for p in d.preemptions), e
    held = {(r.node, i) for r in req.running for i in r.gpu_indices}
    for placement in d.placements:
        assert not any((placement.node, i) in held for i in placement.gpu_indices), placement


CHECKS = [
    check_preemptions_only_for_jobs_ahead,
    check_no_gpu_given_twice_or_taken,
    check_exact_gpus_on_one_node,
    check_no_overtaking,
    check_starts_never_go_down,
    check_one_estimate_each_in_line_order,
    check_placed_jobs_start_now,
    check_unforeseeable_only_when_no_node_could_ever_hold_it,
    check_head_starts_when_it_fits,
    check_backfill_delays_nobody,
]


@settings(max_examples=300, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_policy_invariants(req: ScheduleRequest, rnd: random.Random) -> None:
    d = schedule(req)
    for check in CHECKS:
        check(req, d)
    # Deterministic, and blind to the order in which pending jobs are listed.
    shuffled = list(req.pending)
    rnd.shuffle(shuffled)
    assert schedule(replace(req, pending=tuple(shuffled))) == d


@settings(max_examples=300, deadline=None)
@given(requests(), _PENDING)
def test_extending_the_line_agrees_with_a_full_pass(req: ScheduleRequest, newcomer: tuple) -> None:
    """A job that joins the end of the line gets from `extend` exactly what a full pass would give it."""
    gpus, prio, limit = newcomer
    new = job(999, gpus=gpus, prio=prio, limit=limit, seq=10_000)
    timeline = schedule(req).timeline
    assert isinstance(timeline, Timeline)
    quick = extend(timeline, new)
    full = schedule(replace(req, pending=(*req.pending, new)))
    if quick is None:
        # Only when it would not go last (behind every waiting job and every running preemptible one, which
        # it could otherwise stop), or could start now (then the pass must place it).
        ranks = [j.priority_rank for j in req.pending]
        ranks += [r.priority_rank for r in req.running if r.preemptible and not r.stopping]
        lowest = min(ranks, default=None)
        starts_now = full.estimates[999].start_at == req.now
        assert starts_now or (lowest is not None and prio > lowest)
    else:
        assert quick == full.estimates[999]
