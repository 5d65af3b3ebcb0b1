"""Which job does what on which GPU: GPU processes are mapped to jobs by process group.

Each job runs in its own session, so every process it starts (a DataLoader worker, a torchrun rank) shares
the job leader's process group, whatever its pid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from gpuyard.adapters.broker.messages import GpuUse, JobUsage
from gpuyard.adapters.gpu.base import GpuInfo

JobKey = tuple[int, int]


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def usage_by_job(
    gpus: Sequence[GpuInfo],
    jobs: Mapping[JobKey, tuple[int, Sequence[int]]],
    *,
    pgid_of: Callable[[int], int | None] = process_group,
) -> list[JobUsage]:
    """The usage of each running job, `jobs` mapping (job, attempt) to (process group, GPU indices).

    A job's GPUs are those it was given plus any where its processes show up. Its memory on a GPU is what
    its processes hold there; where the driver lists no process at all (some containers), the GPU's whole
    used memory, since one job runs per GPU. Utilization is the GPU's: NVML measures it per device.
    """
    owner: dict[int, JobKey] = {pgid: key for key, (pgid, _) in jobs.items()}
    held: dict[JobKey, dict[int, int]] = {key: {} for key in jobs}
    for sampled in gpus:
        for process in sampled.processes:
            key = owner.get(process.pid)
            if key is None:
                pgid = pgid_of(process.pid)
                key = owner.get(pgid) if pgid is not None else None
            if key is not None:
                held[key][sampled.index] = held[key].get(sampled.index, 0) + (process.used_memory_mib or 0)
    by_index = {gpu.index: gpu for gpu in gpus}
    usage = []
    for key, (_, indices) in jobs.items():
        uses = []
        for index in sorted(set(indices) | set(held[key])):
            gpu = by_index.get(index)
            if gpu is None:
                continue
            own_mib = held[key].get(index)
            if own_mib is None and not gpu.processes:
                own_mib = gpu.memory_used_mib
            use = GpuUse(index=index, utilization_pct=gpu.utilization_pct, memory_used_mib=own_mib or 0)
            uses.append(use)
        usage.append(JobUsage(job_id=key[0], attempt=key[1], gpus=uses))
    return usage
