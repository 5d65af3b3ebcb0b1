"""What every GPU backend shares: telling gpuyard's processes from outside ones, and finding free GPUs.

A process on a GPU is *ours* when its pid, or its process group, is one of the process groups gpuyard
started its jobs in (each job runs in its own session, so its pgid is the job leader's pid).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import pwd
from collections.abc import Collection, Iterable

from gpuyard.adapters.gpu.base import GpuInfo, GpuProcess

# PROC_PID_INIT_INO (0xEFFFFFFC, include/linux/proc_ns.h): the inode of the host's initial PID namespace.
_INITIAL_PID_NAMESPACE = "pid:[4026531836]"
_COMMAND_MAX_CHARS = 200


class Ownership(enum.StrEnum):
    OWN = "own"
    OUTSIDE = "outside"
    GONE = "gone"


@functools.cache
def in_nested_pid_namespace() -> bool:
    """True inside a container's PID namespace, where the driver may report pids we cannot look up."""
    try:
        return os.readlink("/proc/self/ns/pid") != _INITIAL_PID_NAMESPACE
    except OSError:
        return False


def classify_pid(pid: int, own_pgids: Collection[int], *, missing_is_outside: bool = False) -> Ownership:
    """Whose is `pid`? Anything we cannot inspect counts as outside: better a busy GPU than a shared one.

    `missing_is_outside` says what a pid that does not exist here means: a process that has just exited
    (GONE, the default) or one we cannot see (another PID namespace, a simulated process: OUTSIDE).
    """
    if pid in own_pgids:
        return Ownership.OWN
    if pid <= 0:  # the driver could not translate it into our PID namespace; getpgid(0) would be *us*
        return Ownership.OUTSIDE
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return Ownership.OUTSIDE if missing_is_outside else Ownership.GONE
    except OSError:  # PermissionError and friends: we cannot tell, so it is not ours
        return Ownership.OUTSIDE
    return Ownership.OWN if pgid in own_pgids else Ownership.OUTSIDE


def outside_processes(
    gpu: GpuInfo, own_pgids: Collection[int], *, missing_is_outside: bool = False
) -> list[GpuProcess]:
    """The processes on `gpu` that belong to no gpuyard job."""
    own = frozenset(own_pgids)
    return [
        process
        for process in gpu.processes
        if classify_pid(process.pid, own, missing_is_outside=missing_is_outside) is Ownership.OUTSIDE
    ]


def free_gpus(
    gpus: Iterable[GpuInfo], own_pgids: Collection[int], *, missing_is_outside: bool = False
) -> list[GpuInfo]:
    """The GPUs that no outside process holds (gpuyard's own jobs do not make a GPU un-free)."""
    own = frozenset(own_pgids)
    return [gpu for gpu in gpus if not outside_processes(gpu, own, missing_is_outside=missing_is_outside)]


def user_of_pid(pid: int) -> str | None:
    """The login name owning `pid` (from /proc/<pid>/status), its uid if it has no name, or None."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
            uid_line = next((line for line in status if line.startswith("Uid:")), None)
        if uid_line is None:
            return None
        uid = int(uid_line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def command_of_pid(pid: int) -> str | None:
    """The command line of `pid` (from /proc/<pid>/cmdline), shortened, or None when unreadable."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read(4 * _COMMAND_MAX_CHARS)
    except OSError:
        return None
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return command[:_COMMAND_MAX_CHARS] or None


def with_owner_details(processes: Iterable[GpuProcess]) -> tuple[GpuProcess, ...]:
    """Fill in the user and command of each process where the backend did not report them."""
    return tuple(
        dataclasses.replace(
            process,
            user=process.user if process.user is not None else user_of_pid(process.pid),
            command=process.command if process.command is not None else command_of_pid(process.pid),
        )
        for process in processes
    )


def dedupe_by_pid(processes: Iterable[GpuProcess]) -> tuple[GpuProcess, ...]:
    """One entry per pid, the first reported winning (a process may be both compute and graphics)."""
    seen: dict[int, GpuProcess] = {}
    for process in processes:
        seen.setdefault(process.pid, process)
    return tuple(seen.values())


def bytes_to_mib(value: int | None) -> int | None:
    return None if value is None else int(value) // (1024 * 1024)


class OutsideProcessesMixin:
    """Gives a backend `outside_processes` and `get_free_gpus` on top of its own `list_gpus`."""

    def list_gpus(self) -> list[GpuInfo]:
        raise NotImplementedError

    def missing_pid_is_outside(self) -> bool:
        """Real backends: a pid we cannot find is an exited process, unless we live in a container."""
        return in_nested_pid_namespace()

    def outside_processes(self, gpu: GpuInfo, own_pgids: Collection[int]) -> list[GpuProcess]:
        return outside_processes(gpu, own_pgids, missing_is_outside=self.missing_pid_is_outside())

    def get_free_gpus(self, own_pgids: Collection[int]) -> list[GpuInfo]:
        return free_gpus(self.list_gpus(), own_pgids, missing_is_outside=self.missing_pid_is_outside())

    def links(self) -> list[tuple[int, int]]:
        """NVLink pairs; backends that cannot tell report none."""
        return []
