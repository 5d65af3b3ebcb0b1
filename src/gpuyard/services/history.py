"""Expected runtimes from the history of similar jobs, and recent GPU time per user. Pure functions over
rows, so they are tested without a database; the scheduler refreshes their inputs now and then."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Row = dict[str, Any]
_SAMPLES = 5  # the last few runs say more about the next one than all of them


@dataclass(frozen=True)
class RuntimeHistory:
    """Median runtime of the last runs of the same command, and of the same user and job name."""

    by_command: dict[str, float] = field(default_factory=dict)
    by_user_name: dict[tuple[str, str], float] = field(default_factory=dict)

    def expected_runtime_s(self, *, user: str, name: str, command: str | None) -> float | None:
        if command is not None and command in self.by_command:
            return self.by_command[command]
        return self.by_user_name.get((user, name))


def build_history(runs: Iterable[Row]) -> RuntimeHistory:
    """`runs`: newest first, with user, name, command (text), started_at, finished_at."""
    commands: dict[str, list[float]] = {}
    names: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        runtime_s = (run["finished_at"] - run["started_at"]).total_seconds()
        if runtime_s <= 0:
            continue
        for samples in (
            commands.setdefault(run["command"], []),
            names.setdefault((run["user"], run["name"]), []),
        ):
            if len(samples) < _SAMPLES:
                samples.append(runtime_s)
    return RuntimeHistory(
        by_command={k: statistics.median(v) for k, v in commands.items()},
        by_user_name={k: statistics.median(v) for k, v in names.items()},
    )


def gpu_seconds_by_user(rows: Iterable[Row], *, since: datetime, now: datetime) -> dict[str, float]:
    """GPU-seconds each user's attempts held inside [since, now]."""
    usage: dict[str, float] = {}
    for row in rows:
        start = max(row["started_at"], since)
        end = min(row["ended_at"] or now, now)
        if end > start:
            gpus = len(row["gpu_indices"])
            usage[row["user"]] = usage.get(row["user"], 0.0) + gpus * (end - start).total_seconds()
    return usage


def parse_links(text: str) -> frozenset[tuple[int, int]]:
    """'0-1,2-3' → {(0, 1), (2, 3)}. Raises ValueError saying what to write."""
    links: set[tuple[int, int]] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("-")
        if not sep or not a.strip().isdigit() or not b.strip().isdigit() or a.strip() == b.strip():
            raise ValueError(
                f"GPU link {part!r} is not a pair like 0-1: write e.g. GPUYARD_GPU_LINKS=0-1,2-3."
            )
        x, y = int(a), int(b)
        links.add((min(x, y), max(x, y)))
    return frozenset(links)
