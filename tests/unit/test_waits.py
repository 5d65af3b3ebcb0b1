"""Where a waiting job stands, as the API reports it: the band around the estimated start, its source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpuyard.scheduling.model import Estimate, RuntimeSource, WaitReason
from gpuyard.services.waits import describe_wait

NOW = datetime(2024, 5, 1, 13, 40, tzinfo=UTC)
MIN = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("start_in", "early_s", "late_s", "earliest_in", "latest_in"),
    [
        (25 * MIN, 900.0, 600.0, 10 * MIN, 35 * MIN),
        (25 * MIN, 0.0, 0.0, 25 * MIN, 25 * MIN),
        (5 * MIN, 900.0, 0.0, 0 * MIN, 5 * MIN),  # never before now
    ],
    ids=["band", "exact", "clamped-to-now"],
)
def test_the_band_lies_around_the_estimated_start(
    start_in: timedelta, early_s: float, late_s: float, earliest_in: timedelta, latest_in: timedelta
) -> None:
    estimate = Estimate(
        job_id=7,
        position=2,
        start_at=NOW + start_in,
        reason=WaitReason.GPUS_BUSY,
        gpus_busy=4,
        gpus_total=4,
        source=RuntimeSource.TIME_LIMIT,
        early_s=early_s,
        late_s=late_s,
    )
    wait = describe_wait(estimate, gpus=1, now=NOW)
    assert (wait.estimated_start_earliest_at, wait.estimated_start_latest_at) == (
        NOW + earliest_in,
        NOW + latest_in,
    )
    assert wait.estimated_wait_s == start_in.total_seconds()
    assert (wait.position, wait.reason, wait.source, wait.backfill) == (2, "gpus_busy", "time_limit", False)


def test_no_foreseeable_start_has_no_band() -> None:
    estimate = Estimate(job_id=7, position=1, start_at=None, reason=WaitReason.NO_NODE_FITS, early_s=60.0)
    wait = describe_wait(estimate, gpus=8, now=NOW)
    assert wait.estimated_start_at is None and wait.estimated_wait_s is None
    assert (wait.estimated_start_earliest_at, wait.estimated_start_latest_at) == (None, None)
    assert wait.source == "default" and "8 GPUs" in wait.reason_text


def test_backfill_is_reported() -> None:
    estimate = Estimate(
        job_id=7,
        position=0,
        start_at=NOW,
        reason=WaitReason.STARTING,
        backfill=True,
        source=RuntimeSource.PROGRESS,
    )
    wait = describe_wait(estimate, gpus=1, now=NOW)
    assert wait.backfill is True and wait.source == "progress" and wait.estimated_wait_s == 0.0
