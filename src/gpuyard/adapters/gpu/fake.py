"""Virtual GPUs for machines without an NVIDIA GPU, for tests and for trying gpuyard on a laptop.

Load is simulated: the worker tells the fake which GPUs its jobs use (`set_job_gpus` / `clear_job`), and
an optional JSON *state file*, re-read on every `list_gpus()`, says which processes outside gpuyard hold
a GPU, so tests can play "someone opened a notebook on GPU 2"::

    {"outside": {"2": [{"pid": 4242, "user": "bob", "used_memory_mib": 1000, "command": "python nb.py"}]}}

Write the state file atomically (write a temporary file, then `os.replace`), since it is read at any time.
"""

from __future__ import annotations

import json
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


def simulated_load(job_pgid: int, index: int, now_s: float) -> tuple[int, int]:
    """(utilization_pct, used_memory_mib) of a job's GPU: 85–99 % drifting every 5 s, 4–7 GiB fixed."""
    utilization_pct = 85 + (job_pgid + index + int(now_s // 5)) % 15
    used_memory_mib = 4096 + (job_pgid + index) % 4 * 1024
    return utilization_pct, used_memory_mib


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

    def set_job_gpus(self, job_pgid: int, indices: Sequence[int]) -> None:
        """Simulate load on `indices` for the job whose process group is `job_pgid`."""
        unknown = [index for index in indices if not 0 <= index < self.count]
        if unknown:
            raise ValueError(f"Fake GPUs {unknown} do not exist: this fake has GPUs 0..{self.count - 1}.")
        with self._lock:
            self._job_gpus[job_pgid] = tuple(indices)

    def clear_job(self, job_pgid: int) -> None:
        """Stop simulating load for the job `job_pgid` (unknown jobs are ignored)."""
        with self._lock:
            self._job_gpus.pop(job_pgid, None)

    def list_gpus(self) -> list[GpuInfo]:
        outside = self._read_outside()
        with self._lock:
            jobs = dict(self._job_gpus)
        now_s = time.time()
        return [self._sample(index, jobs, outside.get(index, ()), now_s) for index in range(self.count)]

    def missing_pid_is_outside(self) -> bool:
        return True  # simulated outside processes do not exist on this machine, yet they hold the GPU

    def close(self) -> None:
        with self._lock:
            self._job_gpus.clear()

    def _sample(
        self,
        index: int,
        jobs: Mapping[int, tuple[int, ...]],
        outside: Sequence[GpuProcess],
        now_s: float,
    ) -> GpuInfo:
        processes: list[GpuProcess] = []
        utilization_pct = 0
        for job_pgid in sorted(pgid for pgid, indices in jobs.items() if index in indices):
            job_utilization_pct, used_memory_mib = simulated_load(job_pgid, index, now_s)
            utilization_pct = max(utilization_pct, job_utilization_pct)
            processes.append(GpuProcess(pid=job_pgid, used_memory_mib=used_memory_mib))
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
