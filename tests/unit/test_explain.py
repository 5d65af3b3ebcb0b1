"""Plain words for why a job waits and when it should start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpuyard.scheduling.explain import explain
from gpuyard.scheduling.model import (
    Estimate,
    GpuSlot,
    NodeView,
    PendingJob,
    RunningJob,
    ScheduleRequest,
    WaitReason,
)
from gpuyard.scheduling.policy import schedule

R = WaitReason
NOW = datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
AT_1405 = datetime(2024, 5, 1, 14, 5, tzinfo=UTC)


def estimate(reason: WaitReason, **fields: Any) -> Estimate:
    base: dict[str, Any] = {"job_id": 900, "position": 3, "start_at": AT_1405, "reason": reason}
    base.update(fields)
    return Estimate(**base)


def test_gpus_busy_names_the_count_the_busy_gpus_the_time_and_the_blocking_job() -> None:
    e = estimate(R.GPUS_BUSY, gpus_busy=4, gpus_total=4, blocking_job_id=812, blocking_progress=0.8)
    text = explain(e, gpus=2, now=NOW)
    assert (
        text == "waiting for 2 GPUs: 4 of 4 busy; the next one frees at about 14:05 UTC (job 812, 80% done)"
    )


@pytest.mark.parametrize(
    ("fields", "gpus", "pieces", "absent"),
    [
        pytest.param(
            {"gpus_busy": 3, "gpus_total": 4, "blocking_job_id": 812, "blocking_progress": 0.25},
            1,
            ["waiting for 1 GPU:", "3 of 4 busy", "14:05 UTC", "job 812", "25% done"],
            ["1 GPUs"],
            id="singular-with-progress",
        ),
        pytest.param(
            {"gpus_busy": 8, "gpus_total": 8, "blocking_job_id": 77},
            4,
            ["4 GPUs", "8 of 8 busy", "14:05 UTC", "(job 77)"],
            ["done"],
            id="no-progress",
        ),
        pytest.param(
            {"gpus_busy": 2, "gpus_total": 2},
            2,
            ["2 GPUs", "2 of 2 busy", "14:05 UTC"],
            ["job"],
            id="no-blocking-job",
        ),
        pytest.param(
            {"gpus_busy": 2, "gpus_total": 2, "start_at": AT_1405 + timedelta(days=1)},
            2,
            ["2024-05-02 14:05 UTC"],
            [],
            id="tomorrow-shows-the-date",
        ),
        pytest.param(
            {"gpus_busy": 2, "gpus_total": 2, "start_at": None},
            2,
            ["unknown time"],
            [],
            id="unknown-start",
        ),
    ],
)
def test_gpus_busy_variants(fields: dict[str, Any], gpus: int, pieces: list[str], absent: list[str]) -> None:
    text = explain(estimate(R.GPUS_BUSY, **fields), gpus=gpus, now=NOW)
    for piece in pieces:
        assert piece in text
    for piece in absent:
        assert piece not in text


@pytest.mark.parametrize(
    ("reason", "gpus", "pieces"),
    [
        (R.STARTING, 2, ["starting now"]),
        (R.NO_NODE_FITS, 16, ["16 GPUs", "no online node"]),
        (R.NO_NODE_ONLINE, 2, ["2 GPUs", "online", "gpuyard worker"]),
        (R.GPU_HELD_OUTSIDE, 3, ["3 GPUs", "outside gpuyard", "gpuyard gpus"]),
        (R.BEHIND_EARLIER, 1, ["1 GPU", "behind 2 jobs", "earlier", "14:05 UTC"]),
        (R.BEHIND_HIGHER_PRIORITY, 2, ["2 GPUs", "behind 2 jobs", "priority", "14:05 UTC"]),
    ],
)
def test_every_reason_has_plain_words(reason: WaitReason, gpus: int, pieces: list[str]) -> None:
    start = (
        NOW
        if reason is R.STARTING
        else None
        if reason in (R.NO_NODE_FITS, R.NO_NODE_ONLINE, R.GPU_HELD_OUTSIDE)
        else AT_1405
    )
    text = explain(
        estimate(reason, start_at=start, jobs_ahead=2, gpus_busy=4, gpus_total=4), gpus=gpus, now=NOW
    )
    for piece in pieces:
        assert piece in text, text


def test_behind_one_job_is_singular() -> None:
    text = explain(estimate(R.BEHIND_EARLIER, jobs_ahead=1), gpus=1, now=NOW)
    assert "behind 1 job " in text


def test_each_reason_reads_differently() -> None:
    texts = {
        reason: explain(estimate(reason, jobs_ahead=2, gpus_busy=4, gpus_total=4), gpus=2, now=NOW)
        for reason in WaitReason
    }
    assert all(t.strip() for t in texts.values())
    assert len(set(texts.values())) == len(WaitReason)


def test_explains_a_real_decision() -> None:
    node = NodeView("a", (GpuSlot(0), GpuSlot(1)))
    req = ScheduleRequest(
        now=NOW,
        pending=(PendingJob(job_id=5, seq=5, gpus=2, priority_rank=1),),
        running=(
            RunningJob(812, "a", (0,), AT_1405, progress=0.8),
            RunningJob(813, "a", (1,), AT_1405 - timedelta(minutes=20), progress=0.9),
        ),
        nodes=(node,),
    )
    text = explain(schedule(req).estimates[5], gpus=2, now=NOW)
    assert (
        text == "waiting for 2 GPUs: 2 of 2 busy; the next one frees at about 14:05 UTC (job 812, 80% done)"
    )
