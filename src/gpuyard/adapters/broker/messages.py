"""Message bodies between controller and workers (pydantic at the edge). JSON, versioned by `type`."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# controller → worker (routing key node.<name>)


class Dispatch(_Message):
    type: Literal["dispatch"] = "dispatch"
    job_id: int
    attempt: int
    name: str
    user: str
    argv: list[str]
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    gpu_indices: list[int]
    gpu_uuids: list[str]
    time_limit_s: int | None = None
    # The node's last heartbeat the controller had heard when it placed the job (its `at`, by the node's
    # clock): the node does not start it if its lease lapsed since (see domain/lease.py).
    node_beat_at: datetime | None = None
    preemptible: bool = False  # the job is told so (GPUYARD_PREEMPTIBLE=1)


StopReason = Literal["cancelled", "preempted"]


class Cancel(_Message):
    """Stop an attempt: a cancel, or a preemption (the job goes back in line). `grace_s` is the time
    between SIGTERM and SIGKILL; None: the worker's GPUYARD_KILL_GRACE_S."""

    type: Literal["cancel"] = "cancel"
    job_id: int
    attempt: int
    reason: StopReason = "cancelled"
    grace_s: float | None = Field(None, ge=0)


NodeMessage = Annotated[Dispatch | Cancel, Field(discriminator="type")]
node_message = TypeAdapter[Dispatch | Cancel](NodeMessage)


# worker → controller (routing key events)


class GpuSample(_Message):
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None = None
    outside: list[dict[str, Any]] = Field(default_factory=list)
    links: list[int] = Field(default_factory=list)  # indices of the GPUs joined to this one by NVLink


class GpuUse(_Message):
    """What one job does on one of its GPUs (its processes are found by process group)."""

    index: int
    utilization_pct: int | None = None
    memory_used_mib: int | None = None


class JobUsage(_Message):
    job_id: int
    attempt: int
    gpus: list[GpuUse]


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"
    node: str
    backend: str
    gpus: list[GpuSample]
    running: list[tuple[int, int]] = Field(default_factory=list)
    usage: list[JobUsage] = Field(default_factory=list)
    draining: bool = False
    at: datetime


class Started(_Message):
    type: Literal["started"] = "started"
    job_id: int
    attempt: int
    node: str
    pid: int
    at: datetime


class LogChunk(_Message):
    type: Literal["log"] = "log"
    job_id: int
    attempt: int
    offset: int = Field(ge=0)
    data_b64: str

    @classmethod
    def of(cls, *, job_id: int, attempt: int, offset: int, data: bytes) -> LogChunk:
        return cls(job_id=job_id, attempt=attempt, offset=offset, data_b64=base64.b64encode(data).decode())

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.data_b64)


class Progress(_Message):
    type: Literal["progress"] = "progress"
    job_id: int
    attempt: int
    seq: int = 0  # grows with each report of an attempt: an older report never overwrites a newer one
    step: float | None = None
    total: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


Outcome = Literal["succeeded", "failed", "cancelled", "timed_out"]


class Finished(_Message):
    type: Literal["finished"] = "finished"
    job_id: int
    attempt: int
    node: str
    outcome: Outcome
    failure_class: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    detail: str | None = None
    at: datetime


Event = Annotated[Heartbeat | Started | LogChunk | Progress | Finished, Field(discriminator="type")]
event_message = TypeAdapter[Heartbeat | Started | LogChunk | Progress | Finished](Event)
