"""Expected runtimes from the history of similar jobs, and recent GPU time per user. Pure functions over
rows: the controller feeds them from the database, the simulator from its own past."""

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
    """Median runtime of the last runs of the same command, and of the same user and job name; and the
    median share of its time limit a user's job actually uses."""

    by_command: dict[str, float] = field(default_factory=dict)
    by_user_name: dict[tuple[str, str], float] = field(default_factory=dict)
    limit_share_by_user: dict[str, float] = field(default_factory=dict)

    def expected_runtime_s(
        self, *, user: str, name: str | None, command: str | None, time_limit_s: float | None = None
    ) -> float | None:
        """The runtime similar jobs had (at most the time limit), or None when history knows nothing."""
        known = self.by_command.get(command) if command is not None else None
        if known is None and name is not None:
            known = self.by_user_name.get((user, name))
        if known is None and time_limit_s is not None and user in self.limit_share_by_user:
            known = self.limit_share_by_user[user] * time_limit_s
        if known is not None and time_limit_s is not None:
            known = min(known, time_limit_s)
        return known


def build_history(runs: Iterable[Row]) -> RuntimeHistory:
    """`runs`: newest first, each with user, name, command (text or None), time_limit_s (or None), and
    runtime_s or started_at and finished_at."""
    commands: dict[str, list[float]] = {}
    names: dict[tuple[str, str], list[float]] = {}
    shares: dict[str, list[float]] = {}
    for run in runs:
        runtime_s = run.get("runtime_s")
        if runtime_s is None:
            runtime_s = (run["finished_at"] - run["started_at"]).total_seconds()
        if runtime_s <= 0:
            continue
        _sample(names.setdefault((run["user"], run.get("name") or ""), []), runtime_s)
        if run.get("command") is not None:
            _sample(commands.setdefault(run["command"], []), runtime_s)
        if run.get("time_limit_s"):
            _sample(shares.setdefault(run["user"], []), runtime_s / run["time_limit_s"])
    return RuntimeHistory(
        by_command={k: statistics.median(v) for k, v in commands.items()},
        by_user_name={k: statistics.median(v) for k, v in names.items()},
        limit_share_by_user={k: min(1.0, statistics.median(v)) for k, v in shares.items()},
    )


def _sample(samples: list[float], value: float) -> None:
    if len(samples) < _SAMPLES:
        samples.append(value)


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
