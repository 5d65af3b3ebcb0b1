"""A worker's lease on its node, seen from the worker: may it still start a dispatch? Pure.

The controller gives a node's attempts to other nodes once it has not heard the node for the lease. A worker
whose heartbeats do not get through stops its running jobs before that (fencing). A dispatch still on its
way when the lease lapsed (in the node's queue, or read but not handled yet, as by a worker frozen with
SIGSTOP) must not start either: its attempt may run elsewhere by then. So a dispatch names the last
heartbeat the controller had heard from the node when it placed the job (`node_beat_at`, stamped by the
worker's own clock), and the worker starts it only if its lease has not lapsed since.

Times are seconds since the epoch, all of them from the worker's clock.
"""

from __future__ import annotations


def fence_after_s(*, lease_s: float, kill_grace_s: float) -> float:
    """How long a worker may go without a heartbeat getting through before it stops its jobs: early enough
    that they are gone (SIGTERM, then SIGKILL after the grace) before the controller gives up on it."""
    return max(lease_s - kill_grace_s - 5.0, lease_s / 2)


def dispatch_refusal(
    *,
    now_s: float,
    renewed_at_s: float,
    lapse_ended_at_s: float | None,
    beat_at_s: float | None,
    fence_s: float,
    lease_s: float,
) -> str | None:
    """Why the dispatch must not start (None: it may).

    `renewed_at_s`: the last time a heartbeat got through. `lapse_ended_at_s`: when the lease last came
    back after more than `fence_s` without one. `beat_at_s`: the heartbeat the dispatch names, None when the
    controller had not heard the node since it started."""
    silent_s = now_s - renewed_at_s
    if silent_s > fence_s:
        return f"no heartbeat of this node got through for {silent_s:.0f} s: its lease has lapsed"
    if lapse_ended_at_s is None:
        return None
    if beat_at_s is None:
        if now_s - lapse_ended_at_s < lease_s:
            return "this node's lease lapsed lately, and its controller had not heard it when it placed it"
        return None
    if beat_at_s < lapse_ended_at_s:
        return "it was placed before this node's lease lapsed, so it may run elsewhere by now"
    return None
