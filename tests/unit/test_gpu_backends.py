"""The GPU backends: fake load and outside processes, the nvidia-smi parsers, NVML edges, auto-detection."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml  # type: ignore[import-untyped,unused-ignore]
import pytest

from gpuyard.adapters.gpu import common, smi
from gpuyard.adapters.gpu.base import GpuProcess
from gpuyard.adapters.gpu.common import Ownership, classify_pid, command_of_pid, user_of_pid
from gpuyard.adapters.gpu.detect import describe_backend, open_gpu_backend
from gpuyard.adapters.gpu.fake import FakeGpus, cpu_seconds_by_group, fake_gpu_uuid, simulated_memory_mib
from gpuyard.adapters.gpu.nvml import NvmlGpus
from gpuyard.adapters.gpu.smi import NvidiaSmiGpus, parse_apps_csv, parse_gpu_csv, parse_topology
from gpuyard.domain.errors import ConfigurationError

DATA = Path(__file__).parent / "data"
QUERY_GPU_CSV = (DATA / "nvidia_smi_query_gpu.csv").read_text()
COMPUTE_APPS_CSV = (DATA / "nvidia_smi_compute_apps.csv").read_text()
# `nvidia-smi topo -m` on the 4 × RTX 3090 box: NVLink bridges join GPUs 0-1 and 2-3.
TOPOLOGY = (DATA / "nvidia_smi_topo_m.txt").read_text()
# A newer driver on a 4 × A100 box with NVLink between every pair and one NIC (its row and column, a GPU
# NUMA ID column and a NIC legend).
TOPOLOGY_WITH_NIC = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV12\tNV12\tNV12\tSYS\t0-31\t0\t\tN/A\n"
    "GPU1\tNV12\t X \tNV12\tNV12\tSYS\t0-31\t0\t\tN/A\n"
    "GPU2\tNV12\tNV12\t X \tNV12\tPXB\t32-63\t1\t\tN/A\n"
    "GPU3\tNV12\tNV12\tNV12\t X \tPXB\t32-63\t1\t\tN/A\n"
    "NIC0\tSYS\tSYS\tPXB\tPXB\t X \t\t\t\t\n"
    "\nLegend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks\n"
    "\nNIC Legend:\n\n  NIC0: mlx5_0\n"
)
UUID_0 = "GPU-3c6a1f0e-8b2d-4a7e-9c15-2f6e0d8b7a41"
UUID_1 = "GPU-9e0b4d27-51c3-6f8a-b2e4-7d1c9a0f3e65"
UUID_2 = "GPU-b71f2c85-0d9e-4a36-8c7b-e5a2f1096d3c"
OWN_PGID = os.getpgid(os.getpid())
ME = pwd.getpwuid(os.getuid()).pw_name


def write_state(path: Path, outside: dict[str, list[dict[str, Any]]]) -> None:
    """Write the fake's state file atomically, as its docstring asks."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"outside": outside}))
    os.replace(tmp, path)


def recorded_runner(apps_csv: str = COMPUTE_APPS_CSV, calls: list[list[str]] | None = None) -> smi.Runner:
    def run(argv: list[str]) -> str:
        if calls is not None:
            calls.append(argv)
        return QUERY_GPU_CSV if argv[1].startswith("--query-gpu=") else apps_csv

    return run


def exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- fake: identity -------------------------------------------------------------------------------


def test_fake_uuids_are_stable_across_instances() -> None:
    first, second = FakeGpus(4, node="ws1"), FakeGpus(4, node="ws1")
    assert [g.uuid for g in first.list_gpus()] == [g.uuid for g in second.list_gpus()]
    assert first.list_gpus()[2].uuid == fake_gpu_uuid("ws1", 2)
    assert first.list_gpus()[0].uuid.startswith("GPU-")


def test_fake_uuids_differ_by_node_and_index() -> None:
    uuids = {fake_gpu_uuid(node, index) for node in ("ws1", "ws2") for index in range(4)}
    assert len(uuids) == 8


def test_fake_gpus_are_idle_24_gib_gpus_by_default() -> None:
    gpus = FakeGpus(3).list_gpus()
    assert [g.index for g in gpus] == [0, 1, 2]
    for gpu in gpus:
        assert (gpu.name, gpu.memory_total_mib) == ("gpuyard fake GPU (24 GiB)", 24576)
        assert (gpu.memory_used_mib, gpu.utilization_pct, gpu.processes) == (0, 0, ())


def test_fake_refuses_a_negative_count() -> None:
    with pytest.raises(ConfigurationError):
        FakeGpus(-1)


# --- fake: outside processes through the state file ------------------------------------------------


def test_missing_state_file_means_nothing_outside(tmp_path: Path) -> None:
    fake = FakeGpus(4, state_file=str(tmp_path / "absent.json"))
    assert len(fake.get_free_gpus([OWN_PGID])) == 4


def test_state_file_outside_process_is_reported_and_reread(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    fake = FakeGpus(4, state_file=str(state))
    notebook = {"pid": 4242, "user": "bob", "used_memory_mib": 1000, "command": "python notebook.py"}
    write_state(state, {"2": [notebook]})

    gpu_2 = fake.list_gpus()[2]
    assert gpu_2.memory_used_mib == 1000
    assert fake.outside_processes(gpu_2, [OWN_PGID]) == [
        GpuProcess(pid=4242, used_memory_mib=1000, user="bob", command="python notebook.py")
    ]
    assert [g.index for g in fake.get_free_gpus([OWN_PGID])] == [0, 1, 3]

    write_state(state, {})  # bob closed his notebook: the next call sees it
    assert [g.index for g in fake.get_free_gpus([OWN_PGID])] == [0, 1, 2, 3]


def test_a_gpuyard_job_process_is_not_outside(tmp_path: Path) -> None:
    state = tmp_path / "gpus.json"
    fake = FakeGpus(4, state_file=str(state))
    write_state(state, {"1": [{"pid": os.getpid(), "used_memory_mib": 2048}]})

    gpu_1 = fake.list_gpus()[1]
    assert [p.pid for p in gpu_1.processes] == [os.getpid()]
    assert fake.outside_processes(gpu_1, [OWN_PGID]) == []
    assert [g.index for g in fake.get_free_gpus([OWN_PGID])] == [0, 1, 2, 3]
    # Without our process group in own_pgids the same process is someone else's.
    assert [g.index for g in fake.get_free_gpus([])] == [0, 2, 3]


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"outside": []}', '{"outside": {"9": []}}', '{"outside": {"0": [{"user": "bob"}]}}'],
)
def test_malformed_state_file_is_a_configuration_error(tmp_path: Path, content: str) -> None:
    state = tmp_path / "gpus.json"
    state.write_text(content)
    with pytest.raises(ConfigurationError, match="malformed"):
        FakeGpus(4, state_file=str(state)).list_gpus()


# --- fake: simulated load of gpuyard's own jobs ----------------------------------------------------


def test_set_job_gpus_simulates_load_and_clear_job_ends_it() -> None:
    fake = FakeGpus(4)
    fake.set_job_gpus(777, [0, 2])  # no such process group: it uses no CPU, so its GPUs sit idle

    gpus = fake.list_gpus()
    for index in (0, 2):
        assert gpus[index].utilization_pct == 0
        assert gpus[index].memory_used_mib == simulated_memory_mib(777, index)
        assert 4096 <= gpus[index].memory_used_mib <= 7168
        assert [p.pid for p in gpus[index].processes] == [777]
    for index in (1, 3):
        assert (gpus[index].utilization_pct, gpus[index].memory_used_mib, gpus[index].processes) == (0, 0, ())
    assert len(fake.get_free_gpus([777])) == 4  # our own job does not make a GPU un-free
    assert [g.index for g in fake.get_free_gpus([])] == [1, 3]

    fake.clear_job(777)
    fake.clear_job(12345)  # unknown jobs are ignored
    assert all(g.utilization_pct == 0 and g.processes == () for g in fake.list_gpus())


def _group(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), start_new_session=True)


def test_a_job_busy_on_the_cpu_keeps_its_fake_gpu_busy_and_a_sleeping_one_idle() -> None:
    busy = _group(sys.executable, "-c", "while True: pass")
    asleep = _group("sleep", "30")
    try:
        fake = FakeGpus(2)
        fake.set_job_gpus(busy.pid, [0])
        fake.set_job_gpus(asleep.pid, [1])
        deadline = time.monotonic() + 15  # on a loaded machine the busy loop may get little of a core
        while True:
            time.sleep(0.5)
            gpus = fake.list_gpus()
            if (gpus[0].utilization_pct or 0) >= 10 or time.monotonic() > deadline:
                break
        assert gpus[0].utilization_pct is not None and gpus[0].utilization_pct >= 10
        assert gpus[1].utilization_pct == 0
        cpu = cpu_seconds_by_group({busy.pid, asleep.pid, 999_999_999})
        assert cpu[busy.pid] > 0.05 and cpu[asleep.pid] < 0.05 and cpu[999_999_999] == 0.0
    finally:
        for proc in (busy, asleep):
            proc.kill()
            proc.wait()


def test_fake_is_safe_to_use_from_several_threads() -> None:
    fake = FakeGpus(4)

    def churn(job_pgid: int) -> None:
        for _ in range(200):
            fake.set_job_gpus(job_pgid, [job_pgid % 4])
            fake.list_gpus()
            fake.clear_job(job_pgid)

    threads = [threading.Thread(target=churn, args=(pgid,)) for pgid in range(100, 108)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(g.processes == () for g in fake.list_gpus())


# --- shared ownership rules ------------------------------------------------------------------------


def test_classify_pid_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = exited_pid()
    assert classify_pid(os.getpid(), [OWN_PGID]) is Ownership.OWN  # by process group
    assert classify_pid(4242, [4242]) is Ownership.OWN  # the pid itself is a job's pgid
    assert classify_pid(os.getpid(), [4_194_305]) is Ownership.OUTSIDE  # no pid or pgid is that high
    assert classify_pid(0, [OWN_PGID]) is Ownership.OUTSIDE  # untranslatable pid from another namespace
    assert classify_pid(gone, [OWN_PGID]) is Ownership.GONE
    assert classify_pid(gone, [OWN_PGID], missing_is_outside=True) is Ownership.OUTSIDE

    def refuse(pid: int) -> int:
        raise PermissionError(pid)

    monkeypatch.setattr(os, "getpgid", refuse)
    assert classify_pid(os.getpid(), [OWN_PGID]) is Ownership.OUTSIDE


def test_owner_details_of_a_pid() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "a-marker"], stdin=subprocess.PIPE
    )
    try:
        assert user_of_pid(child.pid) == ME
        deadline = time.monotonic() + 10  # until the child has exec'd, /proc shows the parent's command
        while not (command_of_pid(child.pid) or "").endswith("a-marker") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (command_of_pid(child.pid) or "").endswith("sys.stdin.read() a-marker")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert user_of_pid(0) is None and user_of_pid(child.pid) is None and command_of_pid(child.pid) is None


# --- nvidia-smi ------------------------------------------------------------------------------------


def test_parse_gpu_csv_on_recorded_4x3090_output() -> None:
    gpus = parse_gpu_csv(QUERY_GPU_CSV)
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA GeForce RTX 3090"}
    assert [g.utilization_pct for g in gpus] == [97, 0, None, 0]
    assert [g.memory_used_mib for g in gpus] == [18342, 1, 10240, 3]
    assert gpus[0].uuid == UUID_0 and gpus[0].memory_total_mib == 24576 and gpus[0].processes == ()


def test_parse_gpu_csv_tolerates_blanks_spaces_and_unsupported_fields() -> None:
    text = (
        "\n  1 ,  GPU-b  ,  Tesla V100-SXM2 16 GB , 16384 , [N/A] , [Not Supported] \n"
        "\n0, GPU-a, X, 8, 1, 5\n"
    )
    gpus = parse_gpu_csv(text)
    assert [(g.index, g.uuid, g.name) for g in gpus] == [
        (0, "GPU-a", "X"),
        (1, "GPU-b", "Tesla V100-SXM2 16 GB"),
    ]
    assert (gpus[1].memory_total_mib, gpus[1].memory_used_mib, gpus[1].utilization_pct) == (16384, 0, None)


def test_parse_apps_csv_on_recorded_output() -> None:
    apps = parse_apps_csv(COMPUTE_APPS_CSV)
    assert apps == {
        UUID_0: [GpuProcess(pid=31337, used_memory_mib=18330)],
        UUID_2: [GpuProcess(pid=28811, used_memory_mib=10228), GpuProcess(pid=28950, used_memory_mib=None)],
    }


@pytest.mark.parametrize("text", ["", "\n\n", "No running processes found\n"])
def test_parse_apps_csv_with_no_processes(text: str) -> None:
    assert parse_apps_csv(text) == {}


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_gpu_csv, "0, GPU-a, X, 8\n"),
        (parse_gpu_csv, "zero, GPU-a, X, 8, 1, 5"),
        (parse_apps_csv, "GPU-a, 7"),
    ],
)
def test_unreadable_nvidia_smi_output_is_a_configuration_error(
    parse: Callable[[str], object], text: str
) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        parse(text)


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        pytest.param(TOPOLOGY, [(0, 1), (2, 3)], id="4x3090-bridged-pairs"),
        pytest.param(TOPOLOGY_WITH_NIC, [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], id="4xA100-nic"),
        pytest.param(TOPOLOGY.replace("NV4", "PHB"), [], id="pcie-only"),
        pytest.param(
            TOPOLOGY.replace("NODE", "SOC").replace("\x1b[4m", "").replace("\x1b[0m", ""),
            [(0, 1), (2, 3)],
            id="old-driver-plain",
        ),
        pytest.param("\tGPU0\tCPU Affinity\tNUMA Affinity\nGPU0\t X \t0-15\t\tN/A\n", [], id="one-gpu"),
    ],
)
def test_nvlink_pairs_from_the_topology_matrix(text: str, pairs: list[tuple[int, int]]) -> None:
    assert parse_topology(text) == pairs


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("No devices were found\n", id="no-devices"),
        pytest.param(TOPOLOGY.replace("NV4\tNODE\tNODE\t0-63", "NV4\tQPI\tNODE\t0-63", 1), id="unknown-cell"),
        pytest.param(TOPOLOGY.replace("GPU1\tNV4\t X ", "GPU1\tNV4\tNV4", 1), id="no-self"),
        pytest.param(
            TOPOLOGY.replace("GPU3\tNODE\tNODE\tNV4\t X \t0-63\t\tN/A", "GPU3\tNODE"), id="short-row"
        ),
        pytest.param(TOPOLOGY.replace("GPU2\tNODE", "GPU7\tNODE", 1), id="unknown-gpu"),
    ],
)
def test_an_unreadable_topology_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"topo -m.*cannot read.*GPUYARD_GPU_LINKS"):
        parse_topology(text)


def test_the_nvidia_smi_backend_reads_nvlink_pairs_from_topo(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return TOPOLOGY

    assert NvidiaSmiGpus("/usr/bin/nvidia-smi", runner=run).links() == [(0, 1), (2, 3)]
    assert calls == [["/usr/bin/nvidia-smi", "topo", "-m"]]

    def fail(argv: list[str]) -> str:
        raise subprocess.CalledProcessError(2, argv, "", "Invalid combination of input arguments")

    with caplog.at_level("WARNING"):
        assert NvidiaSmiGpus(runner=fail).links() == [], "no topology is no error: the configured map applies"
        assert NvidiaSmiGpus(runner=lambda argv: "garbage\n").links() == []
    assert "exit status 2" in caplog.text and "'garbage'" in caplog.text


def test_nvidia_smi_backend_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    apps = COMPUTE_APPS_CSV + f"{UUID_1}, {os.getpid()}, 900\n"  # a gpuyard job (this process) on GPU 1
    backend = NvidiaSmiGpus("/opt/nvidia/nvidia-smi", runner=recorded_runner(apps, calls))
    monkeypatch.setattr(common, "in_nested_pid_namespace", lambda: True)  # recorded pids: not visible here

    gpus = backend.list_gpus()
    assert [p.pid for p in gpus[2].processes] == [28811, 28950]
    assert gpus[1].processes == (
        GpuProcess(pid=os.getpid(), used_memory_mib=900, user=ME, command=command_of_pid(os.getpid())),
    )
    assert [g.index for g in backend.get_free_gpus([OWN_PGID])] == [1, 3]
    assert [p.pid for p in backend.outside_processes(gpus[0], [OWN_PGID])] == [31337]
    assert calls[0] == ["/opt/nvidia/nvidia-smi", *smi.GPU_QUERY]
    assert calls[1] == ["/opt/nvidia/nvidia-smi", *smi.APPS_QUERY]
    assert describe_backend(backend) == "nvidia-smi (4 × NVIDIA GeForce RTX 3090)"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("nvidia-smi"),
        subprocess.TimeoutExpired(["nvidia-smi"], 10),
        subprocess.CalledProcessError(6, ["nvidia-smi"], "", "No devices were found"),
    ],
)
def test_nvidia_smi_failures_are_configuration_errors(error: Exception) -> None:
    def fail(argv: list[str]) -> str:
        raise error

    with pytest.raises(ConfigurationError, match="nvidia-smi") as raised:
        NvidiaSmiGpus(runner=fail).list_gpus()
    assert raised.value.__cause__ is error


def test_nvidia_smi_missing_executable_runs_for_real(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="was not found"):
        NvidiaSmiGpus(str(tmp_path / "nvidia-smi")).list_gpus()


# --- NVML --------------------------------------------------------------------------------------------


def test_nvml_without_the_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(ConfigurationError, match="nvidia-ml-py"):
        NvmlGpus()


def test_nvml_failing_init_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    with pytest.raises(ConfigurationError, match="NVIDIA driver") as raised:
        NvmlGpus()
    assert isinstance(raised.value.__cause__, pynvml.NVMLError)


def test_nvml_sampling_with_a_stand_in_library(monkeypatch: pytest.MonkeyPatch) -> None:
    class NVMLError(Exception):
        pass

    def unsupported(handle: object) -> object:
        raise NVMLError("Not Supported")

    mib = 1024 * 1024
    proc = types.SimpleNamespace
    stand_in = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: f"handle-{index}",
        nvmlDeviceGetUUID=lambda handle: b"GPU-0000",  # old pynvml returns bytes
        nvmlDeviceGetName=lambda handle: "NVIDIA GeForce RTX 3090",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=24576 * mib, used=5000 * mib),
        nvmlDeviceGetUtilizationRates=unsupported,
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [proc(pid=0, usedGpuMemory=None)],
        nvmlDeviceGetGraphicsRunningProcesses=lambda handle: [
            proc(pid=0, usedGpuMemory=1),
            proc(pid=5, usedGpuMemory=2 * mib),
        ],
    )
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", stand_in)

    backend = NvmlGpus()
    [gpu] = backend.list_gpus()
    assert (gpu.uuid, gpu.name, gpu.memory_total_mib, gpu.memory_used_mib) == (
        "GPU-0000",
        "NVIDIA GeForce RTX 3090",
        24576,
        5000,
    )
    assert gpu.utilization_pct is None
    assert [(p.pid, p.used_memory_mib) for p in gpu.processes] == [(0, None), (5, 2)]
    assert describe_backend(backend) == "nvml (1 × NVIDIA GeForce RTX 3090)"
    backend.close()
    backend.close()
    assert calls == ["shutdown"]


# --- choosing a backend ----------------------------------------------------------------------------


def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)


def test_auto_without_gpu_falls_back_to_fake_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    no_nvml(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    state = str(tmp_path / "gpus.json")
    with caplog.at_level(logging.WARNING, logger="gpuyard.adapters.gpu.detect"):
        backend = open_gpu_backend("auto", fake_count=2, node="ws9", fake_state_file=state)
    assert isinstance(backend, FakeGpus)
    assert (backend.count, backend.node, str(backend.state_file)) == (2, "ws9", state)
    assert any(
        r.levelno == logging.WARNING and "No NVIDIA GPU found" in r.getMessage() for r in caplog.records
    )
    assert describe_backend(backend) == "fake (2 virtual GPUs — no NVIDIA GPU found; jobs run on the CPU)"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_auto_on_a_machine_without_gpu_gives_the_fake(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpuyard.adapters.gpu.detect"):
        backend = open_gpu_backend("auto")
    assert isinstance(backend, FakeGpus) and backend.count == 4
    assert "No NVIDIA GPU found" in caplog.text


def test_auto_uses_nvidia_smi_when_nvml_fails_and_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvml(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(smi, "run_command", recorded_runner())
    backend = open_gpu_backend("auto")
    assert isinstance(backend, NvidiaSmiGpus) and backend.executable == "/usr/bin/nvidia-smi"


def test_auto_falls_back_to_fake_when_nvidia_smi_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvml(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def broken(argv: list[str]) -> str:
        raise subprocess.CalledProcessError(9, argv, "", "NVIDIA-SMI has failed")

    monkeypatch.setattr(smi, "run_command", broken)
    assert isinstance(open_gpu_backend("auto"), FakeGpus)


def test_explicit_choices() -> None:
    fake = open_gpu_backend(" Fake ", fake_count=3)
    assert isinstance(fake, FakeGpus) and len(fake.list_gpus()) == 3
    assert describe_backend(fake) == "fake (3 virtual GPUs; jobs run on the CPU)"


def test_unknown_choice_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        open_gpu_backend("cuda")
    assert raised.value.detail == "Unknown GPU backend 'cuda': use auto, nvml, nvidia-smi or fake."


def test_nvml_reports_nvlink_pairs_through_peer_to_peer_status(monkeypatch: pytest.MonkeyPatch) -> None:
    class NVMLError(Exception):
        pass

    linked = {(0, 1), (2, 3)}
    stand_in = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_P2P_CAPS_INDEX_NVLINK=2,
        NVML_P2P_STATUS_OK=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 4,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetP2PStatus=lambda a, b, cap: 0 if cap == 2 and (a, b) in linked else 4,
    )
    monkeypatch.setitem(sys.modules, "pynvml", stand_in)
    assert NvmlGpus().links() == [(0, 1), (2, 3)]

    def broken(a: int, b: int, cap: int) -> int:
        raise NVMLError("Not Supported")

    stand_in.nvmlDeviceGetP2PStatus = broken
    assert NvmlGpus().links() == [], "no topology is no error: the configured map applies"


def test_backends_without_topology_report_no_links() -> None:
    assert FakeGpus(4).links() == []
