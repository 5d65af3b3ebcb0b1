"""Settings, validated by pydantic. Built by the entry points, never at import time.

Every field can be given as a `GPUYARD_<NAME>` environment variable; docs/configuration.md lists them.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "gpuyard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPUYARD_", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the database, job output and tokens live.")
    host: str = Field("127.0.0.1", description="Address the API and the web UI listen on.")
    port: int = Field(8765, ge=1, le=65535, description="Port the API listens on.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite+aiosqlite:///DATA_DIR/gpuyard.db."
    )
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ to use.")
    broker: Literal["auto", "external", "local"] = Field(
        "auto",
        description="auto: use AMQP_URL if it answers, else start a private RabbitMQ under DATA_DIR; "
        "external: AMQP_URL only; local: always a private one.",
    )
    local_broker_port: int = Field(5673, ge=1, le=65535, description="Port of the private RabbitMQ.")
    instance: str | None = Field(
        None, description="Names this installation's queues on the broker; default: one kept in DATA_DIR."
    )
    node_name: str = Field(default_factory=socket.gethostname, description="This worker's node name.")
    gpu_backend: Literal["auto", "nvml", "nvidia-smi", "fake"] = Field("auto", description="GPU manager.")
    fake_gpus: int = Field(4, ge=1, le=64, description="How many GPUs the fake backend pretends to have.")
    fake_gpu_state_file: Path | None = Field(
        None, description="JSON file of simulated outside processes for the fake backend."
    )
    max_parallel_jobs: int = Field(64, ge=1, description="Dispatches a worker takes at once.")
    default_runtime_s: float = Field(3600.0, gt=0, description="Runtime assumed for jobs with no limit.")
    heartbeat_interval_s: float = Field(
        1.0, gt=0, description="How often a worker samples its GPUs and reports them and each job's usage."
    )
    node_lease_s: float = Field(
        60.0,
        gt=0,
        description="A node silent this long is offline and its attempts are lost (then retried); a worker "
        "that could not report for most of it stops its jobs first.",
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts a job gets unless it asks for others.")
    max_attempts_cap: int = Field(10, ge=1, le=100, description="The most attempts a job may ask for.")
    retry_backoff_s: float = Field(
        10.0, gt=0, description="Wait before retrying a failed attempt; doubles per failure, up to 10 min."
    )
    kill_grace_s: float = Field(10.0, ge=0, description="SIGTERM to SIGKILL delay on cancel or time-out.")
    preempt_grace_s: float = Field(
        60.0,
        ge=0,
        description="SIGTERM to SIGKILL delay when a preemptible job is stopped for a job ahead of it in "
        "line: time to save a checkpoint.",
    )
    preempt_min_run_s: float = Field(
        600.0,
        ge=0,
        description="A preemptible job starts ahead of earlier jobs only in a gap at least this long (or its "
        "planned runtime, if shorter).",
    )
    stop_jobs_on_exit: bool = Field(
        False,
        description="A worker that stops also stops its jobs. Unset, they keep running under their "
        "supervisors and the next worker on the node picks them up.",
    )
    scheduler_tick_s: float = Field(5.0, gt=0, description="Scheduling pass period besides wake-ups.")
    log_level: str = Field("INFO", description="Python logging level of the services.")
    backfill: bool = Field(
        True, description="Let a later job start early when its time limit proves it delays no earlier job."
    )
    aging_s: float | None = Field(
        None, gt=0, description="A waiting job gains one priority level per this many seconds (unset: off)."
    )
    aging_max_priority: Literal["normal", "high"] = Field(
        "high", description="The highest priority aging gives a waiting job."
    )
    max_gpus_per_user: int | None = Field(
        None, ge=1, description="GPUs one user may hold at once (unset: any)."
    )
    max_waiting_jobs_per_user: int | None = Field(
        None, ge=1, description="Jobs one user may have waiting at once (unset: any)."
    )
    fair_share: bool = Field(
        False, description="Within a priority, users with less recent GPU time go first."
    )
    fair_share_window_s: float = Field(
        7 * 86400.0, gt=0, description="How far back GPU time counts for fair share (seconds)."
    )
    urgent_admins_only: bool = Field(True, description="Only admins may submit or raise jobs to urgent.")
    gpu_links: str = Field(
        "",
        description="GPU pairs joined by NVLink, for placing multi-GPU jobs, e.g. '0-1,2-3' "
        "(used when NVML reports no topology).",
    )

    usage_bucket_s: float = Field(
        30.0, gt=0, description="GPU usage series keep one point (mean, peak memory) per this many seconds."
    )
    usage_retention_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="How long per-GPU usage series are kept (per-job series stay with the job).",
    )
    idle_gpu_after_s: float = Field(
        1800.0, gt=0, description="A running job whose GPUs stay idle this long is flagged (and notified)."
    )
    idle_gpu_below_pct: float = Field(
        5.0, ge=0, le=100, description="A GPU below this utilization (%) counts as idle."
    )
    progress_point_s: float = Field(
        2.0, ge=0, description="A job's series of reported metrics keeps one point per this many seconds."
    )
    webhook_retry_s: float = Field(
        10.0, gt=0, description="First retry delay of a failed webhook delivery; doubles up to an hour."
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Tries per webhook delivery before it fails.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time-out of one webhook request.")
    tensorboard_dir: Path | None = Field(
        None, description="Where jobs write TensorBoard runs ($GPUYARD_TB_DIR); default DATA_DIR/tensorboard."
    )
    tensorboard_port: int | None = Field(
        None, ge=1, le=65535, description="`gpuyard up` also serves TensorBoard on this port (unset: not)."
    )
    tensorboard_url: str | None = Field(
        None, description="Where a TensorBoard over TENSORBOARD_DIR is served, for links to each job's run."
    )
    ui: bool = Field(True, description="`gpuyard up` starts the web UI too.")
    ui_port: int = Field(8766, ge=1, le=65535, description="Port the web UI listens on.")
    ui_api_url: str | None = Field(
        None, description="The API the web UI talks to; default: GPUYARD_URL, else this data dir's api_url."
    )
    ui_refresh_s: float = Field(2.0, ge=0.5, description="How often the web UI's tables refresh themselves.")
    ui_api_timeout_s: float = Field(
        5.0, gt=0, description="How long the web UI waits for the API before saying it is slow."
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'gpuyard.db'}"

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def tensorboard_logdir(self) -> Path:
        return self.tensorboard_dir or self.data_dir / "tensorboard"

    def instance_name(self) -> str:
        """The configured instance, else one made once and kept in DATA_DIR/instance."""
        if self.instance:
            return self.instance
        path = self.data_dir / "instance"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        name = secrets.token_hex(4)
        path.write_text(name + "\n")
        return name
