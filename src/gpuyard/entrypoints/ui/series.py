"""What the UI keeps between refreshes: a job's log tail, and the series it has seen (metrics over steps,
GPU load over time).

The API serves the latest progress, metrics and GPU samples only, so these series are what this browser
session has observed since the page was opened. When the API serves whole series, a source of the same
shape replaces `observe` and the pages stay as they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

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


@dataclass
class MetricSeries:
    """A job's reported metrics by step, as observed: one point per new step."""

    max_points: int = 2000
    points: list[dict[str, float]] = field(default_factory=list)
    last_step: float | None = None

    def observe(self, job: Mapping[str, Any]) -> None:
        step, metrics = job.get("progress_step"), job.get("metrics") or {}
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if step is None or not numbers or step == self.last_step:
            return
        if self.last_step is not None and step < self.last_step:  # a new attempt starts over
            self.points.clear()
        self.last_step = step
        self.points.append({"step": float(step), **numbers})
        del self.points[: -self.max_points]

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for point in self.points:
            seen.update(dict.fromkeys(k for k in point if k != "step"))
        return list(seen)


@dataclass
class GpuSamples:
    """Utilization and memory of every GPU over the last `window`, as observed by this page."""

    window: timedelta = timedelta(hours=1)
    samples: dict[str, deque[tuple[datetime, float | None, float | None]]] = field(default_factory=dict)

    def observe(self, gpus: Any, *, now: datetime) -> None:
        for g in gpus:
            key = f"{g['node']}:{g['index']}"
            total = g.get("memory_total_mib") or 0
            memory_pct = 100.0 * (g.get("memory_used_mib") or 0) / total if total else None
            series = self.samples.setdefault(key, deque())
            series.append((now, g.get("utilization_pct"), memory_pct))
            while series and series[0][0] < now - self.window:
                series.popleft()

    def rows(self, metric: str, *, max_points: int = 360) -> list[dict[str, Any]]:
        """Long-form rows (time, GPU, value) of `utilization` or `memory`, for a line chart: at most
        `max_points` per GPU (every n-th sample), so an hour of samples stays light to draw."""
        column = 1 if metric == "utilization" else 2
        rows: list[dict[str, Any]] = []
        for key, series in self.samples.items():
            samples = [s for s in series if s[column] is not None]
            step = -(-len(samples) // max_points) if samples else 1
            picked = samples[::-1][::step][::-1]  # the newest sample is always drawn
            rows.extend({"time": s[0], "GPU": key, "percent": s[column]} for s in picked)
        return rows

    def span(self) -> timedelta:
        starts = [s[0][0] for s in self.samples.values() if s]
        ends = [s[-1][0] for s in self.samples.values() if s]
        return max(ends) - min(starts) if starts else timedelta(0)
