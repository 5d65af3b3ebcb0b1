"""Job traces for `gpuyard simulate`: the text format and its parser.

A trace is a CSV-like text file, one job a line, after a header line:

    # nodes: 1x4
    submit_s,gpus,priority,user,runtime_s,time_limit_s
    0,2,normal,alice,5400,7200
    30,1,high,bob,600,

`submit_s` is seconds from the start of the trace; `runtime_s` is how long the job really runs (it is killed
at `time_limit_s` when that is shorter); an empty `time_limit_s` means none. An optional seventh column,
`preemptible`, says `yes` for a job that may be stopped and put back in line when a job ahead needs its GPUs
(it resumes from a checkpoint: see `simulator`); empty or `no` for one that may not. `priority` is one of
low, normal, high, urgent. Blank lines and lines starting with `#` are skipped; one optional `# nodes: NxG`
line gives the cluster (N nodes of G GPUs each, default 1x4). Jobs may be listed in any order: they are
sorted by `submit_s` (stable), and numbered 1, 2, … in that order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from gpuyard.domain.errors import GpuyardError
from gpuyard.domain.jobs import Priority

HEADER = ("submit_s", "gpus", "priority", "user", "runtime_s", "time_limit_s")
PREEMPTIBLE = "preemptible"  # the optional seventh column
_YES, _NO = ("yes", "true", "1", "y"), ("no", "false", "0", "n", "")
DEFAULT_NODES = 1
DEFAULT_GPUS_PER_NODE = 4
_NODES_DIRECTIVE = re.compile(r"#\s*nodes\s*:(.*)$", re.IGNORECASE)
_CLUSTER = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


class TraceError(GpuyardError):
    """A trace file that cannot be simulated; the message names the line and the field to fix."""

    code = "invalid_trace"


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace. `job_id` is its place in submission order (1-based), also its FIFO `seq`."""

    job_id: int
    submit_s: float
    gpus: int
    priority: Priority
    user: str
    runtime_s: float
    time_limit_s: float | None = None
    preemptible: bool = False
    line: int = field(default=0, compare=False)  # where it came from, for messages

    @property
    def actual_runtime_s(self) -> float:
        """How long it holds its GPUs: its runtime, or its time limit when it is killed there."""
        if self.time_limit_s is not None and self.runtime_s > self.time_limit_s:
            return self.time_limit_s
        return self.runtime_s


@dataclass(frozen=True)
class Trace:
    name: str
    jobs: tuple[TraceJob, ...]
    nodes: int = DEFAULT_NODES
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def parse_cluster(text: str) -> tuple[int, int]:
    """`1x4` → (1, 4): nodes and GPUs per node, each at least 1."""
    match = _CLUSTER.fullmatch(text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise TraceError(
            f"cluster {text.strip()!r} is not NODESxGPUS with both at least 1, e.g. 1x4 or 16x4."
        )
    return int(match[1]), int(match[2])


def parse_trace(text: str, *, name: str) -> Trace:
    """Parse a trace; every refusal is a TraceError naming the trace, the line and the field."""
    cluster: tuple[int, int] | None = None
    columns: tuple[str, ...] | None = None
    jobs: list[TraceJob] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            directive = _NODES_DIRECTIVE.match(line)
            if directive is not None:
                if cluster is not None:
                    raise TraceError(f"{name}, line {number}: a second `# nodes:` line; keep only one.")
                cluster = _cluster_at(directive[1], name=name, number=number)
            continue
        if columns is None:
            columns = _check_header(line, name=name, number=number)
            continue
        jobs.append(_parse_job(line, columns, name=name, number=number))
    if columns is None or not jobs:
        raise TraceError(f"{name}: no jobs; give the header line {','.join(HEADER)} and one job a line.")
    nodes, gpus_per_node = cluster or (DEFAULT_NODES, DEFAULT_GPUS_PER_NODE)
    return with_cluster(Trace(name, tuple(jobs), 1, 1), nodes=nodes, gpus_per_node=gpus_per_node)


def with_cluster(trace: Trace, *, nodes: int, gpus_per_node: int) -> Trace:
    """The trace on another cluster, jobs in submission order; a job no node can hold is refused."""
    for job in trace.jobs:
        if job.gpus > gpus_per_node:
            raise TraceError(
                f"{trace.name}, line {job.line}: gpus: the job asks for {job.gpus} GPUs but each node has "
                f"{gpus_per_node} ({nodes}x{gpus_per_node}); ask for fewer or give a bigger `# nodes:`."
            )
    ordered = sorted(trace.jobs, key=lambda j: j.submit_s)  # stable: equal times keep file order
    jobs = tuple(replace(job, job_id=i) for i, job in enumerate(ordered, start=1))
    return Trace(trace.name, jobs, nodes, gpus_per_node)


def format_trace(trace: Trace) -> str:
    """The trace as text that `parse_trace` reads back to an equal trace."""
    preemptible = any(job.preemptible for job in trace.jobs)
    header = (*HEADER, PREEMPTIBLE) if preemptible else HEADER
    lines = [f"# nodes: {trace.nodes}x{trace.gpus_per_node}", ",".join(header)]
    for job in trace.jobs:
        limit = "" if job.time_limit_s is None else _number(job.time_limit_s)
        fields = (_number(job.submit_s), str(job.gpus), job.priority.value, job.user, _number(job.runtime_s))
        more = (("yes" if job.preemptible else "no"),) if preemptible else ()
        lines.append(",".join((*fields, limit, *more)))
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _cluster_at(text: str, *, name: str, number: int) -> tuple[int, int]:
    try:
        return parse_cluster(text)
    except TraceError as e:
        raise TraceError(f"{name}, line {number}: nodes: {e.detail}") from None


def _check_header(line: str, *, name: str, number: int) -> tuple[str, ...]:
    columns = tuple(f.strip() for f in line.split(","))
    if columns not in (HEADER, (*HEADER, PREEMPTIBLE)):
        raise TraceError(
            f"{name}, line {number}: expected the header line {','.join(HEADER)} (and, optionally, "
            f",{PREEMPTIBLE}), not {line!r}."
        )
    return columns


def _parse_job(line: str, columns: tuple[str, ...], *, name: str, number: int) -> TraceJob:
    fields = [f.strip() for f in line.split(",")]
    where = f"{name}, line {number}"
    if len(fields) != len(columns):
        raise TraceError(
            f"{where}: expected {len(columns)} fields ({','.join(columns)}), found {len(fields)}: {line!r}."
        )
    submit, gpus, priority, user, runtime, limit = fields[:6]
    preemptible = _yes_no(fields[6], where=where) if len(fields) > 6 else False
    submit_s = _seconds(submit, field_name="submit_s", where=where)
    if submit_s < 0:
        raise TraceError(f"{where}: submit_s must be 0 or more, not {submit!r}.")
    if not user:
        raise TraceError(f"{where}: user is empty; give the name of the person who submits the job.")
    job = TraceJob(
        job_id=0,
        submit_s=submit_s,
        gpus=_gpus(gpus, where=where),
        priority=_priority(priority, where=where),
        user=user,
        runtime_s=_positive(runtime, field_name="runtime_s", where=where),
        time_limit_s=_positive(limit, field_name="time_limit_s", where=where) if limit else None,
        preemptible=preemptible,
        line=number,
    )
    return job


def _seconds(text: str, *, field_name: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: {field_name} must be a number of seconds, not {text!r}.") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: {field_name} must be a finite number of seconds, not {text!r}.")
    return value


def _positive(text: str, *, field_name: str, where: str) -> float:
    value = _seconds(text, field_name=field_name, where=where)
    if value <= 0:
        raise TraceError(f"{where}: {field_name} must be more than 0 seconds, not {text!r}.")
    return value


def _gpus(text: str, *, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{where}: gpus must be a whole number, not {text!r}.") from None
    if value < 1:
        raise TraceError(f"{where}: gpus must be at least 1, not {text!r}.")
    return value


def _priority(text: str, *, where: str) -> Priority:
    try:
        return Priority(text.lower())
    except ValueError:
        names = ", ".join(p.value for p in Priority)
        raise TraceError(f"{where}: priority {text!r} is unknown; use one of {names}.") from None


def _yes_no(text: str, *, where: str) -> bool:
    if text.lower() in _YES:
        return True
    if text.lower() in _NO:
        return False
    raise TraceError(f"{where}: {PREEMPTIBLE} must be yes or no (or empty for no), not {text!r}.")
