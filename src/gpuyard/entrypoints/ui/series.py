"""The series the pages draw, shaped from what the API serves, and a job's log tail kept between refreshes.

The API keeps the series (a job's reported metrics and GPU usage: GET /jobs/{id}/series; every GPU's load:
GET /gpus/usage), so a page draws a job's whole run, or the last hour, however long it has been open. This
module turns those answers into chart rows: one point per step, clock times, percent of a GPU's memory,
and few enough points to draw quickly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

LogReader = Callable[[int], Mapping[str, Any]]  # offset -> the body of GET /jobs/{id}/logs


@dataclass
class LogTail:
    """The last `max_lines` lines of a job's output, read on from where the previous refresh stopped."""

    max_lines: int = 200
    attempt: int | None = None
    offset: int = 0
    lines: deque[str] = field(default_factory=deque)
    partial: str = ""
    complete: bool = False
    _skip_partial: bool = False

    def feed(self, attempt: int, data: str, next_offset: int, *, complete: bool = False) -> None:
        if self.attempt is not None and attempt != self.attempt:  # a new attempt writes a new log
            self.lines.clear()
            self.partial = ""
        self.attempt = attempt
        self.offset = next_offset
        self.complete = complete
        if not data:
            return
        parts = (self.partial + data).split("\n")
        self.partial = parts.pop()
        if self._skip_partial and parts:  # entered mid-line: the first piece is no whole line
            parts.pop(0)
            self._skip_partial = False
        self.lines.extend(parts)
        while len(self.lines) > self.max_lines:
            self.lines.popleft()

    def catch_up(self, read: LogReader, *, max_reads: int = 8) -> None:
        """Read on until the log has nothing new (or `max_reads` chunks, to keep a refresh short). The
        first time, a long log is entered near its end: a tail needs no megabytes from the start."""
        if self.attempt is None and self.offset == 0:
            self.offset = tail_offset(read)
            if self.offset:
                self.partial = ""
                self._skip_partial = True
        for _ in range(max_reads):
            page = read(self.offset)
            attempt = int(page["attempt"])
            if self.attempt is not None and attempt != self.attempt and self.offset:
                self.feed(attempt, "", 0)  # a new attempt: its log starts at offset 0
                continue
            self.feed(attempt, page["data"], int(page["next_offset"]), complete=bool(page.get("complete")))
            if not page["data"]:
                return

    @property
    def text(self) -> str:
        lines = [*self.lines, self.partial] if self.partial else list(self.lines)
        return "\n".join(lines[-self.max_lines :])


def tail_offset(read: LogReader, *, full_page: int = 200_000, keep: int = 64 * 1024) -> int:
    """An offset at most `keep` bytes (or one page) before the end of a log: 0 for a short log (one read),
    else found by doubling, then halving, offsets until one is past the end (a read there is empty)."""
    first = read(0)
    if len(first["data"]) < full_page:
        return 0
    has_data, past_end = int(first["next_offset"]), 2 * int(first["next_offset"])
    while read(past_end)["data"]:
        has_data, past_end = past_end, past_end * 2
    while past_end - has_data > keep:
        middle = (has_data + past_end) // 2
        if read(middle)["data"]:
            has_data = middle
        else:
            past_end = middle
    return has_data


def read_all(read: LogReader, *, max_bytes: int = 16 * 1024 * 1024) -> tuple[str, bool]:
    """A job's whole output (of its current attempt), and False when it was cut at `max_bytes`."""
    chunks: list[str] = []
    offset = size = 0
    while True:
        page = read(offset)
        data = page["data"]
        if not data:
            return "".join(chunks), True
        chunks.append(data)
        size += len(data)
        offset = int(page["next_offset"])
        if size >= max_bytes:
            return "".join(chunks), False


Point = Mapping[str, Any]  # one point of an API series: {"at": ISO time, ...}


def metric_points(
    series: Mapping[str, Any], *, job: Mapping[str, Any] | None = None, max_points: int = 2000
) -> list[dict[str, float]]:
    """A job's reported metrics by step, from its series (GET /jobs/{id}/series): one point per step (the
    last report of a step wins), numbers only. `job`, the job itself, adds its latest report, which the
    series may not have kept yet (it keeps one point per GPUYARD_PROGRESS_POINT_S), when both are of the
    same attempt."""
    reports = list(series.get("progress") or [])
    if job is not None and job.get("attempt") == series.get("attempt"):
        reports.append(_as_point(job))
    by_step: dict[float, dict[str, float]] = {}
    for report in reports:
        step, numbers = _number(report.get("step")), _numbers(report.get("metrics"))
        if step is not None and numbers:
            by_step[step] = {"step": step, **numbers}
    return _thin([by_step[s] for s in sorted(by_step)], max_points)


def _as_point(job: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": job.get("progress_step"), "metrics": job.get("metrics")}


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): float(v) for k, v in metrics.items() if _number(v) is not None}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def metric_names(points: Iterable[Mapping[str, float]]) -> list[str]:
    """The metrics of a series, in the order they first appear."""
    seen: dict[str, None] = {}
    for point in points:
        seen.update(dict.fromkeys(k for k in point if k != "step"))
    return list(seen)


def job_usage_rows(series: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A job's GPU usage over time, from its series: clock time, utilization (percent, the mean over its
    GPUs) and memory (MiB its processes hold, summed over its GPUs), one row per usage bucket."""
    rows = []
    for p in series.get("gpu") or []:
        at = _time(p.get("at"))
        if at is not None:
            rows.append(
                {"time": at, "utilization": p.get("utilization_pct"), "memory": p.get("memory_used_mib")}
            )
    return rows


def gpu_usage_rows(
    payload: Mapping[str, Any],
    metric: str,
    *,
    memory_total_mib: Mapping[tuple[str, int], float],
    max_points: int = 360,
) -> list[dict[str, Any]]:
    """Long-form rows (time, GPU, percent) of every GPU's `utilization` or `memory` (percent of the GPU's
    memory, from `memory_total_mib` by (node, index)), from GET /gpus/usage: at most `max_points` per
    GPU (every n-th point, the newest always drawn), so an hour stays light to draw."""
    rows: list[dict[str, Any]] = []
    for gpu in payload.get("gpus") or []:
        key = (str(gpu["node"]), int(gpu["index"]))
        total = memory_total_mib.get(key) or 0
        if metric == "memory" and not total:
            continue  # a GPU that no node reports any more: its size is not known
        values = []
        for p in gpu.get("points") or []:
            at = _time(p.get("at"))
            value = p.get("utilization_pct") if metric == "utilization" else p.get("memory_used_mib")
            if at is None or value is None:
                continue
            values.append((at, float(value) if metric == "utilization" else 100.0 * value / total))
        label = f"{key[0]}:{key[1]}"
        rows.extend({"time": at, "GPU": label, "percent": value} for at, value in _thin(values, max_points))
    return rows


def usage_span(payload: Mapping[str, Any]) -> timedelta:
    """How much time the GPU series cover, from the oldest point to the newest."""
    times = [t for g in payload.get("gpus") or [] for p in g.get("points") or [] if (t := _time(p.get("at")))]
    return max(times) - min(times) if times else timedelta(0)


T = TypeVar("T")


def _thin(items: list[T], max_points: int) -> list[T]:
    """Every n-th item, counted from the newest, so that at most `max_points` remain and the newest is one."""
    if len(items) <= max_points:
        return items
    step = -(-len(items) // max_points)
    return items[::-1][::step][::-1]


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)
