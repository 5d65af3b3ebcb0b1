"""Choosing the GPU backend: NVML if it loads, else nvidia-smi if it runs, else fake GPUs."""

from __future__ import annotations

import logging
import shutil
from collections import Counter

from gpuyard.adapters.gpu.base import GpuBackend
from gpuyard.adapters.gpu.fake import FakeGpus
from gpuyard.adapters.gpu.nvml import NvmlGpus
from gpuyard.adapters.gpu.smi import NvidiaSmiGpus
from gpuyard.domain.errors import ConfigurationError, GpuyardError

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "nvml", "nvidia-smi", "fake")
NO_GPU_REASON = "no NVIDIA GPU found"


def open_gpu_backend(
    choice: str,
    *,
    fake_count: int = 4,
    node: str = "localhost",
    fake_state_file: str | None = None,
) -> GpuBackend:
    """The backend named by `choice` (auto | nvml | nvidia-smi | fake), ready to use."""
    key = choice.strip().lower()
    if key == "fake":
        return FakeGpus(fake_count, node=node, state_file=fake_state_file)
    if key == "nvml":
        return NvmlGpus()
    if key == "nvidia-smi":
        smi = NvidiaSmiGpus()
        smi.list_gpus()  # fail now, with its message, rather than at the first job
        return smi
    if key == "auto":
        return _detect(fake_count=fake_count, node=node, fake_state_file=fake_state_file)
    raise ConfigurationError(f"Unknown GPU backend '{choice}': use auto, nvml, nvidia-smi or fake.")


def _detect(*, fake_count: int, node: str, fake_state_file: str | None) -> GpuBackend:
    nvml_said = _try_nvml()
    if isinstance(nvml_said, NvmlGpus):
        return nvml_said
    smi_said = _try_smi()
    if isinstance(smi_said, NvidiaSmiGpus):
        return smi_said
    logger.warning(
        "No NVIDIA GPU found (NVML: %s; nvidia-smi: %s): using %d fake GPUs, jobs run on the CPU. "
        "Set the GPU backend to nvml or nvidia-smi to make this an error instead.",
        nvml_said,
        smi_said,
        fake_count,
    )
    return FakeGpus(fake_count, node=node, state_file=fake_state_file, reason=NO_GPU_REASON)


def _try_nvml() -> NvmlGpus | str:
    """The NVML backend when it loads and sees a GPU, else why not."""
    try:
        nvml = NvmlGpus()
    except Exception as e:  # any failure, ImportError included, falls through to the next backend
        return str(e)
    try:
        if nvml.list_gpus():
            return nvml
    except Exception as e:
        nvml.close()
        return str(e)
    nvml.close()
    return "it reports no GPU"


def _try_smi() -> NvidiaSmiGpus | str:
    """The nvidia-smi backend when it is installed, runs and sees a GPU, else why not."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return "not installed"
    smi = NvidiaSmiGpus(executable)
    try:
        if smi.list_gpus():
            return smi
    except Exception as e:
        return str(e)
    return "it reports no GPU"


def describe_backend(backend: GpuBackend) -> str:
    """One line for people, e.g. "nvml (4 × NVIDIA GeForce RTX 3090)"."""
    try:
        gpus = backend.list_gpus()
    except GpuyardError as e:
        return f"{backend.name} (cannot read its GPUs: {e.detail})"
    if isinstance(backend, FakeGpus):
        why = f" — {backend.reason}" if backend.reason else ""
        return f"fake ({len(gpus)} virtual GPUs{why}; jobs run on the CPU)"
    if not gpus:
        return f"{backend.name} (no GPUs)"
    models = Counter(gpu.name for gpu in gpus)  # insertion-ordered: first GPU's model first
    return f"{backend.name} ({', '.join(f'{n} × {model}' for model, n in models.items())})"
