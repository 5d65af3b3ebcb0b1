"""This node's lease, as its worker keeps it (the rule is in domain/lease.py).

The lease file is touched whenever a heartbeat got through; the job supervisors stop their jobs when it is
older than the fence. The worker also remembers when the lease last came back after a lapse, to refuse a
dispatch the controller placed before it heard the node again.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from gpuyard.adapters.broker.messages import Dispatch
from gpuyard.domain.lease import dispatch_refusal, fence_after_s


class NodeLease:
    def __init__(self, path: Path, *, lease_s: float, kill_grace_s: float) -> None:
        self.path = path
        self.lease_s = lease_s
        self.fence_s = fence_after_s(lease_s=lease_s, kill_grace_s=kill_grace_s)
        self.renewed_at = _mtime(path)  # by this worker, or by the last one on this node
        self.lapse_ended_at: float | None = None

    def silent_s(self) -> float:
        """Seconds since a heartbeat last got through."""
        return time.time() - self.renewed_at

    def renew(self, beat_at: datetime) -> None:
        """The heartbeat sent at `beat_at` got through. After a lapse, that beat is the first the controller
        can have heard again: a dispatch that names an older one may not start."""
        now = time.time()
        if now - self.renewed_at > self.fence_s:
            self.lapse_ended_at = beat_at.timestamp()
        self.renewed_at = now
        try:
            self.path.touch()
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def refusal(self, dispatch: Dispatch) -> str | None:
        """Why `dispatch` may not start any more, or None."""
        return dispatch_refusal(
            now_s=time.time(),
            renewed_at_s=self.renewed_at,
            lapse_ended_at_s=self.lapse_ended_at,
            beat_at_s=dispatch.node_beat_at.timestamp() if dispatch.node_beat_at else None,
            fence_s=self.fence_s,
            lease_s=self.lease_s,
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
