"""Expected runtimes from history, recent GPU time per user, and the GPU link map (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpuyard.scheduling.history import build_history, gpu_seconds_by_user, parse_links

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run(user: str, name: str, command: str, runtime_s: float, limit_s: float | None = None) -> dict:
    return {
        "user": user,
        "name": name,
        "command": command,
        "time_limit_s": limit_s,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=runtime_s),
    }


def test_same_command_first_then_same_user_and_name_then_the_users_share_of_its_limit() -> None:
    history = build_history(
        [
            run("ann", "mnist", '["python", "a.py"]', 100, 400),
            run("ann", "mnist", '["python", "b.py"]', 300, 600),
        ]
    )
    assert history.expected_runtime_s(user="bob", name="x", command='["python", "a.py"]') == 100
    assert history.expected_runtime_s(user="ann", name="mnist", command='["other"]') == 200  # median
    share = history.expected_runtime_s(user="ann", name="new", command=None, time_limit_s=1000)
    assert share == pytest.approx(375.0)  # median of 0.25 and 0.5 of the limit
    assert history.expected_runtime_s(user="cy", name="new", command=None, time_limit_s=1000) is None
    assert (
        history.expected_runtime_s(user="bob", name="x", command='["python", "a.py"]', time_limit_s=50) == 50
    )


def test_only_the_last_runs_count() -> None:
    runs = [run("ann", "n", "c", 10)] * 5 + [run("ann", "n", "c", 10_000)] * 20  # newest first
    assert build_history(runs).expected_runtime_s(user="ann", name="n", command="c") == 10


def test_gpu_seconds_inside_the_window() -> None:
    rows = [
        {"user": "ann", "gpu_indices": [0, 1], "started_at": T0, "ended_at": T0 + timedelta(seconds=100)},
        {"user": "ann", "gpu_indices": [2], "started_at": T0 - timedelta(seconds=50), "ended_at": None},
        {"user": "bob", "gpu_indices": [3], "started_at": T0 + timedelta(seconds=300), "ended_at": None},
    ]
    usage = gpu_seconds_by_user(rows, since=T0, now=T0 + timedelta(seconds=200))
    assert usage == {"ann": 2 * 100 + 200}


@pytest.mark.parametrize(
    ("text", "links"), [("", set()), ("0-1,2-3", {(0, 1), (2, 3)}), (" 3-2 , 1-0 ", {(2, 3), (0, 1)})]
)
def test_links(text: str, links: set[tuple[int, int]]) -> None:
    assert parse_links(text) == frozenset(links)


@pytest.mark.parametrize("text", ["0", "0-0", "a-b", "0-1-2", "0:1"])
def test_bad_links_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="GPUYARD_GPU_LINKS=0-1,2-3"):
        parse_links(text)


def test_reported_links_come_from_each_gpus_partners() -> None:
    from gpuyard.services.scheduler import reported_links

    gpus = [{"index": 0, "links": [1]}, {"index": 1, "links": [0]}, {"index": 2}, {"index": 3, "links": [2]}]
    assert reported_links(gpus) == frozenset({(0, 1), (2, 3)})


def test_nodes_get_configured_and_reported_links() -> None:
    from gpuyard.services.scheduler import SchedulingConfig, build_request

    node = {
        "name": "box",
        "last_seen_at": T0,
        "gpus": [{"index": 0, "links": [1]}, {"index": 1, "links": [0]}, {"index": 2}, {"index": 3}],
    }
    config = SchedulingConfig(links=frozenset({(2, 3)}))
    request = build_request(now=T0, pending=[], active=[], nodes=[node], config=config)
    assert request.nodes[0].links == frozenset({(0, 1), (2, 3)})


def running_row(**changes: Any) -> dict[str, Any]:
    """A running job's row as `jobs_repo.active_attempts` gives it."""
    return {
        "id": 7,
        "node": "box",
        "gpu_indices": [0],
        "user": "ann",
        "name": "train",
        "argv": ["python", "train.py"],
        "time_limit_s": None,
        "dispatched_at": T0,
        "started_at": T0,
        "progress_step": None,
        "progress_total": None,
        **changes,
    }


@pytest.mark.parametrize(("started_h", "limit_s"), [(-2, 3 * 3600), (None, None)])
def test_running_jobs_carry_their_start_and_when_their_time_limit_stops_them(
    started_h: int | None, limit_s: float | None
) -> None:
    from gpuyard.services.scheduler import SchedulingConfig, build_request

    dispatched_at = T0 - timedelta(hours=3)
    started_at = None if started_h is None else T0 + timedelta(hours=started_h)
    row = running_row(time_limit_s=limit_s, dispatched_at=dispatched_at, started_at=started_at)
    (run,) = build_request(now=T0, pending=[], active=[row], nodes=[], config=SchedulingConfig()).running
    began = started_at or dispatched_at
    assert run.started_at == began
    assert run.time_limit_at == (None if limit_s is None else began + timedelta(seconds=limit_s))


def test_preemptible_jobs_and_the_preemption_rules_reach_the_policy() -> None:
    from gpuyard.services.scheduler import SchedulingConfig, build_request

    running = running_row(
        priority_rank=0,
        preemptible=True,
        preempt_requested_at=None,
        cancel_requested_at=None,
        submitted_at=T0 - timedelta(hours=2),
    )
    stopping = {**running, "id": 8, "gpu_indices": [1], "preemptible": False, "cancel_requested_at": T0}
    preempted = {**running, "id": 10, "gpu_indices": [2], "preempt_requested_at": T0 - timedelta(seconds=2)}
    waiting = {
        "id": 9,
        "gpus": 1,
        "priority_rank": 1,
        "user": "bo",
        "name": "w",
        "time_limit_s": None,
        "submitted_at": T0,
        "preemptible": True,
    }
    config = SchedulingConfig(preempt_grace_s=5.0, preempt_min_run_s=30.0)
    active = [running, stopping, preempted]
    request = build_request(now=T0, pending=[waiting], active=active, nodes=[], config=config)
    first, second, third = request.running
    assert (first.preemptible, first.seq, first.priority_rank, first.stopping) == (True, 7, 0, False)
    assert first.waiting_s == 7200, "it ages as a waiting job would: from its submission"
    assert (second.preemptible, second.stopping) == (False, True), "a cancel asked for: it is stopping"
    assert third.stopping and third.expected_end_at == T0 + timedelta(seconds=3), "gone when its grace ends"
    assert request.pending[0].preemptible is True
    assert (request.rules.preempt_grace_s, request.rules.preempt_min_run_s) == (5.0, 30.0)
