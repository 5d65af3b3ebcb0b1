"""Run one job attempt as a local process: its own session and process group, output captured.

Stopping it (cancel, time limit) sends SIGTERM to the whole group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OnOutput = Callable[[bytes], Awaitable[None]]
_READ_SIZE = 64 * 1024
_OOM_MARKERS = (b"CUDA out of memory", b"OutOfMemoryError", b"CUDA error: out of memory")


class LaunchError(Exception):
    """The job could not be started (bad working directory, missing program, ...)."""


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None
    stop_reason: str | None  # "cancelled" | "timed_out" | "fenced" | None
    oom_seen: bool


def scrub_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment without gpuyard's own settings (no broker or database secret)."""
    return {k: v for k, v in base.items() if not k.startswith("GPUYARD_")}


class JobProcess:
    def __init__(
        self,
        *,
        argv: list[str],
        env: Mapping[str, str],
        workdir: Path,
        on_output: OnOutput,
        kill_grace_s: float,
    ) -> None:
        self._argv = argv
        self._env = dict(env)
        self._workdir = workdir
        self._on_output = on_output
        self._grace_s = kill_grace_s
        self._proc: asyncio.subprocess.Process | None = None
        self._stop_reason: str | None = None
        self._oom = False
        self._tail = b""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> None:
        if not self._workdir.is_dir():
            raise LaunchError(f"working directory {self._workdir} does not exist on this node")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                cwd=self._workdir,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise LaunchError(f"program {self._argv[0]!r} not found on this node ({e.strerror})") from e
        except PermissionError as e:
            raise LaunchError(f"program {self._argv[0]!r} cannot be executed: {e.strerror}") from e
        except OSError as e:
            raise LaunchError(f"cannot start {self._argv[0]!r}: {e}") from e

    async def wait(self, *, time_limit_s: float | None) -> ExitStatus:
        """Stream the output until the process ends; stop it at the time limit."""
        assert self._proc is not None
        timer = None
        if time_limit_s is not None:
            timer = asyncio.get_running_loop().call_later(time_limit_s, self.stop, "timed_out")
        reader = asyncio.create_task(self._pump())
        try:
            returncode = await self._proc.wait()
            # What the job left behind in its group dies with it: its GPUs go to the next job clean.
            self._signal_group(signal.SIGKILL)
            await reader
        finally:
            reader.cancel()
            if timer is not None:
                timer.cancel()
        if returncode < 0:
            return ExitStatus(None, -returncode, self._stop_reason, self._oom)
        return ExitStatus(returncode, None, self._stop_reason, self._oom)

    async def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while chunk := await self._proc.stdout.read(_READ_SIZE):
            self._scan(chunk)
            await self._on_output(chunk)

    def _scan(self, chunk: bytes) -> None:
        window = self._tail + chunk
        if any(marker in window for marker in _OOM_MARKERS):
            self._oom = True
        self._tail = window[-64:]

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def stop(self, reason: str) -> None:
        """SIGTERM the process group now, SIGKILL it after the grace period."""
        if self._proc is None or self._proc.returncode is not None:
            return
        if self._stop_reason is None:
            self._stop_reason = reason
        log.info("stopping pid %s (%s): SIGTERM, SIGKILL in %.0f s", self._proc.pid, reason, self._grace_s)
        self._signal_group(signal.SIGTERM)
        asyncio.get_running_loop().call_later(self._grace_s, self._signal_group, signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
