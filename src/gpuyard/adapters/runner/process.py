"""Run one job attempt under its supervisor (adapters/runner/supervisor.py), and follow it from the worker.

The supervisor, not the worker, is the job's parent: the job keeps running when the worker stops or dies,
and how it ended is kept on disk. A worker follows the job through the files of its state directory: it
tails the output file, waits for status.json, and asks for a stop (cancel, preemption, fencing) by writing
the reason (and a grace period of its own, if it has one) and signalling the supervisor, which sends SIGTERM
to the job's process group, then SIGKILL after the grace period. The supervisor enforces the time limit
itself. A restarted worker reattaches with `JobProcess.reattach`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuyard.adapters.runner.supervisor import alive, read_json

log = logging.getLogger(__name__)

OnOutput = Callable[[bytes], Awaitable[None]]
_READ_SIZE = 256 * 1024
_POLL_S = 0.5  # output tailed, and a job that is not our child looked at, twice a second
_LAUNCH_TIMEOUT_S = 30.0
_OOM_SCAN_BYTES = 1024 * 1024
_OOM_MARKERS = (b"CUDA out of memory", b"OutOfMemoryError", b"CUDA error: out of memory")
# isolated, and without site-packages: the supervisor needs the standard library only
SUPERVISOR_ARGV = (sys.executable, "-I", "-S", str(Path(__file__).with_name("supervisor.py")))


class LaunchError(Exception):
    """The job could not be started (bad working directory, missing program, ...)."""


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None
    stop_reason: str | None  # "cancelled" | "preempted" | "timed_out" | "fenced" | None
    oom_seen: bool
    vanished: bool = False  # the supervisor is gone without a word: the machine restarted, or it was killed


def scrub_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment without gpuyard's own settings (no broker or database secret)."""
    return {k: v for k, v in base.items() if not k.startswith("GPUYARD_")}


class JobProcess:
    """One supervised job, followed from `offset` of its output file."""

    def __init__(self, *, state_dir: Path, output: Path, on_output: OnOutput, offset: int = 0) -> None:
        self.state_dir = state_dir
        self.output = output
        self._on_output = on_output
        self._offset = offset
        self._job: dict[str, Any] | None = None
        self._supervisor: dict[str, Any] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._child_exit: asyncio.Future[int] | None = None
        self._stop_reason: str | None = None

    @property
    def pid(self) -> int:
        """The job's pid, which is also its process group."""
        assert self._job is not None
        return int(self._job["pid"])

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    async def start(
        self,
        *,
        argv: list[str],
        env: Mapping[str, str],
        workdir: Path,
        time_limit_s: float | None,
        kill_grace_s: float,
        lease_file: Path | None = None,
        fence_s: float | None = None,
    ) -> None:
        """Start the supervisor and wait until it started the job; raises LaunchError. With `lease_file`,
        the supervisor stops the job once that file is older than `fence_s`."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "argv": argv,
            "env": dict(env),
            "workdir": str(workdir),
            "output": str(self.output),
            "time_limit_s": time_limit_s,
            "kill_grace_s": kill_grace_s,
            "lease_file": str(lease_file) if lease_file else None,
            "fence_s": fence_s,
        }
        spec_path = self.state_dir / "spec.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the job's environment
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        self._child = await SPARES.take()
        if self._child is not None:  # a supervisor started ahead of need: tell it where its job is
            assert self._child.stdin is not None
            self._child.stdin.write(f"{self.state_dir}\n".encode())
            await self._child.stdin.drain()
            self._child.stdin.close()
        else:
            with open(self.state_dir / "supervisor.log", "ab") as errors:  # noqa: ASYNC230 - local, quick
                self._child = await asyncio.create_subprocess_exec(
                    *SUPERVISOR_ARGV,
                    str(self.state_dir),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=errors,
                    stderr=errors,
                    start_new_session=True,
                )
        waited = 0.0
        while waited < _LAUNCH_TIMEOUT_S:
            status = read_json(self.state_dir / "status.json")
            if status is not None and "launch_error" in status:
                raise LaunchError(str(status["launch_error"]))
            self._job = read_json(self.state_dir / "job.json")
            if self._job is not None:
                self._supervisor = read_json(self.state_dir / "supervisor.json")
                return
            if self._child.returncode is not None:
                raise LaunchError(f"its supervisor exited at once: {self._supervisor_log()}")
            await asyncio.sleep(0.01)
            waited += 0.01
        raise LaunchError(f"its supervisor did not start it within {_LAUNCH_TIMEOUT_S:.0f} s")

    @classmethod
    def reattach(cls, *, state_dir: Path, output: Path, on_output: OnOutput, offset: int) -> JobProcess:
        """Follow a job a previous worker started (running, or ended while no worker watched)."""
        process = cls(state_dir=state_dir, output=output, on_output=on_output, offset=offset)
        process._job = read_json(state_dir / "job.json")
        process._supervisor = read_json(state_dir / "supervisor.json")
        process._stop_reason = _read_text(state_dir / "stop")
        return process

    @property
    def launched(self) -> bool:
        return self._job is not None

    async def wait(self) -> ExitStatus:
        """Stream the output until the job has ended and its supervisor said how."""
        while True:
            await self._tail()
            status = read_json(self.state_dir / "status.json")
            if status is not None:
                await self._tail()
                break
            child_running = self._child is not None and self._child.returncode is None
            if not child_running and not alive(self._supervisor) and not self._status_written():
                await self._tail()
                return ExitStatus(None, None, self._stop_reason, False, vanished=True)
            await self._pause()
        if self._child is not None:
            await self._child.wait()  # reap it
            if self._child_exit is not None:
                await self._child_exit
        exit_code, sig = status.get("exit_code"), status.get("signal")
        oom = exit_code != 0 and self._oom_in_output()
        return ExitStatus(exit_code, sig, status.get("stop_reason"), oom)

    @property
    def ended(self) -> bool:
        """The job has ended and its supervisor said how."""
        return self._status_written()

    def _status_written(self) -> bool:
        return read_json(self.state_dir / "status.json") is not None

    async def _pause(self) -> None:
        """Until the next look: at most `_POLL_S`, less when our own child (the supervisor) exits first,
        which it does as soon as it has written the job's status."""
        if self._child is None:
            await asyncio.sleep(_POLL_S)
            return
        if self._child_exit is None:
            self._child_exit = asyncio.ensure_future(self._child.wait())
        await asyncio.wait({self._child_exit}, timeout=_POLL_S)

    async def _tail(self) -> None:
        try:
            with open(self.output, "rb") as f:  # noqa: ASYNC230 - a local read of what is new
                f.seek(self._offset)
                while chunk := f.read(_READ_SIZE):
                    self._offset += len(chunk)
                    await self._on_output(chunk)
        except FileNotFoundError:
            return

    def _oom_in_output(self) -> bool:
        try:
            with open(self.output, "rb") as f:
                f.seek(max(0, os.path.getsize(self.output) - _OOM_SCAN_BYTES))
                tail = f.read()
        except OSError:
            return False
        return any(marker in tail for marker in _OOM_MARKERS)

    def stop(self, reason: str, *, grace_s: float | None = None) -> None:
        """Ask the supervisor to stop the job: SIGTERM to its group, SIGKILL after `grace_s` (None: the
        grace period it was started with). Once asked, a stop is not asked again, except that a cancel
        overrides a preemption (the job then ends cancelled, and no later than the cancel's grace)."""
        if read_json(self.state_dir / "status.json") is not None:
            return
        if self._stop_reason is not None and (self._stop_reason, reason) != ("preempted", "cancelled"):
            return
        self._stop_reason = reason
        grace_file = self.state_dir / "stop_grace_s"
        if grace_s is None:
            grace_file.unlink(missing_ok=True)
        else:
            grace_file.write_text(repr(float(grace_s)))  # before `stop`: the supervisor reads both at once
        (self.state_dir / "stop").write_text(reason)
        log.info("stopping job pid %s (%s)", self._job["pid"] if self._job else "?", reason)
        if alive(self._supervisor):
            assert self._supervisor is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(self._supervisor["pid"]), signal.SIGTERM)
        elif alive(self._job):  # no supervisor to ask: stop the group ourselves
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def _supervisor_log(self) -> str:
        text = _read_text(self.state_dir / "supervisor.log") or "no output"
        return text[-500:]


class SpareSupervisors:
    """One supervisor kept started ahead of need (its interpreter up, its modules imported), so that a
    job's start does not wait for one: taken at a launch, replaced at once. Idle, it waits on its stdin
    and ends when that closes, so it never outlives its worker for long."""

    def __init__(self) -> None:
        self._spare: asyncio.Task[asyncio.subprocess.Process] | None = None

    async def take(self) -> asyncio.subprocess.Process | None:
        """A ready spare, if there is one (the first launch has none); a new one starts meanwhile."""
        spare = self._spare
        self._spare = asyncio.ensure_future(self._start())
        if spare is None or not spare.done() or spare.exception() is not None:
            return None
        process = spare.result()
        return process if process.returncode is None else None

    async def _start(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *SUPERVISOR_ARGV,
            "--spare",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def close(self) -> None:
        """End the idle spare (closing its stdin tells it to exit)."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        with contextlib.suppress(Exception):
            process = await spare
            if process.stdin is not None:
                process.stdin.close()
            await asyncio.wait_for(process.wait(), timeout=5)


SPARES = SpareSupervisors()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
