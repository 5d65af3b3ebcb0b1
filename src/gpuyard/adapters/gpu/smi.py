"""GPUs read by running `nvidia-smi` (for machines where NVML cannot be loaded from Python).

Parsing is pure (`parse_gpu_csv`, `parse_apps_csv`, `parse_topology`); `NvidiaSmiGpus` only runs the
queries. Its `runner` lets tests feed recorded output. `nvidia-smi` lists compute processes only (not
graphics ones), and its index order is PCI bus order, as with NVML.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from collections.abc import Callable, Sequence

from gpuyard.adapters.gpu.base import GpuInfo, GpuProcess
from gpuyard.adapters.gpu.common import OutsideProcessesMixin, dedupe_by_pid, with_owner_details
from gpuyard.domain.errors import ConfigurationError

Runner = Callable[[list[str]], str]

GPU_QUERY = (
    "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
    "--format=csv,noheader,nounits",
)
APPS_QUERY = ("--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits")
TOPOLOGY_QUERY = ("topo", "-m")
TIMEOUT_S = 10.0
_GPU_FIELDS = 6
_APPS_FIELDS = 3
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the header of `topo -m` is underlined on terminals
_GPU_LABEL = re.compile(r"GPU(\d+)")
_NVLINK = re.compile(r"NV(\d+)")  # a bonded set of that many NVLinks
# The other cells of the GPU matrix: the GPU itself, and paths over PCIe (SOC: SYS on old drivers).
_NOT_NVLINK = frozenset({"X", "PIX", "PXB", "PHB", "NODE", "SYS", "SOC"})

logger = logging.getLogger(__name__)


def run_command(argv: list[str]) -> str:
    """Run `argv` and return its standard output; raises what `subprocess.run` raises."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    return done.stdout


def _value(field: str) -> str | None:
    """A CSV field, or None for "[N/A]", "[Not Supported]", "N/A", "[GPU is lost]" and blanks."""
    field = field.strip()
    if not field or field == "N/A" or (field.startswith("[") and field.endswith("]")):
        return None
    return field


def _number(field: str, line: str) -> int | None:
    value = _value(field)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise _unreadable(line) from None


def _unreadable(line: str) -> ConfigurationError:
    return ConfigurationError(
        f"nvidia-smi printed a line gpuyard cannot read: {line.strip()!r}. "
        "Check that the NVIDIA driver is up to date, or use the nvml GPU backend."
    )


def _data_lines(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("No running processes")]


def parse_gpu_csv(text: str) -> list[GpuInfo]:
    """GPUs, without their processes, in index order, from the `GPU_QUERY` output."""
    gpus: list[GpuInfo] = []
    for line in _data_lines(text):
        fields = line.split(",")
        if len(fields) < _GPU_FIELDS:
            raise _unreadable(line)
        index = _number(fields[0], line)
        uuid = _value(fields[1])
        if index is None or uuid is None:
            raise _unreadable(line)
        total_field, used_field, utilization_field = fields[-3:]
        gpus.append(
            GpuInfo(
                index=index,
                uuid=uuid,
                name=",".join(fields[2:-3]).strip(),  # names have no commas today; keep any that appear
                memory_total_mib=_number(total_field, line) or 0,
                memory_used_mib=_number(used_field, line) or 0,
                utilization_pct=_number(utilization_field, line),
            )
        )
    return sorted(gpus, key=lambda gpu: gpu.index)


def parse_apps_csv(text: str) -> dict[str, list[GpuProcess]]:
    """Processes per GPU UUID, one entry per pid, from the `APPS_QUERY` output."""
    found: dict[str, list[GpuProcess]] = {}
    for line in _data_lines(text):
        fields = line.split(",")
        if len(fields) != _APPS_FIELDS:
            raise _unreadable(line)
        uuid = _value(fields[0])
        pid = _number(fields[1], line)
        if uuid is None or pid is None:
            raise _unreadable(line)
        found.setdefault(uuid, []).append(GpuProcess(pid=pid, used_memory_mib=_number(fields[2], line)))
    return {uuid: list(dedupe_by_pid(processes)) for uuid, processes in found.items()}


def parse_topology(text: str) -> list[tuple[int, int]]:
    """GPU pairs joined by NVLink (cells NV1, NV2, …), sorted, from the matrix `nvidia-smi topo -m`
    prints. Rows and columns of NICs, the affinity columns and the legend are skipped."""
    lines = [_ANSI_ESCAPE.sub("", line) for line in text.splitlines()]
    header = next((i for i, line in enumerate(lines) if _is_topology_header(line.split())), None)
    if header is None:
        raise _unreadable_topology(text.strip().splitlines()[0] if text.strip() else "(nothing)")
    columns: list[int] = []
    for token in lines[header].split():
        label = _GPU_LABEL.fullmatch(token)
        if label is None:
            break
        columns.append(int(label.group(1)))
    pairs: set[tuple[int, int]] = set()
    for line in lines[header + 1 :]:
        tokens = line.split()
        if tokens[:1] == ["Legend:"]:
            break
        if not tokens or re.fullmatch(r"NIC\d+", tokens[0]):
            continue
        label = _GPU_LABEL.fullmatch(tokens[0])
        if label is None or int(label.group(1)) not in columns or len(tokens) <= len(columns):
            raise _unreadable_topology(line)
        row = int(label.group(1))
        for column, cell in zip(columns, tokens[1:], strict=False):
            if (column == row) != (cell == "X"):
                raise _unreadable_topology(line)
            if _NVLINK.fullmatch(cell) and int(cell[2:]) > 0:
                pairs.add((min(row, column), max(row, column)))
            elif cell not in _NOT_NVLINK:
                raise _unreadable_topology(line)
    return sorted(pairs)


def _is_topology_header(tokens: list[str]) -> bool:
    """The matrix's header: GPU0 first (a GPU's own row starts GPU0 X)."""
    return tokens[:1] == ["GPU0"] and tokens[1:2] != ["X"]


def _unreadable_topology(line: str) -> ConfigurationError:
    return ConfigurationError(
        f"`nvidia-smi topo -m` printed a line gpuyard cannot read: {line.strip()!r}. "
        "Describe the NVLink pairs with GPUYARD_GPU_LINKS instead (for example 0-1,2-3)."
    )


class NvidiaSmiGpus(OutsideProcessesMixin):
    """The GPUs of this machine as `nvidia-smi` reports them."""

    name = "nvidia-smi"

    def __init__(self, executable: str = "nvidia-smi", runner: Runner | None = None) -> None:
        self.executable = executable
        self._runner: Runner = runner if runner is not None else run_command

    def list_gpus(self) -> list[GpuInfo]:
        gpus = parse_gpu_csv(self._query(GPU_QUERY))
        apps = parse_apps_csv(self._query(APPS_QUERY))
        return [
            dataclasses.replace(gpu, processes=with_owner_details(apps.get(gpu.uuid, ()))) for gpu in gpus
        ]

    def links(self) -> list[tuple[int, int]]:
        """GPU pairs joined by NVLink, from `nvidia-smi topo -m`. None when it cannot tell (logged): then
        the configured map (GPUYARD_GPU_LINKS) applies."""
        try:
            return parse_topology(self._query(TOPOLOGY_QUERY))
        except ConfigurationError as e:
            logger.warning("no NVLink topology from nvidia-smi: %s", e.detail)
            return []

    def close(self) -> None:
        """Nothing to release: every query is its own process."""

    def _query(self, arguments: Sequence[str]) -> str:
        argv = [self.executable, *arguments]
        try:
            return self._runner(argv)
        except FileNotFoundError as e:
            raise ConfigurationError(
                f"{self.executable} was not found: install the NVIDIA driver (it ships nvidia-smi), "
                "give its full path, or choose the fake GPU backend on a machine without a GPU."
            ) from e
        except subprocess.TimeoutExpired as e:
            raise ConfigurationError(
                f"{self.executable} did not answer within {TIMEOUT_S:g} s: the driver may be hung. "
                "Run `nvidia-smi` by hand; a hung driver usually needs a reboot."
            ) from e
        except subprocess.CalledProcessError as e:
            said = ((e.stderr or "") + (e.stdout or "")).strip().splitlines()
            raise ConfigurationError(
                f"{self.executable} failed (exit status {e.returncode}: {said[0] if said else 'no output'}). "
                "Run `nvidia-smi` by hand to see why; check the NVIDIA driver is installed and loaded."
            ) from e
        except OSError as e:
            raise ConfigurationError(
                f"{self.executable} could not be run ({e}). Check it is an executable nvidia-smi."
            ) from e
