"""Scheduling figures (not a timed test: it prints numbers and the targets next to them, asserts nothing).

    .venv/bin/python bench/bench_scheduling.py [--budget-s 30] [--runs 5] [--parts traces,pass,simulator]

(a) Each shipped trace (bench/traces/, see make_traces.py) through the simulator, backfill on and off;
    then what-ifs: no job preemptible, every job preemptible, every time limit equal to the runtime.
(b) The time of one scheduling pass, `schedule()`, over 10,000 waiting jobs (mixed 1/2/4 GPUs, random
    priorities and limits, seeded) on 1 node x 4 GPUs (4 running jobs) and on 16 nodes x 4 GPUs (64 running
    jobs), median of --runs runs; smaller lines too, to show how the pass grows. One pass yields both the
    placements and every waiting job's estimate, so its time is compared with both targets.
    Every measurement runs in a child process that is stopped after --budget-s seconds.
(c) The simulator's own speed on 2,000-job traces, under a sustainable load and under an overload.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_traces  # noqa: E402

from gpuyard.scheduling.figures import SimResult, format_report  # noqa: E402
from gpuyard.scheduling.model import (  # noqa: E402
    GpuSlot,
    NodeView,
    PendingJob,
    Rules,
    RunningJob,
    ScheduleRequest,
)
from gpuyard.scheduling.policy import schedule  # noqa: E402
from gpuyard.scheduling.simulator import simulate  # noqa: E402
from gpuyard.scheduling.trace import Trace, parse_trace  # noqa: E402

TRACES = Path(__file__).resolve().parent / "traces"
NOW = datetime(2024, 1, 1, tzinfo=UTC)
PASS_MS_TARGET, ESTIMATES_MS_TARGET = 50.0, 250.0
LINE_SIZES = (500, 1_000, 2_000, 5_000, 10_000)
T = TypeVar("T")
R = TypeVar("R")


# --- (a) traces ----------------------------------------------------------------------------------------


def targets(result: SimResult) -> str:
    f = result.figures
    util = f"utilization vs lower bound {f.utilization_vs_lower_bound:.1%}"
    if result.trace.name == "lab_week.csv" and result.rules.backfill and not result.rules.fair_share:
        util += f" (target >= 95%: {'met' if f.utilization_vs_lower_bound >= 0.95 else 'MISSED'})"
    util += f", vs the bound with arrivals {f.utilization_vs_arrival_bound:.1%}"
    delayed = f"jobs delayed by later jobs {f.delayed_jobs} (target 0: {_verdict(f.delayed_jobs == 0)})"
    median = f.estimate_error_limited.median
    error = "median start error with limits -"
    if median is not None:
        error = f"median start error with limits {median:.1%} (target <= 10%: {_verdict(median <= 0.10)})"
    return f"  targets: {util}; {delayed}; {error}"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def bench_traces() -> None:
    print("(a) shipped traces through the simulator\n")
    for path in sorted(TRACES.glob("*.csv")):
        trace = parse_trace(path.read_text(), name=path.name)
        for backfill in (True, False):
            began = time.perf_counter()
            result = simulate(trace, rules=Rules(backfill=backfill))
            took_s = time.perf_counter() - began
            print(format_report(result), end="")
            print(targets(result))
            print(f"  simulated in {took_s:.1f} s\n")
    print("(a0) the lab week with aging: low-priority jobs gain a level after a day of waiting, up to normal")
    print("    (GPUYARD_AGING_S=86400 GPUYARD_AGING_MAX_PRIORITY=normal)\n")
    lab_week = parse_trace((TRACES / "lab_week.csv").read_text(), name="lab_week.csv")
    aged = simulate(lab_week, rules=Rules(aging_s=86400, aging_max_rank=1))
    print(format_report(aged), end="")
    print(targets(aged), end="\n\n")
    print("(a') what-if: each trace with no job preemptible, and with every job below urgent preemptible,")
    print("    backfill on\n")
    for path in sorted(TRACES.glob("*.csv")):
        trace = parse_trace(path.read_text(), name=path.name)
        for label, share in (("none preemptible", False), ("all preemptible", True)):
            jobs = tuple(replace(j, preemptible=share and j.priority.rank < 3) for j in trace.jobs)
            result = simulate(replace(trace, jobs=jobs), rules=Rules())
            print(f"  {path.name:<18} {label:<17} {_summary(result)}")
    print()
    print("(a'') what-if: each trace with every time limit equal to the job's runtime, backfill on")
    print("    (runtimes known exactly: what is left of the estimate error comes from later arrivals of")
    print("    higher priority; what is left of the idle time, from reservations and arrivals)\n")
    for path in sorted(TRACES.glob("*.csv")):
        trace = parse_trace(path.read_text(), name=path.name)
        exact = replace(trace, jobs=tuple(replace(j, time_limit_s=j.actual_runtime_s) for j in trace.jobs))
        print(f"  {path.name:<18} {_summary(simulate(exact, rules=Rules(backfill=True)))}")
    print()


def _summary(result: SimResult) -> str:
    f = result.figures
    median = f.estimate_error_limited.median
    waits = ", ".join(f"{w.priority} {w.mean_wait_s / 3600:.1f} h" for w in f.waits)
    return (
        f"utilization vs lower bound {f.utilization_vs_lower_bound:.1%}, "
        f"vs the bound with arrivals {f.utilization_vs_arrival_bound:.1%}; "
        f"median start error {'-' if median is None else f'{median:.1%}'}; "
        f"{f.preemptions} preemptions; mean wait {waits}; delayed {f.delayed_jobs}"
    )


# --- budgeted measurements in a child process ------------------------------------------------------------


def _child(conn: Connection, work: Callable[[T], R], arg: T, runs: int) -> None:
    for _ in range(runs):
        conn.send(work(arg))
    conn.close()


def measure(work: Callable[[T], R], arg: T, *, runs: int, budget_s: float) -> list[R]:
    """Up to `runs` results of work(arg), each computed in a child; whatever finished within the budget."""
    ours, theirs = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.Process(target=_child, args=(theirs, work, arg, runs), daemon=True)
    child.start()
    theirs.close()
    deadline = time.monotonic() + budget_s
    results: list[R] = []
    while len(results) < runs and ours.poll(max(deadline - time.monotonic(), 0.0)):
        try:
            results.append(ours.recv())
        except EOFError:
            break
    if child.is_alive():
        child.terminate()
    child.join()
    return results


# --- (b) one pass over a long line ---------------------------------------------------------------------


def long_line(waiting: int, nodes: int, *, seed: int = 7) -> ScheduleRequest:
    rng = random.Random(seed)
    views = tuple(NodeView(f"node{n:02d}", tuple(GpuSlot(i) for i in range(4))) for n in range(nodes))
    running = tuple(
        RunningJob(
            job_id=1_000_000 + k,
            node=f"node{k // 4:02d}",
            gpu_indices=(k % 4,),
            expected_end_at=NOW + timedelta(seconds=rng.uniform(60, 24 * 3600)),
            user=f"user{k % 8}",
        )
        for k in range(nodes * 4)
    )
    pending = tuple(
        PendingJob(
            job_id=i,
            seq=i,
            gpus=rng.choices((1, 2, 4), weights=(55, 25, 20))[0],
            priority_rank=rng.choices((0, 1, 2, 3), weights=(15, 65, 15, 5))[0],
            user=f"user{rng.randrange(8)}",
            time_limit_s=None if rng.random() < 0.2 else float(rng.randrange(300, 24 * 3600)),
        )
        for i in range(1, waiting + 1)
    )
    return ScheduleRequest(NOW, pending, running, views, 3600.0, Rules(backfill=True))


# Whether this policy can skip the estimates (`schedule(request, estimates=False)`): then the placements
# alone are timed too, else one figure answers both targets.
SPLIT = "estimates" in inspect.signature(schedule).parameters


def time_pass(case: tuple[int, int, bool]) -> tuple[float, float]:
    """Milliseconds of one pass over `waiting` jobs on `nodes` nodes, with or without the estimates: wall
    time (the figure), and the CPU time of this process (steadier where other work shares the CPUs)."""
    waiting, nodes, with_estimates = case
    request = long_line(waiting, nodes)
    began, began_cpu = time.perf_counter(), time.process_time()
    decision = schedule(request) if with_estimates else schedule(request, estimates=False)
    took_ms, cpu_ms = (time.perf_counter() - began) * 1000, (time.process_time() - began_cpu) * 1000
    assert len(decision.estimates) == (waiting if with_estimates else 0)
    return took_ms, cpu_ms


def bench_pass(*, runs: int, budget_s: float) -> None:
    print(f"(b) one scheduling pass over a long line, median of {runs} runs")
    print(
        f"    targets for 10,000 waiting: pass <= {PASS_MS_TARGET:g} ms, "
        f"all estimates <= {ESTIMATES_MS_TARGET:g} ms"
    )
    if SPLIT:
        print(
            "    'placements' is schedule(request, estimates=False); 'with estimates' is schedule(request),"
        )
        print("    which yields the placements and all the estimates in one walk (the total is the figure)")
    else:
        print("    schedule() yields the placements and all the estimates in one walk: one figure for both")
    print("    wall time is the figure; CPU time (this process only) is steadier on a shared machine\n")
    for label, nodes in (("1 node x 4 GPUs, 4 running", 1), ("16 nodes x 4 GPUs, 64 running", 16)):
        print(f"  {label}")
        modes = ((False, PASS_MS_TARGET, "placements"), (True, ESTIMATES_MS_TARGET, "with estimates"))
        for with_estimates, target_ms, name in modes if SPLIT else modes[1:]:
            for waiting in LINE_SIZES:
                times = measure(time_pass, (waiting, nodes, with_estimates), runs=runs, budget_s=budget_s)
                if not times:
                    print(
                        f"    {name:>14} {waiting:>6,} waiting: none in {budget_s:g} s; larger lines skipped"
                    )
                    break
                median_ms = statistics.median(wall for wall, _ in times)
                cpu_ms = statistics.median(cpu for _, cpu in times)
                note = (
                    f" ({len(times)} of {runs} runs in the {budget_s:g} s budget)"
                    if len(times) < runs
                    else ""
                )
                if waiting == 10_000:
                    note += f"   target <= {target_ms:g} ms: {_verdict(median_ms <= target_ms)}"
                    if not SPLIT:
                        note += f", <= {PASS_MS_TARGET:g} ms: {_verdict(median_ms <= PASS_MS_TARGET)}"
                per_job = f"({median_ms * 1000 / waiting:6.1f} µs a job; CPU {cpu_ms:7.1f} ms)"
                print(f"    {name:>14} {waiting:>6,} waiting: {median_ms:9.1f} ms {per_job}{note}")
        print()


# --- (c) the simulator on 2,000 jobs --------------------------------------------------------------------


def two_thousand(days: int) -> Trace:
    rng = random.Random(11)
    jobs = []
    times = make_traces.arrivals(rng, count=2000, span_s=days * make_traces.DAY_S, rate=lambda t: 1.0)
    for number, submit_s in enumerate(times, start=1):
        gpus = rng.choices((1, 2, 4), weights=(55, 25, 20))[0]
        runtime_s = make_traces.long_tail_runtime_s(
            rng, median_s=2400, sigma=1.4, low_s=120, high_s=26 * 3600
        )
        limit = None if rng.random() < 0.18 else make_traces.limit_for(rng, runtime_s)
        jobs.append(
            make_traces.job(number, submit_s, gpus, "normal", f"user{rng.randrange(6)}", runtime_s, limit)
        )
    return Trace(f"2000 jobs over {days} days", tuple(jobs))


def time_simulation(days: int) -> float:
    began = time.perf_counter()
    simulate(two_thousand(days), rules=Rules(backfill=True))
    return time.perf_counter() - began


def bench_simulator(*, budget_s: float) -> None:
    print("(c) the simulator on 2,000 jobs, 1x4 GPUs, backfill on (one run each)\n")
    for days in (80, 50):
        trace = two_thousand(days)
        load = sum(j.actual_runtime_s * j.gpus for j in trace.jobs) / (4 * days * make_traces.DAY_S)
        took = measure(time_simulation, days, runs=1, budget_s=budget_s)
        figure = f"{took[0]:.1f} s" if took else f"did not finish within {budget_s:g} s"
        print(f"  {trace.name} (offered load {load:.0%} of the GPUs): {figure}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=30.0, help="time limit of one measurement")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--parts", default="traces,pass,simulator", help="which of (a) traces, (b) pass, (c) simulator to run"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"traces", "pass", "simulator"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: use traces, pass or simulator")
    if "traces" in parts:
        bench_traces()
    if "pass" in parts:
        bench_pass(runs=args.runs, budget_s=args.budget_s)
    if "simulator" in parts:
        bench_simulator(budget_s=args.budget_s * 4)


if __name__ == "__main__":
    main()
