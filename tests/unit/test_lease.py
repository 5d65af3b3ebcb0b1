"""When a worker may still start a dispatch (gpuyard.domain.lease), as a table of cases."""

from __future__ import annotations

import pytest

from gpuyard.domain.lease import dispatch_refusal, fence_after_s

NOW = 1_000_000.0
FENCE_S = 3.0
LEASE_S = 6.0


@pytest.mark.parametrize(
    ("renewed_ago_s", "lapse_ended_ago_s", "beat_ago_s", "refused"),
    [
        pytest.param(0.5, None, 1.0, None, id="never-lapsed"),
        pytest.param(0.5, None, None, None, id="never-lapsed-controller-restarted"),
        pytest.param(3.5, None, 1.0, "lapsed", id="lapsed-now"),
        pytest.param(0.2, 0.2, 9.0, "placed before", id="placed-before-the-lapse"),
        pytest.param(0.2, 5.0, 4.0, None, id="placed-after-the-lapse"),
        pytest.param(0.2, 5.0, 5.0, None, id="placed-on-the-heartbeat-that-ended-it"),
        pytest.param(0.2, 2.0, None, "lapsed lately", id="unknown-beat-recent-lapse"),
        pytest.param(0.2, 60.0, None, None, id="unknown-beat-old-lapse"),
    ],
)
def test_dispatch_refusal(
    renewed_ago_s: float, lapse_ended_ago_s: float | None, beat_ago_s: float | None, refused: str | None
) -> None:
    why = dispatch_refusal(
        now_s=NOW,
        renewed_at_s=NOW - renewed_ago_s,
        lapse_ended_at_s=None if lapse_ended_ago_s is None else NOW - lapse_ended_ago_s,
        beat_at_s=None if beat_ago_s is None else NOW - beat_ago_s,
        fence_s=FENCE_S,
        lease_s=LEASE_S,
    )
    assert (why is None) == (refused is None)
    assert refused is None or (why is not None and refused in why)


@pytest.mark.parametrize(
    ("lease_s", "grace_s", "fence_s"), [(60, 10, 45), (6, 1, 3), (20, 10, 10), (100, 0, 95)]
)
def test_fence_after_s_stops_jobs_before_the_lease_runs_out(
    lease_s: float, grace_s: float, fence_s: float
) -> None:
    assert fence_after_s(lease_s=lease_s, kill_grace_s=grace_s) == fence_s
