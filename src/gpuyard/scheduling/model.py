"""The scheduling policy's input and output: plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class RuntimeSource(StrEnum):
    """Where an expected runtime comes from, best first."""

    PROGRESS = "progress"  # a running job's own progress rate
    TIME_LIMIT = "time_limit"  # an upper bound the worker enforces
    HISTORY = "history"  # similar jobs of the past (same user and name, or same command)
    DEFAULT = "default"  # nothing known: the configured default


@dataclass(frozen=True)
class PendingJob:
    """A job in the wait line. `seq` is its submission order (FIFO tie-break).

    `expected_runtime_s` (from history) is used for estimates; `time_limit_s` is the only runtime the
    policy trusts when it lets a job start ahead of an earlier one (backfill). `waiting_s` feeds aging.
    """

    job_id: int
    seq: int
    gpus: int
    priority_rank: int
    user: str = ""
    time_limit_s: float | None = None
    expected_runtime_s: float | None = None
    held: bool = False
    waiting_s: float = 0.0
    preemptible: bool = False  # may start in any gap and be stopped and put back when a job ahead needs it


@dataclass(frozen=True)
class RunningJob:
    """A job holding GPUs (dispatched or running). `expected_end_at` None means unknown;
    `time_limit_at` is when the worker stops it (its start plus its time limit), if it has a limit.

    A `preemptible` job gives its GPUs up to any waiting job ahead of it in line (by `priority_rank`, aged by
    `waiting_s`, the time since its submission, as a waiting job's is; then `seq`): the policy then asks for
    it to be stopped (`Decision.preemptions`) and it goes back to its place in line. `stopping` means a stop
    was asked for already and not yet done; its `expected_end_at` is then when the stop's grace runs out
    (or sooner, if it should end by itself)."""

    job_id: int
    node: str
    gpu_indices: tuple[int, ...]
    expected_end_at: datetime | None = None
    progress: float | None = None
    user: str = ""
    source: RuntimeSource = RuntimeSource.DEFAULT
    started_at: datetime | None = None
    time_limit_at: datetime | None = None
    preemptible: bool = False
    seq: int = 0
    priority_rank: int = 1
    stopping: bool = False
    waiting_s: float = 0.0


@dataclass(frozen=True)
class GpuSlot:
    """A GPU as the policy sees it. `outside` means a process outside gpuyard holds it."""

    index: int
    outside: bool = False


@dataclass(frozen=True)
class NodeView:
    """A node. `links` lists GPU pairs joined by a fast link (NVLink): multi-GPU jobs prefer them."""

    name: str
    gpus: tuple[GpuSlot, ...]
    online: bool = True
    links: frozenset[tuple[int, int]] = frozenset()


@dataclass(frozen=True)
class Rules:
    """The configurable parts of the policy.

    backfill: a later job may start now when its time limit proves it ends before every earlier job's
        reserved start on the GPUs it takes (no job is ever delayed by one behind it).
    aging_s: a waiting job gains one priority level per this many seconds of waiting (None: off), up to
        `aging_max_rank`.
    max_gpus_per_user: GPUs one user may hold at once (None: no limit).
    fair_share: within a priority, users with less recent GPU time (`usage_s`, GPU-seconds) go first.
    preempt_min_run_s: a preemptible job starts ahead of earlier jobs only in a gap that lets it run at least
        this long before it is asked to stop, plus the grace to stop (or its planned runtime, if shorter).
    preempt_grace_s: how long a preempted job has to stop (SIGTERM, then SIGKILL); the job that preempts it
        is estimated to start that much later.
    """

    backfill: bool = True
    aging_s: float | None = None
    aging_max_rank: int = 2
    max_gpus_per_user: int | None = None
    fair_share: bool = False
    usage_s: dict[str, float] = field(default_factory=dict)
    preempt_min_run_s: float = 600.0
    preempt_grace_s: float = 60.0


@dataclass(frozen=True)
class ScheduleRequest:
    now: datetime
    pending: tuple[PendingJob, ...]
    running: tuple[RunningJob, ...]
    nodes: tuple[NodeView, ...]
    default_runtime_s: float = 3600.0
    rules: Rules = field(default_factory=Rules)


class WaitReason(StrEnum):
    STARTING = "starting"
    GPUS_BUSY = "gpus_busy"
    BEHIND_EARLIER = "behind_earlier_jobs"
    BEHIND_HIGHER_PRIORITY = "behind_higher_priority"
    GPU_HELD_OUTSIDE = "gpu_held_outside"
    NO_NODE_FITS = "no_node_fits"
    NO_NODE_ONLINE = "no_node_online"
    HELD = "held"
    USER_LIMIT = "user_limit"
    PREEMPTING = "preempting"  # its GPUs are held by preemptible jobs behind it, which are being stopped


@dataclass(frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Estimate:
    """When a waiting job should start, and why it waits: data, never a log line.

    `position` counts the jobs that wait (1 is next); a job that starts in this pass has position 0.
    `start_at` None means no start can be foreseen (no node fits, or GPUs held outside gpuyard).
    `blocking_job_id` is the job whose end the start waits for, where there is one: a running job, or one
    ahead in line that is expected to run first.
    `source` says where the runtimes behind the estimate come from (the weakest of them), and
    `early_s`/`late_s` the band around `start_at` that follows from it. `backfill` marks a job that starts
    (or will start) ahead of earlier jobs because its time limit proves it delays none of them.
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
    source: RuntimeSource = RuntimeSource.DEFAULT
    early_s: float = 0.0
    late_s: float = 0.0
    backfill: bool = False


@dataclass(frozen=True)
class Preemption:
    """Stop running job `job_id` (preemptible, behind `for_job_id` in line) so `for_job_id` can start; the
    stopped job goes back to its place in line."""

    job_id: int
    for_job_id: int


@dataclass(frozen=True)
class Decision:
    placements: tuple[Placement, ...]
    estimates: dict[int, Estimate] = field(default_factory=dict)
    # The pass's simulation at the end of the line (a policy.Timeline), for estimating newcomers.
    timeline: object | None = field(default=None, compare=False, repr=False)
    # Running preemptible jobs to stop now, each for the waiting job ahead of it that takes its GPUs.
    preemptions: tuple[Preemption, ...] = ()
    # When a pass is next due to stop a running preemptible job (a grace before a job ahead of it is booked
    # on its GPUs), if nothing else brings a pass sooner; None: no stop is planned.
    preempt_at: datetime | None = None
