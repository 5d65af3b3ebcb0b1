"""Virtual GPUs for machines without an NVIDIA GPU, for tests and for trying gpuyard on a laptop.

Load is simulated: the worker tells the fake which GPUs its jobs use (`set_job_gpus` / `clear_job`); a
job's GPUs are as busy as the job's processes are on the CPU (a job computing shows 100 %, a job asleep
shows 0 %, as a notebook kernel idling on a real GPU would), and hold 4–7 GiB of memory. An optional JSON
*state file*, re-read on every `list_gpus()`, says which processes outside gpuyard hold
a GPU, so tests can play "someone opened a notebook on GPU 2"::

    {"outside": {"2": [{"pid": 4242, "user": "bob", "used_memory_mib": 1000, "command": "python nb.py"}]}}

Write the state file atomically (write a temporary file, then `os.replace`), since it is read at any time.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpuyard.adapters.gpu.base import GpuInfo, GpuProcess
from gpuyard.adapters.gpu.common import OutsideProcessesMixin
from gpuyard.domain.errors import ConfigurationError

FAKE_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "fake-gpus.gpuyard")
FAKE_GPU_NAME = "gpuyard fake GPU (24 GiB)"
FAKE_MEMORY_TOTAL_MIB = 24576


def fake_gpu_uuid(node: str, index: int) -> str:
    """The UUID of fake GPU `index` on `node`: the same on every start, different per node and index."""
    return "GPU-" + str(uuid.uuid5(FAKE_UUID_NAMESPACE, f"gpuyard-fake/{node}/{index}"))


def simulated_memory_mib(job_pgid: int, index: int) -> int:
    """The memory a job holds on one of its fake GPUs: 4–7 GiB, fixed for the job."""
    return 4096 + (job_pgid + index) % 4 * 1024


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_MIN_INTERVAL_S = 0.2  # below this a CPU-time difference is mostly noise: keep the last figure


def cpu_seconds_by_group(pgids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by the live processes of each process group in `pgids`,
    their reaped children included."""
    totals = dict.fromkeys(pgids, 0.0)
    if not pgids:
        return totals
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        try:
            pgid = int(fields[2])
            if pgid in totals:
                # utime + stime, and cutime + cstime: what its children used once they were reaped
                totals[pgid] += sum(int(f) for f in fields[11:15]) / _CLOCK_TICKS
        except (IndexError, ValueError):
            continue
    return totals


class _CpuMeter:
    """Utilization of a process group: its CPU time over wall time since the previous reading, 0–100 %."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, float, int]] = {}  # pgid -> (cpu_s, wall_s, utilization_pct)

    def start(self, pgid: int) -> None:
        self._last[pgid] = (cpu_seconds_by_group({pgid})[pgid], time.monotonic(), 0)

    def forget(self, pgid: int) -> None:
        self._last.pop(pgid, None)

    def read(self, pgids: set[int]) -> dict[int, int]:
        now = time.monotonic()
        due = {p for p in pgids if p not in self._last or now - self._last[p][1] >= _MIN_INTERVAL_S}
        cpu = cpu_seconds_by_group(due)
        result = {}
        for pgid in pgids:
            last_cpu, last_wall, last_pct = self._last.get(pgid, (0.0, now, 0))
            if pgid in cpu and now > last_wall:
                pct = round(100 * max(0.0, cpu[pgid] - last_cpu) / (now - last_wall))
                last_pct = min(100, pct)
                self._last[pgid] = (cpu[pgid], now, last_pct)
            result[pgid] = last_pct
        return result


class FakeGpus(OutsideProcessesMixin):
    """`count` virtual 24 GiB GPUs on `node`. Thread-safe: the worker may call it from any thread."""

    name = "fake"

    def __init__(
        self,
        count: int = 4,
        *,
        node: str = "localhost",
        state_file: str | None = None,
        reason: str | None = None,
    ) -> None:
        if count < 0:
            raise ConfigurationError(f"The fake GPU backend needs 0 or more GPUs, not {count}.")
        self.count = count
        self.node = node
        self.state_file = Path(state_file) if state_file is not None else None
        self.reason = reason  # why the fake runs, e.g. "no NVIDIA GPU found"; shown by describe_backend
        self._uuids = [fake_gpu_uuid(node, index) for index in range(count)]
        self._lock = threading.Lock()
        self._job_gpus: dict[int, tuple[int, ...]] = {}
        self._cpu = _CpuMeter()

    def set_job_gpus(self, job_pgid: int, indices: Sequence[int]) -> None:
        """Simulate load on `indices` for the job whose process group is `job_pgid`."""
        unknown = [index for index in indices if not 0 <= index < self.count]
        if unknown:
            raise ValueError(f"Fake GPUs {unknown} do not exist: this fake has GPUs 0..{self.count - 1}.")
        with self._lock:
            self._job_gpus[job_pgid] = tuple(indices)
            self._cpu.start(job_pgid)

    def clear_job(self, job_pgid: int) -> None:
        """Stop simulating load for the job `job_pgid` (unknown jobs are ignored)."""
        with self._lock:
            self._job_gpus.pop(job_pgid, None)
            self._cpu.forget(job_pgid)

    def list_gpus(self) -> list[GpuInfo]:
        outside = self._read_outside()
        with self._lock:
            jobs = dict(self._job_gpus)
            load = self._cpu.read(set(jobs))
        return [self._sample(index, jobs, load, outside.get(index, ())) for index in range(self.count)]

    def missing_pid_is_outside(self) -> bool:
        return True  # simulated outside processes do not exist on this machine, yet they hold the GPU

    def close(self) -> None:
        with self._lock:
            self._job_gpus.clear()

    def _sample(
        self,
        index: int,
        jobs: Mapping[int, tuple[int, ...]],
        load: Mapping[int, int],
        outside: Sequence[GpuProcess],
    ) -> GpuInfo:
        processes: list[GpuProcess] = []
        utilization_pct = 0
        for job_pgid in sorted(pgid for pgid, indices in jobs.items() if index in indices):
            utilization_pct = max(utilization_pct, load.get(job_pgid, 0))
            processes.append(GpuProcess(pid=job_pgid, used_memory_mib=simulated_memory_mib(job_pgid, index)))
        processes.extend(outside)
        memory_used_mib = sum(process.used_memory_mib or 0 for process in processes)
        return GpuInfo(
            index=index,
            uuid=self._uuids[index],
            name=FAKE_GPU_NAME,
            memory_total_mib=FAKE_MEMORY_TOTAL_MIB,
            memory_used_mib=min(memory_used_mib, FAKE_MEMORY_TOTAL_MIB),
            utilization_pct=utilization_pct,
            processes=tuple(processes),
        )

    def _read_outside(self) -> dict[int, list[GpuProcess]]:
        if self.state_file is None:
            return {}
        try:
            text = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigurationError(f"Cannot read the fake GPU state file {self.state_file}: {e}.") from e
        try:
            return parse_state(json.loads(text), count=self.count)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigurationError(
                f"The fake GPU state file {self.state_file} is malformed ({e}). Expected "
                '{"outside": {"<index>": [{"pid": 4242, "user": "bob", "used_memory_mib": 1000, '
                '"command": "python notebook.py"}]}}.'
            ) from e


def parse_state(state: object, *, count: int) -> dict[int, list[GpuProcess]]:
    """The outside processes per GPU index described by a decoded state file."""
    if not isinstance(state, dict):
        raise TypeError("the top level must be an object")
    outside = state.get("outside", {})
    if not isinstance(outside, dict):
        raise TypeError('"outside" must be an object keyed by GPU index')
    found: dict[int, list[GpuProcess]] = {}
    for key, entries in outside.items():
        index = int(key)
        if not 0 <= index < count:
            raise ValueError(f"GPU index {index} does not exist: this fake has GPUs 0..{count - 1}")
        if not isinstance(entries, list):
            raise TypeError(f"the processes of GPU {index} must be a list")
        found[index] = [_parse_process(entry) for entry in entries]
    return found


def _parse_process(entry: object) -> GpuProcess:
    if not isinstance(entry, dict):
        raise TypeError("each process must be an object with at least a pid")
    used_memory_mib = entry.get("used_memory_mib")
    user = entry.get("user")
    command = entry.get("command")
    return GpuProcess(
        pid=int(entry["pid"]),
        used_memory_mib=None if used_memory_mib is None else int(used_memory_mib),
        user=None if user is None else str(user),
        command=None if command is None else str(command),
    )
