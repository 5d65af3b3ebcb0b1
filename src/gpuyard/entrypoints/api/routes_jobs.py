"""/api/v1/jobs and /api/v1/queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse

from gpuyard.domain.errors import GpuyardError, InvalidJobSpec
from gpuyard.domain.jobs import JobState, Priority, make_spec, tensorboard_run
from gpuyard.entrypoints.api.controller import Controller
from gpuyard.entrypoints.api.deps import MAX_ID, AttemptQuery, ControllerDep, CurrentUser, JobId, OffsetQuery
from gpuyard.entrypoints.api.schemas import (
    AttemptPublic,
    ErrorBody,
    JobCreate,
    JobGpuUsage,
    JobPublic,
    JobsPublic,
    JobSubmitted,
    JobWaitPublic,
    LogsPublic,
    PriorityChange,
    QueueEntry,
    QueuePublic,
)
from gpuyard.services.auth import check_user_name
from gpuyard.services.waits import STARTING_NOW, wait_info

router = APIRouter(prefix="/api/v1", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422)}
# Routes that read a body also answer 413 to one over the cap (entrypoints/api/limits.py).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 413: {"model": ErrorBody}}
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {**BODY_ERRORS, 429: {"model": ErrorBody}}
MAX_LOG_BYTES = 1024 * 1024


def _job_fields(row: dict[str, Any], *, tensorboard_url: str | None = None) -> dict[str, Any]:
    total, step = row.get("progress_total"), row.get("progress_step")
    run = tensorboard_run(row["id"], row["name"], row["attempt"]) if row["attempt"] else None
    progress = min(max(step / total, 0.0), 1.0) if total and step is not None else None
    attempts = row.get("attempts")
    return {
        "id": row["id"],
        "user": row["user"],
        "name": row["name"],
        "command": row["argv"],
        "gpus": row["gpus"],
        "priority": row["priority"],
        "workdir": row["workdir"],
        "env": row["env"],
        "time_limit_s": row["time_limit_s"],
        "state": row["state"],
        "attempt": row["attempt"],
        "submitted_at": row["submitted_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "exit_code": row["exit_code"],
        "failure_class": row["failure_class"],
        "error": row["error"],
        "cancel_requested": row["cancel_requested_at"] is not None,
        "held": is_held(row),
        "progress": progress,
        "progress_step": step,
        "progress_total": total,
        "metrics": row["metrics"],
        "node": row.get("node"),
        "gpu_indices": row.get("gpu_indices"),
        "attempts": [AttemptPublic(**a) for a in attempts] if attempts is not None else None,
        "max_attempts": row.get("max_attempts") or 1,
        "retry_on": row.get("retry_on") or [],
        "retry_at": row.get("retry_at") if row["state"] == JobState.QUEUED.value else None,
        "gpu_usage": _gpu_usage(row),
        "tensorboard_run": run,
        "tensorboard_url": run_link(tensorboard_url, run) if tensorboard_url and run else None,
        "preemptible": bool(row.get("preemptible")),
        "preemptions": row.get("preemptions") or 0,
        "preempting": row.get("preempt_requested_at") is not None,
    }


def _gpu_usage(row: dict[str, Any]) -> JobGpuUsage | None:
    if not row.get("usage_samples"):
        return None
    return JobGpuUsage(
        utilization_mean_pct=round(row["gpu_util_mean"], 1),
        utilization_peak_pct=round(row["gpu_util_peak"], 1),
        memory_mean_mib=round(row["gpu_mem_mean_mib"]),
        memory_peak_mib=row["gpu_mem_peak_mib"],
        samples=row["usage_samples"],
        idle_since=row.get("gpu_idle_since") if row["state"] == JobState.RUNNING.value else None,
    )


def run_link(tensorboard_url: str, run: str) -> str:
    """A link to TensorBoard's time series showing just this run (`runFilter` is a regex; a run name is made
    of letters, digits, `._-/`, of which only the dot needs escaping)."""
    return (
        f"{tensorboard_url.rstrip('/')}/?runFilter={quote('^' + run.replace('.', chr(92) + '.'))}#timeseries"
    )


def is_held(row: dict[str, Any]) -> bool:
    """Held and still waiting (a cancelled job that was held is no longer held)."""
    return row.get("held_at") is not None and row["state"] == JobState.QUEUED.value


def _waiting_job(row: dict[str, Any]) -> dict[str, Any]:
    """A waiting job in brief (the queue's columns): no command, no environment."""
    return {
        "id": row["id"],
        "user": row["user"],
        "name": row["name"],
        "gpus": row["gpus"],
        "priority": row["priority"],
        "held": row["held_at"] is not None,
        "preemptible": bool(row.get("preemptible")),
    }


def job_public(row: dict[str, Any], controller: Controller) -> JobPublic:
    return JobPublic(**_job_fields(row, tensorboard_url=controller.settings.tensorboard_url))


def _aware(at: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, as every time the API gives is."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def _parse_states(values: list[str]) -> list[str]:
    states = [s.strip() for v in values for s in v.split(",") if s.strip()]
    known = {s.value for s in JobState}
    for state in states:
        if state not in known:
            raise InvalidJobSpec(f"Unknown state {state!r}: use one of {', '.join(sorted(known))}.")
    return states


@router.post(
    "/jobs", status_code=status.HTTP_201_CREATED, response_model=JobSubmitted, responses=SUBMIT_ERRORS
)
async def submit_job(body: JobCreate, user: CurrentUser, controller: ControllerDep) -> Response:
    """Queue a job. The answer says its place in line, when it should start and why it waits."""
    try:
        spec = make_spec(
            command=body.command,
            gpus=body.gpus,
            priority=body.priority,
            name=body.name,
            workdir=body.workdir,
            env=body.env,
            time_limit_s=body.time_limit_s,
            max_attempts=body.max_attempts,
            retry_on=body.retry_on,
            preemptible=body.preemptible,
        )
        row, wait = await controller.jobs.submit(user, spec)
    except GpuyardError as e:
        controller.metrics.job_submitted(outcome=e.code)
        raise
    controller.metrics.job_submitted(outcome="accepted")
    if wait is None:  # placed, and past the pass that placed it
        wait = STARTING_NOW
    tensorboard_url = controller.settings.tensorboard_url
    submitted = JobSubmitted(**_job_fields(row, tensorboard_url=tensorboard_url), **wait.__dict__)
    # The hot path: serialised once here rather than validated again against the response model.
    return Response(
        submitted.model_dump_json(), status_code=status.HTTP_201_CREATED, media_type="application/json"
    )


@router.get("/jobs", response_model=JobsPublic, responses=ERRORS)
async def list_jobs(
    user: CurrentUser,
    controller: ControllerDep,
    state: Annotated[list[str], Query(description="Filter by state; repeat or comma-separate.")] = [],  # noqa: B006
    owner: Annotated[str | None, Query(alias="user", description="Filter by owner (admins).")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    name: Annotated[str | None, Query(max_length=200, description="Part of the name, any case.")] = None,
    submitted_after: Annotated[datetime | None, Query(description="Submitted at or after this time.")] = None,
    submitted_before: Annotated[datetime | None, Query(description="Submitted before this time.")] = None,
) -> JobsPublic:
    """Jobs, newest first. Users see their own; admins anyone's."""
    if owner is not None:
        check_user_name(owner)
    before_id = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10 and int(cursor) <= MAX_ID):
            raise InvalidJobSpec("The cursor is invalid: pass the `next_cursor` of the previous page.")
        before_id = int(cursor)
    rows = await controller.jobs.list_jobs(
        user,
        states=_parse_states(state),
        owner=owner,
        before_id=before_id,
        limit=limit + 1,
        name=name,
        submitted_after=_aware(submitted_after),
        submitted_before=_aware(submitted_before),
    )
    page = rows[:limit]
    next_cursor = str(page[-1]["id"]) if len(rows) > limit else None
    return JobsPublic(data=[job_public(r, controller) for r in page], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=ERRORS)
async def get_job(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobPublic:
    """One job with its attempts (node, GPUs, start, end, exit code)."""
    return job_public(await controller.jobs.get(user, job_id, with_attempts=True), controller)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
async def cancel_job(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobPublic:
    """Cancel a job: a waiting one at once; a running one gets SIGTERM, then SIGKILL after a grace period."""
    return job_public(await controller.jobs.cancel(user, job_id), controller)


@router.post("/jobs/{job_id}/hold", response_model=JobPublic, responses=ERRORS)
async def hold_job(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobPublic:
    """Hold a waiting job: it keeps its place in line but does not start until released."""
    return job_public(await controller.jobs.hold(user, job_id), controller)


@router.post("/jobs/{job_id}/release", response_model=JobPublic, responses=ERRORS)
async def release_job(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobPublic:
    """Release a held job: it starts when its turn comes."""
    return job_public(await controller.jobs.release(user, job_id), controller)


@router.post("/jobs/{job_id}/priority", response_model=JobPublic, responses=BODY_ERRORS)
async def change_priority(
    job_id: JobId, body: PriorityChange, user: CurrentUser, controller: ControllerDep
) -> JobPublic:
    """Give a waiting job another priority. Within a priority, jobs keep their submission order."""
    priority = Priority.parse(body.priority)
    return job_public(await controller.jobs.set_priority(user, job_id, priority), controller)


@router.get("/jobs/{job_id}/wait", response_model=JobWaitPublic, responses=ERRORS)
async def job_wait(job_id: JobId, user: CurrentUser, controller: ControllerDep) -> JobWaitPublic:
    """Where a waiting job stands: place in line, estimated start with its band, and why it waits.
    Anyone may ask, as anyone sees the queue; a job that is not waiting gets 409."""
    row, wait, now = await controller.jobs.wait(user, job_id)
    return JobWaitPublic(**_waiting_job(row), now=now, **wait.__dict__)


@router.get("/jobs/{job_id}/logs", response_model=LogsPublic, responses=ERRORS)
async def job_logs(
    job_id: JobId,
    user: CurrentUser,
    controller: ControllerDep,
    offset: OffsetQuery = 0,
    attempt: AttemptQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_BYTES)] = 256 * 1024,
) -> LogsPublic:
    """Output (stdout and stderr) of a job from a byte offset; poll with `next_offset`."""
    job, number, data, next_offset = await controller.jobs.logs(
        user, job_id, offset=offset, attempt=attempt, limit_bytes=limit
    )
    text, next_offset = _complete_utf8(data, next_offset)
    final = JobState(job["state"]).is_final
    complete = final and not data and (attempt is None or attempt == job["attempt"])
    return LogsPublic(
        job_id=job_id,
        attempt=number,
        offset=offset,
        next_offset=next_offset,
        data=text,
        state=job["state"],
        complete=complete,
    )


def _complete_utf8(data: bytes, next_offset: int) -> tuple[str, int]:
    """Decode, leaving an incomplete trailing UTF-8 sequence for the next read."""
    cut = len(data)
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        if byte >= 0xC0 and back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4):
            cut = len(data) - back
        break
    return data[:cut].decode("utf-8", errors="replace"), next_offset - (len(data) - cut)


@router.get("/jobs/{job_id}/logs/follow", responses=ERRORS, response_class=StreamingResponse)
async def follow_logs(
    job_id: JobId,
    user: CurrentUser,
    controller: ControllerDep,
    offset: OffsetQuery = 0,
) -> StreamingResponse:
    """The job's output as a text stream that ends when the job ends (like `tail -f`)."""
    await controller.jobs.get(user, job_id)  # 404 / 403 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        position, attempt = offset, None
        while True:
            job, number, data, position_next = await controller.jobs.logs(
                user, job_id, offset=position, attempt=None, limit_bytes=MAX_LOG_BYTES
            )
            if attempt is not None and number != attempt:
                position, attempt = 0, number  # a new attempt writes a new log
                continue
            attempt = number
            if data:
                position = position_next
                yield data
                continue
            if JobState(job["state"]).is_final:
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")


@router.get("/queue", response_model=QueuePublic, responses=ERRORS)
async def queue(_user: CurrentUser, controller: ControllerDep) -> QueuePublic:
    """Everyone's waiting jobs in line order, with estimated start and the reason each waits."""
    result, rows = await controller.jobs.queue()
    entries = []
    for row in rows:
        wait = wait_info(row, result)
        assert wait is not None
        entries.append(QueueEntry(**_waiting_job(row), submitted_at=row["submitted_at"], **wait.__dict__))
    return QueuePublic(now=result.now, data=entries)
