"""The node index and the exact search behind every booking (scheduling/cluster.py, booking.py) give what
a brute-force search over every node and every moment a GPU frees gives."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuyard.scheduling.booking import Holder, Node
from gpuyard.scheduling.model import GpuSlot, NodeView, Rules, RuntimeSource, ScheduleRequest
from gpuyard.scheduling.policy import Timeline, queue_order, schedule
from tests.unit.test_policy import CHECKS, job, request, requests, running

INF = math.inf
_LENGTHS = st.sampled_from([1.0, 30.0, 600.0, 3600.0, 20_000.0, INF])


def brute_force_fit(nodes: list[Node], count: int, length: float, floor: float) -> tuple[float, str] | None:
    """The earliest start >= floor at which one node has `count` GPUs free for `length`, trying every
    moment a GPU frees on every node; at equal starts the node with the fewest GPUs free for good, then
    the first by name."""
    floor = max(floor, 0.0)
    found: list[tuple[float, int, str]] = []
    for node in nodes:
        moments = {floor}
        for gpu in node.gpus:
            moments.update(s for s, _, _ in gpu.holes if s >= floor)
            moments.add(max(gpu.tail, floor))
        for t in sorted(moments):
            if sum(1 for g in node.gpus if g.free_for(t, length)) >= count:
                found.append((t, sum(1 for g in node.gpus if g.tail <= t), node.name))
                break
    if not found:
        return None
    start, _, name = min(found)
    return start, name


def check_index(timeline: Timeline) -> None:
    """The index holds each node's k-th tail and longest gap, as the nodes themselves say."""
    cluster = timeline.cluster
    for i, node in enumerate(cluster.nodes):
        assert node.tails == sorted(g.tail for g in node.gpus)
        assert node.max_gap == max((g.max_gap for g in node.gpus), default=0.0)
        for gpu in node.gpus:
            assert gpu.max_gap == max((e - s for s, e, _ in gpu.holes), default=0.0)
            assert gpu.starts == [s for s, _, _ in gpu.holes]
        assert cluster.max_gap[i] == node.max_gap
        for k in range(1, cluster.largest + 1):
            assert cluster.kth_tail[k][i] == (node.tails[k - 1] if k <= len(node.gpus) else INF)


def check_fit(timeline: Timeline, count: int, length: float, floor: float) -> None:
    fit = timeline.cluster.earliest_fit(count, length, floor)
    expected = brute_force_fit(timeline.nodes, count, length, floor)
    if expected is None:
        assert fit is None
        return
    assert fit is not None
    assert (fit.start, fit.node.name) == expected
    assert len({g.index for g in fit.gpus}) == count
    assert all(g in fit.node.gpus and g.free_for(fit.start, length) for g in fit.gpus)


@st.composite
def crowded(draw: st.DrawFn) -> ScheduleRequest:
    """Up to 6 nodes of 1-8 GPUs, busy for a while, and a line long enough to leave gaps of all sizes."""
    nodes, run = [], []
    for n in range(draw(st.integers(1, 6))):
        size = draw(st.integers(1, 8))
        nodes.append(NodeView(f"n{n:02d}", tuple(GpuSlot(i) for i in range(size))))
        for i in range(size):
            ends = draw(st.one_of(st.none(), st.integers(1, 20_000)))
            if ends is not None:
                run.append(running(1000 + 10 * n + i, f"n{n:02d}", (i,), ends))
    wanted = draw(
        st.lists(
            st.tuples(st.integers(1, 8), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 30_000))),
            max_size=40,
        )
    )
    pending = [job(i + 1, gpus=g, prio=p, limit=limit) for i, (g, p, limit) in enumerate(wanted)]
    return request(nodes=nodes, pending=pending, run=run, rules=Rules(backfill=draw(st.booleans())))


@settings(max_examples=150, deadline=None)
@given(st.one_of(requests(), crowded()), st.data())
def test_the_index_finds_what_a_brute_force_search_finds(req: ScheduleRequest, data: st.DataObject) -> None:
    timeline = Timeline(req)
    check_index(timeline)
    for pending in queue_order(req.pending, req.rules):
        timeline.add(pending)
        check_index(timeline)
        count = data.draw(st.integers(1, 9), label="count")
        length = data.draw(_LENGTHS, label="length")
        floor = data.draw(st.sampled_from([0.0, 0.0, 500.0, 7_000.0, 40_000.0]), label="floor")
        check_fit(timeline, count, length, floor)


@settings(max_examples=150, deadline=None)
@given(st.one_of(requests(), crowded()))
def test_a_pass_without_estimates_places_the_same_jobs(req: ScheduleRequest) -> None:
    assert schedule(req, estimates=False).placements == schedule(req).placements


@settings(max_examples=50, deadline=None)
@given(crowded())
def test_crowded_lines_keep_the_policy_invariants(req: ScheduleRequest) -> None:
    d = schedule(req)
    for check in CHECKS:
        check(req, d)
    assert schedule(replace(req, pending=tuple(reversed(req.pending)))) == d


def test_gpus_free_at_a_moment_but_not_for_long_enough_do_not_count() -> None:
    timeline = Timeline(request(nodes=[NodeView("a", (GpuSlot(0), GpuSlot(1)))]))
    node = timeline.nodes[0]
    gpu0, gpu1 = node.gpus
    holder = Holder(90, None, RuntimeSource.TIME_LIMIT)
    timeline.cluster.book(node, (gpu0,), 1000.0, 1500.0, holder)  # GPU 0 free on [0, 1000), from 1500
    timeline.cluster.book(node, (gpu1,), 0.0, 500.0, holder)  # GPU 1 free on [500, 2000), from 2100
    timeline.cluster.book(node, (gpu1,), 2000.0, 2100.0, holder)
    check_index(timeline)
    # At 500 and at 1500 both are free, but not for 600 s together.
    fit = timeline.cluster.earliest_fit(2, 600.0, 0.0)
    assert fit is not None and fit.start == 2100.0
    check_fit(timeline, 2, 600.0, 0.0)
    fit = timeline.cluster.earliest_fit(2, 400.0, 0.0)
    assert fit is not None and fit.start == 500.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=4), st.data())
def test_random_bookings_keep_the_index_and_the_search_exact(sizes: list[int], data: st.DataObject) -> None:
    """Book jobs where the search puts them, each for a random part of the length it was placed for, so
    gaps of every shape appear; after each booking the index and the search agree with brute force."""
    nodes = [NodeView(f"n{i}", tuple(GpuSlot(g) for g in range(size))) for i, size in enumerate(sizes)]
    timeline = Timeline(request(nodes=nodes))
    holder = Holder(1, None, RuntimeSource.TIME_LIMIT)
    for _ in range(data.draw(st.integers(1, 40), label="bookings")):
        count = data.draw(st.integers(1, 9), label="count")
        length = data.draw(st.sampled_from([1.0, 30.0, 600.0, 3600.0, 20_000.0]), label="length")
        floor = data.draw(st.sampled_from([0.0, 0.0, 500.0, 7_000.0]), label="floor")
        check_fit(timeline, count, length, floor)
        fit = timeline.cluster.earliest_fit(count, length, floor)
        if fit is not None:
            share = data.draw(st.sampled_from([0.1, 0.5, 1.0]), label="share")
            timeline.cluster.book(fit.node, fit.gpus, fit.start, fit.start + share * length, holder)
            check_index(timeline)
