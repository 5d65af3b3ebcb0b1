"""The trace simulator: exact starts on hand-made traces, the figures, its guards, and `gpuyard simulate`."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gpuyard.entrypoints.cli import simulate as simulate_cli
from gpuyard.scheduling import simulator
from gpuyard.scheduling.figures import SimResult, format_report
from gpuyard.scheduling.model import Decision, Estimate, Placement, Rules, ScheduleRequest, WaitReason
from gpuyard.scheduling.simulator import SimulationError, simulate
from gpuyard.scheduling.trace import Trace, parse_trace

HEADER = "submit_s,gpus,priority,user,runtime_s,time_limit_s"
ON, OFF = Rules(backfill=True), Rules(backfill=False)


# --- builders ----------------------------------------------------------------------------------------


def trace(*rows: str, nodes: str = "1x4") -> Trace:
    return parse_trace("\n".join([f"# nodes: {nodes}", HEADER, *rows]), name="t.csv")


def starts(result: SimResult) -> dict[int, float | None]:
    return {r.job.job_id: r.start_s for r in result.records}


def estimates(result: SimResult) -> dict[int, float | None]:
    return {r.job.job_id: r.estimated_start_s for r in result.records}


# --- exact outcomes ----------------------------------------------------------------------------------


def test_six_one_gpu_jobs_on_four_gpus_start_as_gpus_free() -> None:
    runtimes = (100, 200, 300, 400, 100, 100)
    result = simulate(trace(*(f"0,1,normal,ana,{r},{r}" for r in runtimes)), rules=ON)

    assert starts(result) == {1: 0, 2: 0, 3: 0, 4: 0, 5: 100, 6: 200}
    assert [r.end_s for r in result.records] == [100, 200, 300, 400, 200, 300]
    assert estimates(result) == {1: 0, 2: 0, 3: 0, 4: 0, 5: 100, 6: 200}  # limits equal runtimes: exact
    f = result.figures
    assert (f.jobs, f.started, f.unstarted, f.gpus) == (6, 6, 0, 4)
    assert (f.busy_gpu_s, f.makespan_s, f.lower_bound_s) == (1200, 400, 400)  # longest job bounds it
    assert (f.utilization, f.utilization_vs_lower_bound) == (0.75, 1.0)
    assert [(w.priority, w.jobs, w.mean_wait_s, w.p95_wait_s) for w in f.waits] == [("normal", 6, 50, 200)]
    assert (f.estimate_error_limited.jobs, f.estimate_error_limited.median, f.estimate_error_limited.p90) == (
        6,
        0,
        0,
    )
    assert (f.estimate_error_unlimited.jobs, f.estimate_error_unlimited.median) == (0, None)
    assert (f.backfilled, f.max_delay_by_later_s, f.delayed_jobs) == (0, 0, 0)


def test_a_four_gpu_job_waits_for_the_running_job_and_starts_when_it_really_ends() -> None:
    result = simulate(trace("0,1,normal,ana,500,600", "10,4,normal,ben,100,200"), rules=ON)

    assert starts(result) == {1: 0, 2: 500}
    assert estimates(result)[2] == 600  # the running job's time limit: the bound the policy trusts
    error = result.figures.estimate_error_limited
    assert error.jobs == 2 and error.p90 == pytest.approx(100 / 490)  # |600 - 500| / wait of 490 s


@pytest.mark.parametrize(
    ("rows", "issue_bound", "arrival_bound", "idle_waiting", "idle_none"),
    [
        # A 4-GPU job waits 100 s for the 1-GPU job ahead: 3 GPUs idle meanwhile (no bound sees that).
        (("0,1,normal,ana,100,100", "0,4,normal,ben,50,50"), 100, 100, 300, 0),
        # The second job comes late: nothing waits in between, and no schedule ends before 1000 + 50.
        (("0,1,normal,ana,100,100", "1000,4,normal,ben,50,50"), 100, 1050, 0, 3 * 100 + 4 * 900),
    ],
)
def test_the_bounds_and_the_idle_gpu_time(
    rows: tuple[str, ...], issue_bound: float, arrival_bound: float, idle_waiting: float, idle_none: float
) -> None:
    f = simulate(trace(*rows), rules=ON).figures
    assert (f.lower_bound_s, f.arrival_bound_s) == (issue_bound, arrival_bound)
    assert f.utilization_vs_arrival_bound == arrival_bound / f.makespan_s
    assert (f.idle_while_waiting_gpu_s, f.idle_while_none_waited_gpu_s) == (idle_waiting, idle_none)
    assert f.busy_gpu_s + idle_waiting + idle_none == f.gpus * f.makespan_s


def test_a_job_killed_at_its_time_limit_frees_its_gpus_there() -> None:
    result = simulate(trace("0,4,normal,ana,5000,1000", "1,4,normal,ben,10,"), rules=ON)
    assert starts(result) == {1: 0, 2: 1000}
    assert result.figures.killed_at_limit == 1


@pytest.mark.parametrize(
    ("rules", "small_start", "backfilled"),
    [
        pytest.param(ON, 20, 1, id="backfill-on-small-job-goes-first"),
        pytest.param(OFF, 1500, 0, id="backfill-off-small-job-waits-its-turn"),
    ],
)
def test_a_short_limited_job_backfills_in_front_of_a_waiting_four_gpu_job(
    rules: Rules, small_start: float, backfilled: int
) -> None:
    # GPU 0 is busy until 1000; the 4-GPU job waits for it; the 300 s job fits on a free GPU before then.
    result = simulate(
        trace("0,1,normal,ana,1000,1000", "10,4,normal,ben,500,500", "20,1,normal,chen,300,300"), rules=rules
    )
    assert starts(result) == {1: 0, 2: 1000, 3: small_start}  # the big job is never delayed
    f = result.figures
    assert (f.backfilled, f.max_delay_by_later_s, f.delayed_jobs) == (backfilled, 0, 0)
    assert [r.job.job_id for r in result.records if r.backfilled] == ([3] if backfilled else [])


PREEMPTIBLE = Rules(backfill=True, preempt_grace_s=30, preempt_min_run_s=60)


def preemptible_trace(*rows: str) -> Trace:
    header = HEADER + ",preemptible"
    return parse_trace("\n".join(["# nodes: 1x4", header, *rows]), name="t.csv")


def test_a_preemptible_job_fills_the_gap_and_is_stopped_in_time_for_the_job_ahead() -> None:
    # GPU 0 is busy until 1000 and the 4-GPU job waits for it. A preemptible job with no limit (it could
    # not prove that it fits the gap) starts at once, gets SIGTERM a grace (30 s) before 1000, is gone at
    # 1000, and resumes after the 4-GPU job: what was left (2000 - 950 s) plus the restart cost (50 s).
    result = simulate(
        preemptible_trace(
            "0,1,normal,ana,1000,1000,no", "10,4,normal,ben,500,500,no", "20,1,normal,chen,2000,,yes"
        ),
        rules=PREEMPTIBLE,
        restart_cost_s=50,
    )
    assert starts(result) == {1: 0, 2: 1000, 3: 20}  # the 4-GPU job starts when GPU 0 frees, not later
    third = result.records[2]
    assert (third.preemptions, third.runs, third.end_s) == (1, ((20, 1000), (1500, 2600)), 2600)
    f = result.figures
    assert (f.preemptions, f.preempted_jobs, f.redone_gpu_s) == (1, 1, 30 + 50)
    assert (f.max_delay_by_later_s, f.delayed_jobs, f.backfilled) == (0, 0, 1)
    # Between its runs it waited again: 3 GPUs idle 20..1000 would be idle-while-waiting without it.
    assert f.busy_gpu_s + f.idle_while_waiting_gpu_s + f.idle_while_none_waited_gpu_s == f.gpus * f.makespan_s


def test_a_job_that_ends_during_its_grace_is_not_preempted() -> None:
    result = simulate(
        preemptible_trace(
            "0,1,normal,ana,1000,1000,no", "10,4,normal,ben,500,500,no", "20,1,normal,chen,975,,yes"
        ),
        rules=PREEMPTIBLE,
    )
    # Asked to stop at 970, it ends at 995 by itself, before its grace is over: one run, no preemption.
    assert [r.preemptions for r in result.records] == [0, 0, 0]
    assert result.records[2].runs == ((20, 995),)
    assert starts(result)[2] == 1000


@pytest.mark.parametrize(
    "small",
    [
        pytest.param("20,1,normal,chen,300,", id="no-limit-cannot-prove-it-ends-in-time"),
        pytest.param("20,1,normal,chen,300,1200", id="limit-too-long-for-the-gap"),
    ],
)
def test_a_job_that_cannot_prove_it_fits_the_gap_does_not_backfill(small: str) -> None:
    result = simulate(trace("0,1,normal,ana,1000,1000", "10,4,normal,ben,500,500", small), rules=ON)
    assert starts(result) == {1: 0, 2: 1000, 3: 1500}
    assert result.figures.backfilled == 0


def test_a_user_limit_holds_the_users_second_job_until_the_first_ends() -> None:
    result = simulate(
        trace("0,1,normal,ana,100,100", "0,1,normal,ana,100,100"), rules=Rules(max_gpus_per_user=1)
    )
    assert starts(result) == {1: 0, 2: 100}


@pytest.mark.parametrize(("fair_share", "order"), [(False, {2: 100, 3: 200}), (True, {3: 100, 2: 200})])
def test_fair_share_counts_the_gpu_time_each_user_has_used_so_far(
    fair_share: bool, order: dict[int, float]
) -> None:
    rows = ("0,1,normal,ana,100,100", "10,1,normal,ana,100,100", "20,1,normal,ben,100,100")
    result = simulate(trace(*rows, nodes="1x1"), rules=Rules(fair_share=fair_share))
    assert starts(result) == {1: 0, **order}
    # Ben's job goes first by the line's own order: that is neither a backfill nor a delay.
    assert (result.figures.backfilled, result.figures.max_delay_by_later_s) == (0, 0)


def test_two_runs_give_equal_results() -> None:
    rng = random.Random(3)
    rows = []
    for i in range(60):
        runtime = rng.randint(60, 4000)
        limit = "" if rng.random() < 0.2 else str(runtime * rng.choice((1, 2)))
        prio = rng.choice(("low", "normal", "high"))
        rows.append(f"{i * 30},{rng.choice((1, 2, 4))},{prio},u{rng.randrange(3)},{runtime},{limit}")
    first, second = simulate(trace(*rows), rules=ON), simulate(trace(*rows), rules=ON)
    assert first == second
    assert format_report(first) == format_report(second)
    assert first.figures.unstarted == 0 and first.figures.max_delay_by_later_s == 0


# --- guards and the delay measurement, with stand-in policies ------------------------------------------


def never_places(request: ScheduleRequest, *, estimates: bool = True) -> Decision:
    return Decision(
        (), {j.job_id: Estimate(j.job_id, 1, None, WaitReason.GPUS_BUSY) for j in request.pending}
    )


def test_jobs_the_policy_never_places_are_reported_unstarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator, "schedule", never_places)
    result = simulate(trace("0,1,normal,ana,100,", "5,2,normal,ben,100,"), rules=ON)
    assert starts(result) == {1: None, 2: None}
    assert (result.figures.started, result.figures.unstarted, result.figures.makespan_s) == (0, 2, 0)
    assert "2 never started" in format_report(result)


def test_a_gpu_given_twice_is_a_policy_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def twice(request: ScheduleRequest, *, estimates: bool = True) -> Decision:
        return Decision(tuple(Placement(j.job_id, "node00", (0,)) for j in request.pending))

    monkeypatch.setattr(simulator, "schedule", twice)
    with pytest.raises(SimulationError, match="busy GPU"):
        simulate(trace("0,1,normal,ana,100,", "0,1,normal,ben,100,"), rules=ON)


def greedy(request: ScheduleRequest, *, estimates: bool = True) -> Decision:
    """A bad backfill: starts whatever fits now, in line order, reserving nothing. A waiting job's estimate is
    when enough GPUs free, counting the jobs it just started at their time limits."""
    ends = [r.expected_end_at for r in request.running]
    free = 4 - sum(len(r.gpu_indices) for r in request.running)
    placements = []
    for job in sorted(request.pending, key=lambda j: j.seq):
        if job.gpus <= free:
            first = 4 - free
            placements.append(Placement(job.job_id, "node00", tuple(range(first, first + job.gpus))))
            ends += [request.now + timedelta(seconds=job.time_limit_s or 3600)] * job.gpus
            free -= job.gpus
    started = {p.job_id for p in placements}
    result = {}
    for job in request.pending:
        busy = sorted(e for e in ends if e is not None)
        start = request.now if job.job_id in started else busy[job.gpus - free - 1]
        result[job.job_id] = Estimate(job.job_id, 0, start, WaitReason.GPUS_BUSY)
    return Decision(tuple(placements), result)


def test_a_later_job_that_delays_an_earlier_one_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    # Job 1 holds one GPU until 1000. The greedy policy starts job 3 (limit 2000) ahead of the 4-GPU job 2,
    # whose estimate moves from 1000 to 2020: a delay of 1020 s.
    monkeypatch.setattr(simulator, "schedule", greedy)
    result = simulate(
        trace("0,1,normal,ana,1000,1000", "10,4,normal,ben,500,500", "20,1,normal,chen,300,2000"), rules=ON
    )
    f = result.figures
    assert (f.backfilled, f.max_delay_by_later_s, f.delayed_jobs) == (1, 1020, 1)


# --- gpuyard simulate ----------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A throwaway app with the command, as main.py will wire it."""

    simulate_cli.register(app)
    return app


def write(tmp_path: Path, *rows: str) -> str:
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return str(path)


def test_the_command_prints_the_report(cli: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "0,1,normal,ana,100,100", "0,4,high,ben,50,60")
    result = CliRunner().invoke(cli, ["simulate", path, "--no-backfill", "--aging-s", "600", "--fair-share"])
    assert result.exit_code == 0, result.output
    assert "backfill off" in result.stdout and "utilization vs lower bound" in result.stdout


def test_the_command_prints_json(cli: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "0,1,normal,ana,100,100", "0,1,normal,ana,100,100")
    args = [
        "simulate",
        path,
        "--json",
        "--nodes",
        "2x2",
        "--max-gpus-per-user",
        "1",
        "--default-runtime-s",
        "60",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["cluster"], figures["jobs"], figures["makespan_s"]) == ("2x2", 2, 200)
    assert figures["rules"]["max_gpus_per_user"] == 1


@pytest.mark.parametrize(
    ("rows", "args", "says"),
    [
        pytest.param(("0,1,normal,ana,100,", "0,1,normal,ana,0,"), [], "line 3: runtime_s", id="bad-line"),
        pytest.param(("0,4,normal,ana,100,",), ["--nodes", "2x2"], "line 2: gpus", id="too-big-for-nodes"),
        pytest.param(
            ("0,1,normal,ana,100,",), ["--nodes", "lots"], "--nodes: cluster 'lots'", id="bad-nodes"
        ),
    ],
)
def test_a_bad_trace_exits_2_naming_the_line(
    cli: typer.Typer, tmp_path: Path, rows: tuple[str, ...], args: list[str], says: str
) -> None:
    result = CliRunner().invoke(cli, ["simulate", write(tmp_path, *rows), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert result.stdout == ""


def test_a_missing_trace_exits_2(cli: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "error: cannot read the trace" in result.stderr and "No such file" in result.stderr


@pytest.mark.parametrize(
    ("name", "rules"),
    [
        ("lab_week.csv", Rules(backfill=True, preempt_grace_s=120, preempt_min_run_s=60)),
        ("urgent_hourly.csv", Rules(backfill=True, preempt_grace_s=120, preempt_min_run_s=60)),
        ("lab_week.csv", Rules(backfill=True, aging_s=6 * 3600)),
        ("lab_week.csv", Rules(backfill=True, aging_s=86400, aging_max_rank=1)),
        ("urgent_hourly.csv", Rules(backfill=True, fair_share=True)),
    ],
    ids=["short-run-long-grace", "urgent-hourly", "aging", "aging-to-normal", "fair-share"],
)
def test_shipped_traces_with_every_job_preemptible_finish_and_delay_nobody(name: str, rules: Rules) -> None:
    """Jobs once started and stopped each other in turn for ever: with a short minimum run and a long
    grace, with aging (a running job did not age, a waiting one did) and with fair share (the GPU time a
    running job used made it fall behind). Every job ends now, and no job is delayed by a later one."""
    shipped = parse_trace((Path(__file__).parents[2] / "bench" / "traces" / name).read_text(), name=name)
    jobs = tuple(replace(j, preemptible=j.priority.rank < 3) for j in shipped.jobs)
    f = simulate(replace(shipped, jobs=jobs), rules=rules).figures
    assert (f.unstarted, f.started, f.delayed_jobs) == (0, len(jobs), 0)
    assert (f.preemptions > 0) == (not rules.fair_share)  # fair share keeps preemptible jobs as others
