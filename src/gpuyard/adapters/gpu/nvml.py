"""GPUs read through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

NVML's device index order is PCI bus order, the order CUDA uses with CUDA_DEVICE_ORDER=PCI_BUS_ID, so an
index here is the index a job gets in CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import logging
from typing import Any

from gpuyard.adapters.gpu.base import GpuInfo, GpuProcess
from gpuyard.adapters.gpu.common import (
    OutsideProcessesMixin,
    bytes_to_mib,
    dedupe_by_pid,
    with_owner_details,
)
from gpuyard.domain.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _text(value: str | bytes) -> str:
    """Older pynvml returns bytes for names and UUIDs, newer returns str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class NvmlGpus(OutsideProcessesMixin):
    """The GPUs of this machine as NVML sees them. Call `close()` when done."""

    name = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml  # type: ignore[import-untyped,unused-ignore]
        except ImportError as e:
            raise ConfigurationError(
                "The NVML GPU backend needs the nvidia-ml-py package: `pip install nvidia-ml-py`, "
                "or choose the nvidia-smi or fake GPU backend."
            ) from e
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise ConfigurationError(
                f"NVML could not start ({e}): is the NVIDIA driver installed and loaded? "
                "Check that `nvidia-smi` works, or choose the fake GPU backend on a machine without a GPU."
            ) from e
        self._nvml: Any = pynvml
        self._open = True

    def list_gpus(self) -> list[GpuInfo]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            return [self._sample(index) for index in range(count)]
        except nvml.NVMLError as e:
            raise ConfigurationError(
                f"NVML could not read the GPUs ({e}). Check `nvidia-smi`; a GPU that fell off the bus "
                "or a driver/library version mismatch needs the machine to be rebooted."
            ) from e

    def links(self) -> list[tuple[int, int]]:
        """GPU pairs that can reach each other over NVLink (peer-to-peer status through NVLink)."""
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            return [
                (a, b)
                for a in range(count)
                for b in range(a + 1, count)
                if nvml.nvmlDeviceGetP2PStatus(handles[a], handles[b], nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                == nvml.NVML_P2P_STATUS_OK
            ]
        except (nvml.NVMLError, AttributeError) as e:
            logger.info("NVML reports no NVLink topology (%s); set GPUYARD_GPU_LINKS to describe it", e)
            return []

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            logger.warning("NVML shutdown failed: %s", e)

    def _sample(self, index: int) -> GpuInfo:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuInfo(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_total_mib=bytes_to_mib(memory.total) or 0,
            memory_used_mib=bytes_to_mib(memory.used) or 0,
            utilization_pct=self._utilization_pct(handle),
            processes=with_owner_details(dedupe_by_pid(self._processes(handle))),
        )

    def _utilization_pct(self, handle: object) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except self._nvml.NVMLError as e:  # NOT_SUPPORTED on some boards and under some virtualisation
            logger.debug("GPU utilization unavailable: %s", e)
            return None

    def _processes(self, handle: object) -> list[GpuProcess]:
        nvml = self._nvml
        found: list[GpuProcess] = []
        for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                infos = query(handle)
            except nvml.NVMLError as e:
                logger.debug("%s unavailable: %s", query.__name__, e)
                continue
            for info in infos:
                used = getattr(info, "usedGpuMemory", None)
                found.append(GpuProcess(pid=int(info.pid), used_memory_mib=bytes_to_mib(used)))
        return found
