"""/metrics, time series of jobs and GPUs, and webhooks."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from gpuyard.adapters.metrics.prometheus import CONTENT_TYPE
from gpuyard.entrypoints.api.deps import AttemptQuery, ControllerDep, CurrentUser, JobId, WebhookId
from gpuyard.entrypoints.api.routes_jobs import BODY_ERRORS, ERRORS
from gpuyard.entrypoints.api.schemas_observe import (
    GpuSeries,
    GpusUsage,
    JobSeries,
    ProgressPoint,
    UsagePoint,
    WebhookCreate,
    WebhookCreated,
    WebhookDelivery,
    WebhookPublic,
)
from gpuyard.services import observe

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["observability"])
metrics_router = APIRouter(tags=["observability"])


@metrics_router.get("/metrics", response_class=Response)
async def metrics(controller: ControllerDep) -> Response:
    """Prometheus metrics (text format). Open like /healthz: bind the API to a trusted network."""
    now = controller.clock()
    estimates = await controller.scheduler.current()
    snapshot = await observe.snapshot(
        controller.db, estimates, now=now, node_lease_s=controller.settings.node_lease_s
    )
    body = controller.metrics.render(snapshot)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/jobs/{job_id}/series", response_model=JobSeries, responses=ERRORS)
async def job_series(
    job_id: JobId,
    user: CurrentUser,
    controller: ControllerDep,
    attempt: AttemptQuery = None,
    max_points: Annotated[int, Query(ge=2, le=10_000)] = 1000,
) -> JobSeries:
    """The job's GPU usage and the metrics it reported, over time (thinned to `max_points`)."""
    job = await controller.jobs.get(user, job_id)
    number, gpu, progress = await observe.job_series(
        controller.db, job, attempt=attempt, max_points=max_points
    )
    return JobSeries(
        job_id=job_id,
        attempt=number,
        gpu=[UsagePoint(**p) for p in gpu],
        progress=[ProgressPoint(**p) for p in progress],
    )


@router.get("/gpus/usage", response_model=GpusUsage, responses=ERRORS)
async def gpus_usage(
    _user: CurrentUser,
    controller: ControllerDep,
    minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
) -> GpusUsage:
    """Utilization and memory of every GPU over the last `minutes`."""
    since = controller.clock() - timedelta(minutes=minutes)
    series = await observe.gpu_series(controller.db, since=since)
    gpus = [
        GpuSeries(node=node, index=index, points=[UsagePoint(**p) for p in points])
        for (node, index), points in series.items()
    ]
    return GpusUsage(since=since, gpus=gpus)


@router.post(
    "/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated, responses=BODY_ERRORS
)
async def add_webhook(body: WebhookCreate, user: CurrentUser, controller: ControllerDep) -> WebhookCreated:
    """A signed POST on job events: yours, or everyone's (`all_jobs`, admins). The secret is shown once."""
    hook = await controller.webhooks.add(
        user, url=body.url, events=body.events, fmt=body.format, everyone=body.all_jobs, secret=body.secret
    )
    return WebhookCreated(**hook)


@router.get("/webhooks", response_model=list[WebhookPublic], responses=ERRORS)
async def list_webhooks(user: CurrentUser, controller: ControllerDep) -> list[WebhookPublic]:
    """Your webhooks and the global ones (admins: all)."""
    return [WebhookPublic(**h) for h in await controller.webhooks.list_hooks(user)]


@router.delete("/webhooks/{hook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
async def remove_webhook(hook_id: WebhookId, user: CurrentUser, controller: ControllerDep) -> Response:
    await controller.webhooks.remove(user, hook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/webhooks/{hook_id}/deliveries", response_model=list[WebhookDelivery], responses=ERRORS)
async def webhook_deliveries(
    hook_id: WebhookId,
    user: CurrentUser,
    controller: ControllerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[WebhookDelivery]:
    """A webhook's latest deliveries, newest first: state, tries, last HTTP status or error."""
    rows = await controller.webhooks.deliveries(user, hook_id, limit=limit)
    return [WebhookDelivery(**r) for r in rows]
