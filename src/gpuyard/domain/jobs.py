"""Jobs: priorities, states, failure classes and the validated job specification."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gpuyard.domain.errors import InvalidJobSpec
from gpuyard.domain.text import quote, text_problem

MAX_NAME_LEN = 200
MAX_COMMAND_BYTES = 64 * 1024
MAX_ARGS = 4096
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 16 * 1024
MAX_WORKDIR_LEN = 4096
MAX_GPUS_PER_JOB = 64
MAX_TIME_LIMIT_S = 60 * 24 * 3600
MAX_ATTEMPTS_CAP = 100  # the most any configuration allows
RESERVED_ENV_PREFIXES = ("GPUYARD_",)
RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"})


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]

    @classmethod
    def parse(cls, value: str) -> Priority:
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise InvalidJobSpec(f"Unknown priority {quote(value)}: use one of {names}.") from None


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.URGENT: 3}


class JobState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def holds_gpus(self) -> bool:
        return self in (JobState.DISPATCHED, JobState.RUNNING)


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
ACTIVE_STATES = frozenset({JobState.DISPATCHED, JobState.RUNNING})


class FailureClass(StrEnum):
    EXIT_NONZERO = "exit_nonzero"
    OOM = "oom"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    NODE_LOST = "node_lost"
    GPU_UNAVAILABLE = "gpu_unavailable"
    LAUNCH_ERROR = "launch_error"
    PREEMPTED = "preempted"  # stopped to give its GPUs to a job ahead of it in line: not a failure


@dataclass(frozen=True)
class JobSpec:
    """What a person asked for, validated. `argv` is what runs; a shell string runs as `sh -c`."""

    argv: tuple[str, ...]
    gpus: int
    priority: Priority = Priority.NORMAL
    name: str = ""
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    time_limit_s: int | None = None
    max_attempts: int | None = None  # None: the service's default
    retry_on: frozenset[FailureClass] = frozenset()  # its own failures it wants retried
    preemptible: bool = False  # may be stopped (and put back in its place) when a job ahead needs its GPUs

    @property
    def display_command(self) -> str:
        return shlex.join(self.argv)


def parse_command(command: str | Sequence[str]) -> tuple[str, ...]:
    """An argv list runs as given; a shell string runs under `sh -c` so pipes and `&&` work."""
    if isinstance(command, str):
        if not command.strip():
            raise InvalidJobSpec("The command is empty: give the program to run, e.g. `python train.py`.")
        _check_text(command, "The command")
        if len(command.encode()) > MAX_COMMAND_BYTES:
            raise InvalidJobSpec(f"The command is longer than {MAX_COMMAND_BYTES} bytes: put it in a script.")
        return ("/bin/sh", "-c", command)
    argv = tuple(command)
    if not argv or not argv[0].strip():
        raise InvalidJobSpec("The command is empty: give the program to run, e.g. ['python', 'train.py'].")
    if len(argv) > MAX_ARGS:
        raise InvalidJobSpec(f"The command has more than {MAX_ARGS} arguments: put it in a script.")
    for arg in argv:
        _check_text(arg, "The command")
    if sum(len(a.encode()) + 1 for a in argv) > MAX_COMMAND_BYTES:
        raise InvalidJobSpec(f"The command is longer than {MAX_COMMAND_BYTES} bytes: put it in a script.")
    return argv


def default_name(command: str | Sequence[str]) -> str:
    """The program's name: `train.sh` for ./scripts/train.sh; a shell line keeps its words."""
    words = command.split(maxsplit=1) if isinstance(command, str) else list(command[:1])
    first = os.path.basename(words[0].rstrip("/")) or words[0]
    return " ".join([first, *words[1:]]).strip() if isinstance(command, str) else first


def make_spec(
    *,
    command: str | Sequence[str],
    gpus: int,
    priority: str = "normal",
    name: str | None = None,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
    time_limit_s: int | None = None,
    max_attempts: int | None = None,
    retry_on: Sequence[str] = (),
    preemptible: bool = False,
) -> JobSpec:
    """Validate a submission; every refusal says what to change. (The admins' cap on `max_attempts` is the
    service's to check.)"""
    from gpuyard.domain.retry import check_max_attempts, parse_retry_on

    argv = parse_command(command)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidJobSpec(f"gpus must be a whole number of at least 1, not {quote(gpus)}.")
    if gpus > MAX_GPUS_PER_JOB:
        raise InvalidJobSpec(f"gpus must be at most {MAX_GPUS_PER_JOB}; ask for fewer GPUs.")
    prio = Priority.parse(priority)
    clean_name = (name or "").strip()
    if not clean_name:
        clean_name = default_name(command if isinstance(command, str) else argv)[:MAX_NAME_LEN]
    if len(clean_name) > MAX_NAME_LEN:
        raise InvalidJobSpec(f"The name is longer than {MAX_NAME_LEN} characters: shorten it.")
    _check_text(clean_name, "The name")
    if workdir is not None:
        if not workdir.strip() or len(workdir) > MAX_WORKDIR_LEN:
            raise InvalidJobSpec("The working directory must be a non-empty path under 4096 characters.")
        _check_text(workdir, "The working directory")
        if not os.path.isabs(workdir):
            raise InvalidJobSpec(f"The working directory {quote(workdir)} must be an absolute path.")
    clean_env = _check_env(env or {})
    if time_limit_s is not None:
        if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, int) or time_limit_s < 1:
            raise InvalidJobSpec(
                f"time_limit_s must be a whole number of seconds ≥ 1, not {quote(time_limit_s)}."
            )
        if time_limit_s > MAX_TIME_LIMIT_S:
            raise InvalidJobSpec(f"time_limit_s must be at most {MAX_TIME_LIMIT_S} (60 days).")
    if max_attempts is not None:
        check_max_attempts(max_attempts, cap=MAX_ATTEMPTS_CAP)
    return JobSpec(
        argv=argv,
        gpus=gpus,
        priority=prio,
        name=clean_name,
        workdir=workdir,
        env=clean_env,
        time_limit_s=time_limit_s,
        max_attempts=max_attempts,
        retry_on=parse_retry_on(retry_on),
        preemptible=_check_flag(preemptible, "preemptible"),
    )


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV_VARS:
        raise InvalidJobSpec(f"At most {MAX_ENV_VARS} environment variables may be set.")
    clean: dict[str, str] = {}
    for key, value in env.items():
        if (
            not key
            or not (key[0].isalpha() or key[0] == "_")
            or not all(c.isalnum() or c == "_" for c in key)
        ):
            raise InvalidJobSpec(
                f"Environment variable name {quote(key)} is invalid: use letters, digits and _."
            )
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            raise InvalidJobSpec(f"Environment variable {key} is set by gpuyard itself and cannot be given.")
        if not isinstance(value, str) or text_problem(value) or len(value.encode()) > MAX_ENV_VALUE_BYTES:
            raise InvalidJobSpec(
                f"Environment variable {key} must be a string under 16 KiB without NUL or lone surrogates."
            )
        clean[key] = value
    return clean


def _check_flag(value: bool, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidJobSpec(f"{what} must be true or false, not {quote(value)}.")
    return value


def _check_text(text: str, what: str) -> None:
    problem = text_problem(text)
    if problem is not None:
        raise InvalidJobSpec(f"{what} {problem}: remove it.")


_RUN_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def tensorboard_run(job_id: int, name: str, attempt: int) -> str:
    """The TensorBoard run of a job's attempt, relative to the TensorBoard log dir: `job-12-digits/attempt-1`
    (the name kept to safe characters, so the run is a plain directory and readable in TensorBoard)."""
    slug = _RUN_NAME_CHARS.sub("-", name).strip("-.")[:40]
    return f"job-{job_id}-{slug}/attempt-{attempt}" if slug else f"job-{job_id}/attempt-{attempt}"
