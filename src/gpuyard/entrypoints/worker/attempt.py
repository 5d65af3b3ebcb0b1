"""One job attempt on this node: launch it under its supervisor, stream output and progress as events,
report the end. Its state lives on disk (JOBS_DIR/<job>/.attempt-<n>/, and a marker in
JOBS_DIR/.active-<node> until its end is reported), so a restarted worker picks it up again:
`Attempt.resume`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpuyard.adapters.broker.messages import Dispatch, Finished, LogChunk, Outcome, Progress, Started
from gpuyard.adapters.broker.rabbitmq import retry_while_unavailable
from gpuyard.adapters.runner.process import ExitStatus, JobProcess, LaunchError, scrub_environment
from gpuyard.domain.errors import BrokerUnavailable
from gpuyard.domain.jobs import FailureClass, tensorboard_run

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
_FLUSH_S = 0.5  # the output is tailed twice a second (adapters/runner/process.py)
_FLUSH_BYTES = 256 * 1024
_METRICS_POLL_S = 0.5


def outcome_of(status: ExitStatus) -> tuple[Outcome, str | None]:
    """(outcome, failure class) of an attempt that ran."""
    if status.stop_reason == "cancelled":
        return "cancelled", FailureClass.CANCELLED.value
    if status.stop_reason == "preempted":  # whatever its exit: it stopped because it was asked to
        return "failed", FailureClass.PREEMPTED.value
    if status.stop_reason == "timed_out":
        return "timed_out", FailureClass.TIMEOUT.value
    if status.stop_reason == "fenced" or status.vanished:
        return "failed", FailureClass.NODE_LOST.value
    if status.exit_code == 0:
        return "succeeded", None
    if status.oom_seen:
        return "failed", FailureClass.OOM.value
    return "failed", FailureClass.EXIT_NONZERO.value


class Attempt:
    def __init__(
        self,
        dispatch: Dispatch,
        *,
        node: str,
        jobs_dir: Path,
        emit: Emit,
        kill_grace_s: float,
        tensorboard_dir: Path | None = None,
        fence_s: float | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.node = node
        self.output_dir = jobs_dir / str(dispatch.job_id) / f"attempt-{dispatch.attempt}"
        self.checkpoint_dir = checkpoint_dir_of(jobs_dir, dispatch.job_id)
        self.state_dir = state_dir_of(jobs_dir, dispatch.job_id, dispatch.attempt)
        self.marker = active_dir(jobs_dir, node) / f"{dispatch.job_id}.{dispatch.attempt}"
        run = tensorboard_run(dispatch.job_id, dispatch.name, dispatch.attempt)
        self.tb_dir = (tensorboard_dir / run) if tensorboard_dir else self.output_dir / "tensorboard"
        self._emit = emit
        self._grace_s = kill_grace_s
        self._fence_s = fence_s
        self.lease_file = lease_file(jobs_dir, node)
        self._offset = 0
        self._pending = bytearray()
        self._flush_lock = asyncio.Lock()
        self._metrics_pos = 0
        self._last_progress: dict[str, Any] | None = None
        self.process: JobProcess | None = None
        self.finished = asyncio.Event()

    @property
    def key(self) -> tuple[int, int]:
        return (self.dispatch.job_id, self.dispatch.attempt)

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def environment(self) -> dict[str, str]:
        d = self.dispatch
        env = scrub_environment(os.environ)
        env.update(d.env)
        env.update(
            {
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in d.gpu_indices),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "GPUYARD_JOB_ID": str(d.job_id),
                "GPUYARD_ATTEMPT": str(d.attempt),
                "GPUYARD_OUTPUT_DIR": str(self.output_dir),
                "GPUYARD_TB_DIR": str(self.tb_dir),
                "GPUYARD_METRICS_FILE": str(self.metrics_file),
                "GPUYARD_GPU_UUIDS": ",".join(d.gpu_uuids),
                "GPUYARD_CHECKPOINT_DIR": str(self.checkpoint_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if d.preemptible:
            env["GPUYARD_PREEMPTIBLE"] = "1"
        return env

    async def launch(self) -> int:
        """Start the job under its supervisor; raises LaunchError. Returns its pid (= its process group)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tb_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file.touch()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "dispatch.json").write_text(self.dispatch.model_dump_json())
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(str(self.state_dir))
        workdir = Path(self.dispatch.workdir) if self.dispatch.workdir else self.output_dir
        self.process = JobProcess(state_dir=self.state_dir, output=self.output_log, on_output=self._on_output)
        await self.process.start(
            argv=self.dispatch.argv,
            env=self.environment(),
            workdir=workdir,
            time_limit_s=self.dispatch.time_limit_s,
            kill_grace_s=self._grace_s,
            lease_file=self.lease_file if self._fence_s else None,
            fence_s=self._fence_s,
        )
        return self.process.pid

    @classmethod
    def resume(cls, state_dir: Path, **kwargs: Any) -> Attempt:
        """The attempt a previous worker started, from its state on disk."""
        dispatch = Dispatch.model_validate_json((state_dir / "dispatch.json").read_text())
        attempt = cls(dispatch, **kwargs)
        try:
            offset = int((state_dir / "reported_offset").read_text())
        except (OSError, ValueError):
            offset = 0
        attempt._offset = offset
        attempt._metrics_pos = 0
        attempt.process = JobProcess.reattach(
            state_dir=state_dir, output=attempt.output_log, on_output=attempt._on_output, offset=offset
        )
        return attempt

    @property
    def output_log(self) -> Path:
        return self.output_dir / "output.log"

    async def started_event(self, pid: int) -> None:
        """Report the start; like an end, it must get through, so it is retried through a broker outage."""
        d = self.dispatch
        started = Started(job_id=d.job_id, attempt=d.attempt, node=self.node, pid=pid, at=datetime.now(UTC))
        await self._emit_retrying(started.model_dump(mode="json"))

    async def run(self) -> None:
        """Wait for the process, streaming output and progress; then report how it ended."""
        assert self.process is not None
        poller = asyncio.create_task(self._poll_metrics())
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            status = await self.process.wait()
        finally:
            poller.cancel()
            flusher.cancel()
        await self._read_metrics()
        await self._flush()
        outcome, failure = outcome_of(status)
        detail = None
        if status.stop_reason == "timed_out":
            detail = f"stopped after its time limit of {self.dispatch.time_limit_s} s"
        elif status.stop_reason == "preempted":
            detail = "stopped to give its GPUs to a job ahead of it in line: it goes back to its place"
        elif status.stop_reason == "fenced":
            detail = (
                "stopped by its worker, which had lost touch with the controller: it runs again elsewhere"
            )
        elif status.signal is not None:
            detail = f"killed by signal {status.signal}"
        await self.finish(outcome, failure, exit_code=status.exit_code, signal=status.signal, detail=detail)

    async def fail_launch(self, error: LaunchError) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        message = f"gpuyard: could not start the job: {error}\n".encode()
        with open(self.output_log, "ab") as f:  # noqa: ASYNC230 - a local append, microseconds
            f.write(message)
        await self._on_output(message)
        await self._flush()
        await self.finish("failed", FailureClass.LAUNCH_ERROR.value, detail=str(error))

    async def finish(
        self,
        outcome: Outcome,
        failure: str | None,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        detail: str | None = None,
    ) -> None:
        d = self.dispatch
        event = Finished(
            job_id=d.job_id,
            attempt=d.attempt,
            node=self.node,
            outcome=outcome,
            failure_class=failure,
            exit_code=exit_code,
            signal=signal,
            detail=detail,
            at=datetime.now(UTC),
        )
        await self._emit_retrying(event.model_dump(mode="json"))
        if self.state_dir.is_dir():
            (self.state_dir / "reported").touch()
        self.marker.unlink(missing_ok=True)
        self.finished.set()
        log.info("job %s attempt %s %s (exit %s, signal %s)", d.job_id, d.attempt, outcome, exit_code, signal)

    async def _emit_retrying(self, body: dict[str, Any]) -> None:
        """An end must reach the controller: retry through a broker outage."""
        await retry_while_unavailable(
            lambda: self._emit(body),
            what=f"reporting job {self.dispatch.job_id}",
            first_delay_s=0.2,
            max_delay_s=5.0,
        )

    async def _on_output(self, chunk: bytes) -> None:
        self._pending += chunk
        if len(self._pending) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            if not self._pending:
                return
            data, offset = bytes(self._pending), self._offset
            self._pending.clear()
            self._offset += len(data)
            d = self.dispatch
            chunk = LogChunk.of(job_id=d.job_id, attempt=d.attempt, offset=offset, data=data)
            await self._emit_retrying(chunk.model_dump(mode="json"))
            if self.state_dir.is_dir():  # where a restarted worker resumes the output from
                (self.state_dir / "reported_offset").write_text(str(self._offset))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            await self._flush()

    async def _poll_metrics(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_POLL_S)
            await self._read_metrics()

    async def _read_metrics(self) -> None:
        """Forward the newest complete line of the job's metrics file, if any arrived."""
        try:
            with open(self.metrics_file, "rb") as f:  # noqa: ASYNC230 - a small local read
                f.seek(self._metrics_pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._metrics_pos += end + 1
        latest = None
        for line in reversed(data[:end].split(b"\n")):
            try:
                latest = json.loads(line)
                break
            except ValueError:
                continue
        if not isinstance(latest, dict) or latest == self._last_progress:
            return
        self._last_progress = latest
        d = self.dispatch
        progress = Progress(
            job_id=d.job_id,
            attempt=d.attempt,
            seq=self._metrics_pos,  # where in the metrics file the report ends: grows with each one
            step=_num(latest.get("step")),
            total=_num(latest.get("total")),
            metrics=_dict(latest.get("metrics")),
        )
        try:
            await self._emit(progress.model_dump(mode="json"))
        except BrokerUnavailable as e:
            log.warning("progress of job %s not sent: %s", d.job_id, e)


def active_dir(jobs_dir: Path, node: str) -> Path:
    """A marker per attempt whose end this node has not reported yet."""
    return jobs_dir / f".active-{node}"


def lease_file(jobs_dir: Path, node: str) -> Path:
    """Touched by the node's worker whenever a heartbeat got through; its supervisors fence by its age."""
    return jobs_dir / f".lease-{node}"


def checkpoint_dir_of(jobs_dir: Path, job_id: int) -> Path:
    """A job's own folder for checkpoints, the same for all its attempts ($GPUYARD_CHECKPOINT_DIR)."""
    return jobs_dir / str(job_id) / "checkpoints"


def state_dir_of(jobs_dir: Path, job_id: int, attempt: int) -> Path:
    """Where the supervisor and worker of an attempt keep their state: beside its output, not in it."""
    return jobs_dir / str(job_id) / f".attempt-{attempt}"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
