"""The scheduling policy's input and output: plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


@dataclass(frozen=True)
class PendingJob:
    """A job in the wait line. `seq` is its submission order (FIFO tie-break)."""

    job_id: int
    seq: int
    gpus: int
    priority_rank: int
    user: str = ""
    time_limit_s: float | None = None
    expected_runtime_s: float | None = None


@dataclass(frozen=True)
class RunningJob:
    """A job holding GPUs (dispatched or running). `expected_end_at` None means unknown."""

    job_id: int
    node: str
    gpu_indices: tuple[int, ...]
    expected_end_at: datetime | None = None
    progress: float | None = None


@dataclass(frozen=True)
class GpuSlot:
    """A GPU as the policy sees it. `outside` means a process outside gpuyard holds it."""

    index: int
    outside: bool = False


@dataclass(frozen=True)
class NodeView:
    name: str
    gpus: tuple[GpuSlot, ...]
    online: bool = True


@dataclass(frozen=True)
class ScheduleRequest:
    now: datetime
    pending: tuple[PendingJob, ...]
    running: tuple[RunningJob, ...]
    nodes: tuple[NodeView, ...]
    default_runtime_s: float = 3600.0


class WaitReason(StrEnum):
    STARTING = "starting"
    GPUS_BUSY = "gpus_busy"
    BEHIND_EARLIER = "behind_earlier_jobs"
    BEHIND_HIGHER_PRIORITY = "behind_higher_priority"
    GPU_HELD_OUTSIDE = "gpu_held_outside"
    NO_NODE_FITS = "no_node_fits"
    NO_NODE_ONLINE = "no_node_online"


@dataclass(frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Estimate:
    """When a waiting job should start, and why it waits: data, never a log line.

    `position` counts the jobs that wait (1 is next); a job that starts in this pass has position 0.
    `start_at` None means no start can be foreseen (no node fits, or GPUs held outside gpuyard).
    `blocking_job_id` is the job whose end the start waits for, where there is one: a running job, or one
    ahead in line that is expected to run first.
    """

    job_id: int
    position: int
    start_at: datetime | None
    reason: WaitReason
    gpus_busy: int = 0
    gpus_total: int = 0
    jobs_ahead: int = 0
    gpus_ahead: int = 0
    blocking_job_id: int | None = None
    blocking_progress: float | None = None


@dataclass(frozen=True)
class Decision:
    placements: tuple[Placement, ...]
    estimates: dict[int, Estimate] = field(default_factory=dict)
    # The pass's simulation at the end of the line (a policy.Timeline), for estimating newcomers.
    timeline: object | None = field(default=None, compare=False, repr=False)
