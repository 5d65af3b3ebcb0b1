"""API schemas (pydantic), kept apart from the tables: JobCreate in, JobPublic out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gpuyard.domain.jobs import MAX_ARGS, MAX_COMMAND_BYTES, MAX_NAME_LEN

PriorityName = Literal["low", "normal", "high", "urgent"]


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable code.")
    detail: Any = Field(description="What happened and what to do.")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str | list[str] = Field(
        description="An argv list (runs as given) or a shell string (runs under `sh -c`).",
        examples=[["python", "train.py", "--lr", "3e-4"]],
    )
    gpus: int = Field(1, description="Whole GPUs on one node, at least 1.")
    priority: str = Field("normal", description="low | normal | high | urgent.")
    name: str | None = Field(None, max_length=MAX_NAME_LEN, description="A label; default: the program name.")
    workdir: str | None = Field(None, description="Absolute working directory on the worker node.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the job.")
    time_limit_s: int | None = Field(None, description="Stop the job (timed_out) after this many seconds.")
    max_attempts: int | None = Field(
        None,
        description="Attempts it gets, retries included (default GPUYARD_MAX_ATTEMPTS, 3; capped by admins).",
    )
    retry_on: list[str] = Field(
        default_factory=list,
        description="Failures of its own to retry too: exit_nonzero, oom, timeout, launch_error. "
        "Infrastructure failures (node_lost, gpu_unavailable) are always retried.",
    )
    preemptible: bool = Field(
        False,
        description="It may start early, in gaps that its time limit would not fit, and in exchange be "
        "stopped (SIGTERM, then SIGKILL after GPUYARD_PREEMPT_GRACE_S) when a job ahead of it in line needs "
        "its GPUs: it then goes back to its place in line, and that attempt counts as no failure.",
    )


class AttemptPublic(BaseModel):
    number: int
    node: str
    gpu_indices: list[int]
    gpu_uuids: list[str]
    dispatched_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    signal: int | None
    failure_class: str | None


class JobGpuUsage(BaseModel):
    """What the job's current attempt does with its GPUs, from the worker's samples."""

    utilization_mean_pct: float = Field(description="Mean utilization over its GPUs and its run so far.")
    utilization_peak_pct: float
    memory_mean_mib: int = Field(description="Memory its processes hold, summed over its GPUs: mean.")
    memory_peak_mib: int
    samples: int
    idle_since: datetime | None = Field(
        description="Set while the job is flagged for holding GPUs it does not use: since when."
    )


class JobPublic(BaseModel):
    id: int
    user: str
    name: str
    command: list[str]
    gpus: int
    priority: PriorityName
    workdir: str | None
    env: dict[str, str]
    time_limit_s: int | None
    state: str
    attempt: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    failure_class: str | None
    error: str | None
    cancel_requested: bool
    held: bool = Field(
        False, description="Held by its owner or an admin: it keeps its place, does not start."
    )
    progress: float | None = Field(description="Fraction done, from what the job reports (0..1).")
    progress_step: float | None
    progress_total: float | None
    metrics: dict[str, Any] | None
    node: str | None = None
    gpu_indices: list[int] | None = None
    attempts: list[AttemptPublic] | None = None
    max_attempts: int = Field(3, description="Attempts it gets, retries included.")
    retry_on: list[str] = Field(default_factory=list, description="Failures of its own it wants retried.")
    retry_at: datetime | None = Field(
        None,
        description="Waiting out its backoff after a failed attempt: its next attempt starts no earlier.",
    )
    gpu_usage: JobGpuUsage | None = Field(None, description="null until the first usage bucket closes.")
    tensorboard_run: str | None = Field(
        None, description="Its run under the TensorBoard log dir ($GPUYARD_TB_DIR), once it started."
    )
    tensorboard_url: str | None = Field(None, description="Link to its run, where a TensorBoard is served.")
    preemptible: bool = Field(False, description="It may be stopped and put back in line for a job ahead.")
    preemptions: int = Field(0, description="How many times it was stopped and put back in line so.")
    preempting: bool = Field(
        False, description="Being stopped now for a job ahead of it in line (it then waits again)."
    )


class WaitPublic(BaseModel):
    """Where a waiting job stands: its place, when it should start (with a band), and why it waits."""

    position: int | None = Field(description="1 is next in line; 0: starting now.")
    estimated_start_at: datetime | None = Field(description="null: no start can be foreseen.")
    estimated_start_earliest_at: datetime | None = Field(
        None, description="The band around the estimated start: its earliest end."
    )
    estimated_start_latest_at: datetime | None = Field(
        None, description="The band around the estimated start: its latest end."
    )
    estimated_wait_s: float | None
    reason: str = Field(description="A code: starting, gpus_busy, behind_earlier_jobs, held, ...")
    reason_text: str = Field(description="The reason in plain words.")
    source: str | None = Field(
        None,
        description="Where the runtimes behind the estimate come from: progress | time_limit | "
        "history | default (null for a job already starting).",
    )
    backfill: bool = Field(
        False, description="Starts ahead of earlier jobs: its time limit proves it delays none of them."
    )


class JobSubmitted(WaitPublic, JobPublic):
    """A job just submitted, with where it stands."""


class WaitingJob(BaseModel):
    """A waiting job in brief, as everyone may see it in the queue."""

    id: int
    user: str
    name: str
    gpus: int
    priority: PriorityName
    held: bool = Field(description="Held by its owner or an admin: it keeps its place, does not start.")
    preemptible: bool = Field(False, description="It may be stopped and put back in line for a job ahead.")


class JobWaitPublic(WaitPublic, WaitingJob):
    """GET /jobs/{id}/wait: where one waiting job stands and why."""

    now: datetime = Field(description="When the estimate was made.")


class PriorityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: str = Field(description="low | normal | high | urgent (urgent: admins, by default).")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class LogsPublic(BaseModel):
    job_id: int
    attempt: int
    offset: int
    next_offset: int
    data: str
    state: str
    complete: bool = Field(description="True once the job is final and everything has been read.")


class QueueEntry(WaitPublic, WaitingJob):
    submitted_at: datetime


class QueuePublic(BaseModel):
    now: datetime
    data: list[QueueEntry]


class GpuProcessPublic(BaseModel):
    pid: int
    user: str | None = None
    used_memory_mib: int | None = None
    command: str | None = None


class GpuPublic(BaseModel):
    node: str
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None
    job_id: int | None
    job_user: str | None
    job_name: str | None
    job_idle_since: datetime | None = Field(
        None, description="Set while the job holding it is flagged for not using its GPUs: since when."
    )
    outside_processes: list[GpuProcessPublic]
    node_online: bool
    links: list[int] = Field(default_factory=list, description="GPUs of this node joined to it by NVLink.")


class NodePublic(BaseModel):
    name: str
    backend: str
    online: bool
    last_seen_at: datetime
    gpus: int


class GpusPublic(BaseModel):
    nodes: list[NodePublic]
    gpus: list[GpuPublic]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    is_admin: bool = False


class UserPublic(BaseModel):
    id: int
    name: str
    is_admin: bool


class UserCreated(UserPublic):
    token: str = Field(description="Shown once: store it now.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


def command_limits() -> str:
    return f"at most {MAX_ARGS} arguments and {MAX_COMMAND_BYTES} bytes"
