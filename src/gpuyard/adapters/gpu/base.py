"""The GPU manager's seam: what every backend (NVML, nvidia-smi, fake) reports."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds memory on a GPU."""

    pid: int
    used_memory_mib: int | None = None
    user: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as sampled now. `index` is the PCI-bus-ordered index CUDA_VISIBLE_DEVICES uses."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None
    processes: tuple[GpuProcess, ...] = ()


class GpuBackend(Protocol):
    """`name` is nvml | nvidia-smi | fake."""

    name: str

    def list_gpus(self) -> list[GpuInfo]:
        """Every GPU of this machine, sampled now, in index order."""
        ...

    def outside_processes(self, gpu: GpuInfo, own_pgids: Collection[int]) -> list[GpuProcess]:
        """The processes on `gpu` that do not belong to a gpuyard job (by process group)."""
        ...

    def get_free_gpus(self, own_pgids: Collection[int]) -> list[GpuInfo]:
        """GPUs that no process outside gpuyard holds (whether or not gpuyard runs a job on them)."""
        ...

    def links(self) -> list[tuple[int, int]]:
        """Pairs of GPU indices joined by NVLink (empty when unknown)."""
        ...

    def close(self) -> None: ...
