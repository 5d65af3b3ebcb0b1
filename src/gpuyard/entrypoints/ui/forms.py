"""What people type into the UI, checked before it goes to the API: each problem says what to write."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuyard.entrypoints.cli.format import parse_duration

PRIORITIES = ("low", "normal", "high", "urgent")
SHELL_CHARS = set("|&;<>$`*(){}")
ENV_KEY_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True)
class SubmitForm:
    """The submit form's fields as typed."""

    command: str
    gpus: int | float | None = 1
    priority: str = "normal"
    name: str = ""
    workdir: str = ""
    env_text: str = ""
    time_limit: str = ""
    preemptible: bool = False


@dataclass(frozen=True)
class Submission:
    """The arguments of Client.submit."""

    command: str | list[str]
    gpus: int
    priority: str
    name: str | None
    workdir: str | None
    env: dict[str, str] = field(default_factory=dict)
    time_limit_s: int | None = None
    retry_on: tuple[str, ...] = ()
    preemptible: bool = False

    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "gpus": self.gpus,
            "priority": self.priority,
            "name": self.name,
            "workdir": self.workdir,
            "env": self.env,
            "time_limit_s": self.time_limit_s,
        }
        if self.retry_on:
            kwargs["retry_on"] = self.retry_on
        if self.preemptible:
            kwargs["preemptible"] = True
        return kwargs


def parse_command(text: str) -> str | list[str]:
    """An argv list for a plain command line; the line itself (run under `sh -c`) when it uses shell
    syntax (pipes, redirections, `&&`, variables, globs). Raises ValueError with what to fix."""
    text = text.strip()
    if not text:
        raise ValueError("Enter the command to run, for example `python train.py --epochs 10`.")
    if SHELL_CHARS & set(text):
        return text
    try:
        argv = shlex.split(text)
    except ValueError:
        raise ValueError("The command has a quote that is never closed: close it or remove it.") from None
    if not argv:
        raise ValueError("Enter the command to run, for example `python train.py --epochs 10`.")
    return argv


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped). Raises ValueError naming the bad line."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not set(key) <= ENV_KEY_CHARS or key[0].isdigit():
            raise ValueError(
                f"Environment line {number} ({line[:40]!r}) must look like KEY=VALUE, "
                "with a name of letters, digits and _."
            )
        if key.startswith("GPUYARD_"):
            raise ValueError(f"Environment line {number}: {key} is set by gpuyard itself; pick another name.")
        env[key] = value
    return env


def service_python_env() -> dict[str, str]:
    """PATH and VIRTUAL_ENV that make `python` in a job the Python the gpuyard service runs (its
    virtualenv, with the example job's packages): what `gpuyard submit` does with the shell's."""
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {"PATH": bin_dir if not path else f"{bin_dir}:{path}"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def parse_submission(
    form: SubmitForm, *, base_env: Mapping[str, str] | None = None
) -> tuple[Submission | None, list[str]]:
    """The submission, or None and every problem found (so all of them can be fixed at once)."""
    problems: list[str] = []
    command: str | list[str] = ""
    try:
        command = parse_command(form.command)
    except ValueError as e:
        problems.append(str(e))
    gpus = int(form.gpus) if form.gpus is not None and float(form.gpus).is_integer() else 0
    if gpus < 1:
        problems.append("A job needs at least 1 GPU: set GPUs to 1 or more.")
    priority = form.priority.strip().lower()
    if priority not in PRIORITIES:
        problems.append(f"Priority must be one of {', '.join(PRIORITIES)}.")
    workdir = form.workdir.strip()
    if workdir and not os.path.isabs(workdir):
        problems.append(f"The working directory {workdir!r} must be an absolute path (starting with /).")
    elif workdir and not os.path.isdir(workdir):
        problems.append(f"The working directory {workdir} does not exist: create it or pick another.")
    env = dict(base_env or {})
    try:
        env.update(parse_env(form.env_text))
    except ValueError as e:
        problems.append(str(e))
    limit_s = None
    if form.time_limit.strip():
        try:
            limit_s = parse_duration(form.time_limit)
        except ValueError as e:
            problems.append(f"Time limit: {e}")
        else:
            if limit_s < 1:
                problems.append("The time limit must be at least 1 second (or empty for none).")
    if problems:
        return None, problems
    submission = Submission(
        command=command,
        gpus=gpus,
        priority=priority,
        name=form.name.strip() or None,
        workdir=workdir or None,
        env=env,
        time_limit_s=limit_s,
        preemptible=bool(form.preemptible),
    )
    return submission, []


def copy_submission(job: Mapping[str, Any]) -> Submission:
    """A finished job's spec, to submit again as a new job: the failures it asked to retry go with it; its
    budget of attempts is the default again (a requeued job's `max_attempts` counts its past attempts)."""
    return Submission(
        command=list(job["command"]),
        gpus=int(job["gpus"]),
        priority=str(job["priority"]),
        name=str(job["name"]),
        workdir=job.get("workdir"),
        env=dict(job.get("env") or {}),
        time_limit_s=job.get("time_limit_s"),
        retry_on=tuple(job.get("retry_on") or ()),
        preemptible=bool(job.get("preemptible")),
    )
