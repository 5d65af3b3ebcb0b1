"""Preemption, the shell's part. A scheduling pass may name running preemptible jobs to stop so that a job
ahead of them in line gets their GPUs (Decision.preemptions). Each is marked once, and its stop goes to its
node through the outbox in the same transaction, as a cancel does, but with the reason `preempted` and the
preemption's grace period (GPUYARD_PREEMPT_GRACE_S: time to save a checkpoint on SIGTERM). How the stopped
attempt ends is the retry policy's (domain/retry.py): the job goes back to its place in line, uncounted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.broker.messages import Cancel
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.domain.jobs import JobState
from gpuyard.scheduling.model import Preemption
from gpuyard.services.ports import Publisher

log = logging.getLogger(__name__)


async def request_preemptions(
    conn: AsyncConnection,
    preemptions: Sequence[Preemption],
    *,
    publisher: Publisher,
    grace_s: float,
    now: datetime,
) -> list[dict[str, Any]]:
    """Mark each job's attempt as being stopped and queue its stop; returns the outbox rows, to publish
    once committed. A job that is being stopped already (preempted or cancelled), is not preemptible, or
    has ended or moved on since the pass's snapshot is left alone."""
    rows: list[dict[str, Any]] = []
    for preemption in preemptions:
        job = await jobs_repo.get_job(conn, preemption.job_id)
        if job is None or not JobState(job["state"]).holds_gpus:
            continue
        attempt = int(job["attempt"])
        if not await jobs_repo.request_preemption(conn, job_id=preemption.job_id, attempt=attempt, now=now):
            continue
        stop = Cancel(job_id=preemption.job_id, attempt=attempt, reason="preempted", grace_s=grace_s)
        body = stop.model_dump(mode="json")
        key = publisher.node_key(str(job["node"]))
        row_id = await repo.add_outbox(conn, routing_key=key, body=body, now=now)
        rows.append({"id": row_id, "routing_key": key, "body": body})
        log.info(
            "job %s attempt %s preempted for job %s: stopping it on %s (grace %.0f s)",
            preemption.job_id,
            attempt,
            preemption.for_job_id,
            job["node"],
            grace_s,
        )
    return rows
