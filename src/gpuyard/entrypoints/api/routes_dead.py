"""/api/v1/dead and /api/v1/jobs/{id}/requeue: what could not run, and sending it back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gpuyard.entrypoints.api.deps import ControllerDep, CurrentUser, DeadLetterId, JobId
from gpuyard.entrypoints.api.routes_jobs import ERRORS, job_public
from gpuyard.entrypoints.api.schemas import JobPublic

router = APIRouter(prefix="/api/v1", tags=["dead letters"])


class DeadLetterPublic(BaseModel):
    id: int
    kind: str = Field(description="job: it used up its attempts; message: RabbitMQ could not deliver it.")
    job_id: int | None
    user: str | None = Field(description="The job's owner, where there is a job.")
    reason: str
    failure_class: str | None
    attempts: int | None
    log_tail: str | None = Field(description="The end of its last attempt's output (jobs).")
    routing_key: str | None = Field(description="Where the message was going (messages).")
    body: dict[str, Any] | None = Field(description="The message (messages).")
    created_at: datetime
    requeued_at: datetime | None


@router.get("/dead", response_model=list[DeadLetterPublic], responses=ERRORS)
async def list_dead(
    user: CurrentUser,
    controller: ControllerDep,
    include_requeued: Annotated[bool, Query(description="Also those already requeued.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterPublic]:
    """Dead letters, newest first: your jobs' (admins: all, and the messages)."""
    rows = await controller.dead.list_dead(user, include_requeued=include_requeued, limit=limit)
    return [DeadLetterPublic(**r) for r in rows]


@router.post("/dead/{dead_id}/requeue", response_model=DeadLetterPublic, responses=ERRORS)
async def requeue_dead(
    dead_id: DeadLetterId, user: CurrentUser, controller: ControllerDep
) -> DeadLetterPublic:
    """Send it back: a job to the line with a fresh budget of attempts; a message to where it was going."""
    return DeadLetterPublic(**await controller.dead.requeue(user, dead_id))


@router.post("/jobs/{job_id}/requeue", response_model=JobPublic, responses=ERRORS)
async def requeue_job(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobPublic:
    """Send a failed or timed-out job back in line (same id, a fresh budget of attempts)."""
    await controller.dead.requeue_job(user, job_id)
    return job_public(await controller.jobs.get(user, job_id), controller)
