"""API schemas of the observability routes: time series and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gpuyard.domain.webhooks import EVENTS


class UsagePoint(BaseModel):
    at: datetime = Field(description="Start of the bucket (GPUYARD_USAGE_BUCKET_S).")
    utilization_pct: float = Field(description="Mean over the bucket (and over the job's GPUs).")
    memory_used_mib: int = Field(description="Peak over the bucket (summed over the job's GPUs).")


class ProgressPoint(BaseModel):
    at: datetime
    step: float | None
    total: float | None
    metrics: dict[str, Any]


class JobSeries(BaseModel):
    job_id: int
    attempt: int
    gpu: list[UsagePoint] = Field(description="The attempt's GPU usage over time.")
    progress: list[ProgressPoint] = Field(description="What the job reported (gpuyard.report) over time.")


class GpuSeries(BaseModel):
    node: str
    index: int
    points: list[UsagePoint]


class GpusUsage(BaseModel):
    since: datetime
    gpus: list[GpuSeries]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="http(s) URL that receives a POST per event.")
    events: list[str] | None = Field(None, description=f"Some of {', '.join(EVENTS)}; default: all.")
    format: Literal["json", "slack"] = Field("json", description='json, or slack ({"text": ...}).')
    all_jobs: bool = Field(False, description="Every user's jobs, not just yours (admins).")
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="HMAC key, without control characters; default: a random one, shown once.",
    )


class WebhookPublic(BaseModel):
    id: int
    user: str | None = Field(description="Whose jobs it reports; null: everyone's.")
    url: str
    events: list[str]
    format: str
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="Shown once. Each POST carries X-Gpuyard-Signature: sha256=HMAC-SHA256(secret, body)."
    )


class WebhookDelivery(BaseModel):
    id: int
    event: str
    job_id: int | None
    state: str = Field(description="pending | delivered | failed")
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None = Field(description="HTTP status of the last try; null: no answer.")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
