"""Write the shipped job traces to bench/traces/ (seeded: every run writes the same files).

    .venv/bin/python bench/make_traces.py

lab_week.csv       a lab week on 1x4 GPUs: ~350 mixed 1/2/4-GPU jobs from 6 users, day/night rhythm,
                   long-tailed runtimes (minutes to about a day), most with time limits of 1.2–3x the runtime
burst_500.csv      500 small 1-GPU jobs (1–15 min, with limits) from 3 users within 10 minutes, on 1x4
urgent_hourly.csv  two days of steady mixed load on 1x4, plus one urgent 2-GPU job every hour

In all three, two thirds of the jobs below urgent are preemptible (they checkpoint and resume, and say so);
the rest (evaluations, jobs that cannot resume) are not. That flag is drawn from a generator of its own, so
the other columns are the same as in the traces written before it existed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.trace import Trace, TraceJob, format_trace

TRACES = Path(__file__).resolve().parent / "traces"
HOUR_S, DAY_S = 3600, 86400
SEED = 20240501
PREEMPTIBLE_SHARE = 2 / 3


def arrivals(rng: random.Random, *, count: int, span_s: int, rate: Callable[[int], float]) -> list[int]:
    """`count` submission times in [0, span_s), denser where rate(t) (0..1) is higher (rejection sampling)."""
    times: list[int] = []
    while len(times) < count:
        t = rng.randrange(span_s)
        if rng.random() < rate(t):
            times.append(t)
    return sorted(times)


def lab_rhythm(t: int) -> float:
    """Busy working hours, quieter evenings, little at night, a half-speed weekend (day 0 is a Monday)."""
    hour, weekday = (t % DAY_S) // HOUR_S, t // DAY_S
    level = 1.0 if 9 <= hour < 19 else 0.45 if 19 <= hour < 24 else 0.08
    return level * (0.4 if weekday >= 5 else 1.0)


def long_tail_runtime_s(rng: random.Random, *, median_s: float, sigma: float, low_s: int, high_s: int) -> int:
    return int(min(max(rng.lognormvariate(math.log(median_s), sigma), low_s), high_s))


def limit_for(rng: random.Random, runtime_s: int, *, low: float = 1.2, high: float = 3.0) -> int:
    """A time limit the way people set one: some multiple of the runtime, rounded up to whole minutes."""
    return math.ceil(runtime_s * rng.uniform(low, high) / 60) * 60


def job(
    number: int, submit_s: int, gpus: int, priority: str, user: str, runtime_s: int, limit: int | None
) -> TraceJob:
    return TraceJob(
        number,
        float(submit_s),
        gpus,
        Priority(priority),
        user,
        float(runtime_s),
        None if limit is None else float(limit),
    )


def lab_week(rng: random.Random) -> Trace:
    users = ("ana", "ben", "chen", "dara", "eli", "fay")
    jobs = []
    for number, submit_s in enumerate(arrivals(rng, count=350, span_s=7 * DAY_S, rate=lab_rhythm), start=1):
        gpus = rng.choices((1, 2, 4), weights=(55, 25, 20))[0]
        runtime_s = long_tail_runtime_s(rng, median_s=40 * 60, sigma=1.4, low_s=120, high_s=26 * HOUR_S)
        roll = rng.random()  # 18 % set no limit; 3 % set one too short and are killed at it
        if roll < 0.18:
            limit = None
        else:
            limit = (
                limit_for(rng, runtime_s, low=0.6, high=0.95) if roll < 0.21 else limit_for(rng, runtime_s)
            )
        priority = rng.choices(("normal", "low", "high"), weights=(80, 12, 8))[0]
        jobs.append(job(number, submit_s, gpus, priority, rng.choice(users), runtime_s, limit))
    return Trace("lab_week.csv", tuple(jobs))


def burst_500(rng: random.Random) -> Trace:
    users = ("ana", "ben", "chen")
    jobs = []
    for number, submit_s in enumerate(sorted(rng.randrange(600) for _ in range(500)), start=1):
        runtime_s = rng.randint(60, 15 * 60)
        jobs.append(
            job(
                number,
                submit_s,
                1,
                "normal",
                rng.choice(users),
                runtime_s,
                limit_for(rng, runtime_s, high=2.0),
            )
        )
    return Trace("burst_500.csv", tuple(jobs))


def urgent_hourly(rng: random.Random) -> Trace:
    users = ("ana", "ben", "chen", "dara")
    entries = []
    for submit_s in arrivals(rng, count=70, span_s=2 * DAY_S, rate=lambda t: 1.0):
        gpus = rng.choices((1, 2, 4), weights=(50, 30, 20))[0]
        runtime_s = long_tail_runtime_s(rng, median_s=40 * 60, sigma=1.0, low_s=300, high_s=6 * HOUR_S)
        limit = limit_for(rng, runtime_s) if rng.random() < 0.85 else None
        priority = rng.choices(("normal", "low"), weights=(85, 15))[0]
        entries.append((submit_s, gpus, priority, rng.choice(users), runtime_s, limit))
    for hour in range(48):
        runtime_s = rng.randint(10 * 60, 30 * 60)
        entries.append(
            (hour * HOUR_S + 300, 2, "urgent", "oncall", runtime_s, limit_for(rng, runtime_s, high=1.5))
        )
    entries.sort(key=lambda e: e[0])
    return Trace("urgent_hourly.csv", tuple(job(n, *e) for n, e in enumerate(entries, start=1)))


def with_preemptible(trace: Trace, rng: random.Random) -> Trace:
    """Mark PREEMPTIBLE_SHARE of the jobs below urgent preemptible (urgent ones never are)."""
    jobs = []
    for j in trace.jobs:
        roll = rng.random()  # drawn for every job, so one job's priority does not shift the others' flags
        jobs.append(replace(j, preemptible=j.priority is not Priority.URGENT and roll < PREEMPTIBLE_SHARE))
    return replace(trace, jobs=tuple(jobs))


def main() -> None:
    TRACES.mkdir(exist_ok=True)
    for offset, make in enumerate((lab_week, burst_500, urgent_hourly)):
        seed = SEED + offset
        trace = with_preemptible(make(random.Random(seed)), random.Random(seed + 1000))
        head = f"# {trace.name}: written by bench/make_traces.py (seed {seed}); edit that, not this.\n"
        (TRACES / trace.name).write_text(head + format_trace(trace))
        print(f"wrote {TRACES / trace.name}: {len(trace.jobs)} jobs")


if __name__ == "__main__":
    main()
