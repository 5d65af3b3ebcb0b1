"""The trace format of `gpuyard simulate`: parsing, every refusal with its line, and the round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuyard.domain.errors import GpuyardError
from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.trace import Trace, TraceError, TraceJob, format_trace, parse_trace, with_cluster

HEADER = "submit_s,gpus,priority,user,runtime_s,time_limit_s"
SHIPPED = Path(__file__).resolve().parents[2] / "bench" / "traces"


def text(*rows: str, nodes: str | None = None) -> str:
    head = [f"# nodes: {nodes}"] if nodes else []
    return "\n".join([*head, HEADER, *rows]) + "\n"


def fields(trace: Trace) -> list[tuple[int, float, int, str, str, float, float | None]]:
    return [
        (j.job_id, j.submit_s, j.gpus, j.priority.value, j.user, j.runtime_s, j.time_limit_s)
        for j in trace.jobs
    ]


# --- good traces -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "cluster", "expected"),
    [
        pytest.param(
            text("0,1,normal,ana,600,1200"),
            (1, 4),
            [(1, 0.0, 1, "normal", "ana", 600.0, 1200.0)],
            id="one-job-default-cluster",
        ),
        pytest.param(
            text("0,4,high,ana,600,", nodes="16x4"),
            (16, 4),
            [(1, 0.0, 4, "high", "ana", 600.0, None)],
            id="no-limit-and-a-cluster",
        ),
        pytest.param(
            "# a comment\n\n  # nodes: 2x8  \n"
            + HEADER
            + "\n\n# between\n 5 , 2 , URGENT , bob , 30.5 , 60 \n",
            (2, 8),
            [(1, 5.0, 2, "urgent", "bob", 30.5, 60.0)],
            id="comments-blanks-spaces-and-case",
        ),
        pytest.param(
            text("10,1,low,c,1,", "5,1,normal,a,1,", "5,1,normal,b,1,"),
            (1, 4),
            [
                (1, 5.0, 1, "normal", "a", 1.0, None),
                (2, 5.0, 1, "normal", "b", 1.0, None),
                (3, 10.0, 1, "low", "c", 1.0, None),
            ],
            id="submits-going-backwards-are-sorted-stably",
        ),
        pytest.param(
            text("0,1,normal,a,7200,3600"),
            (1, 4),
            [(1, 0.0, 1, "normal", "a", 7200.0, 3600.0)],
            id="runtime-beyond-the-limit-is-allowed",
        ),
    ],
)
def test_good_traces_parse(
    source: str,
    cluster: tuple[int, int],
    expected: list[tuple[int, float, int, str, str, float, float | None]],
) -> None:
    trace = parse_trace(source, name="t.csv")
    assert (trace.name, trace.nodes, trace.gpus_per_node) == ("t.csv", *cluster)
    assert fields(trace) == expected


def test_a_job_killed_at_its_limit_holds_its_gpus_until_the_limit() -> None:
    killed, finishes = parse_trace(text("0,1,normal,a,7200,3600", "0,1,normal,a,600,"), name="t").jobs
    assert (killed.actual_runtime_s, finishes.actual_runtime_s) == (3600.0, 600.0)


# --- bad traces: every refusal names the line and the field -------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "says"),
    [
        pytest.param(text("0,1,normal,a,100"), 2, "expected 6 fields", id="too-few-fields"),
        pytest.param(text("0,1,normal,a,100,200,9"), 2, "expected 6 fields", id="too-many-fields"),
        pytest.param(
            text("0,1,normal,a,1,", "soon,1,normal,a,100,"), 3, "submit_s must be a number", id="submit"
        ),
        pytest.param(text("nan,1,normal,a,100,"), 2, "submit_s must be a finite", id="submit-nan"),
        pytest.param(text("-5,1,normal,a,100,"), 2, "submit_s must be 0 or more", id="submit-negative"),
        pytest.param(text("0,two,normal,a,100,"), 2, "gpus must be a whole number", id="gpus-word"),
        pytest.param(text("0,1.5,normal,a,100,"), 2, "gpus must be a whole number", id="gpus-fraction"),
        pytest.param(text("0,0,normal,a,100,"), 2, "gpus must be at least 1", id="gpus-zero"),
        pytest.param(
            text("0,1,normal,a,1,", "0,8,normal,a,100,"),
            3,
            "asks for 8 GPUs but each node has 4",
            id="gpus-big",
        ),
        pytest.param(
            text("0,4,normal,a,100,", nodes="4x2"), 3, "each node has 2 (4x2)", id="gpus-big-for-cluster"
        ),
        pytest.param(text("0,1,normal,a,1h,"), 2, "runtime_s must be a number", id="runtime-word"),
        pytest.param(text("0,1,normal,a,0,"), 2, "runtime_s must be more than 0", id="runtime-zero"),
        pytest.param(text("0,1,normal,a,-3,"), 2, "runtime_s must be more than 0", id="runtime-negative"),
        pytest.param(text("0,1,normal,a,100,2h"), 2, "time_limit_s must be a number", id="limit-word"),
        pytest.param(text("0,1,normal,a,100,0"), 2, "time_limit_s must be more than 0", id="limit-zero"),
        pytest.param(
            text("0,1,normal,a,100,-60"), 2, "time_limit_s must be more than 0", id="limit-negative"
        ),
        pytest.param(
            text("0,1,critical,a,100,"),
            2,
            "priority 'critical' is unknown; use one of low, normal, high, urgent",
            id="priority",
        ),
        pytest.param(text("0,1,normal,,100,"), 2, "user is empty", id="user-empty"),
        pytest.param(
            "submit_s,gpus,priority,user,runtime_s,time_limit_s,preemptible\n0,1,normal,a,100,,maybe\n",
            2,
            "preemptible must be yes or no",
            id="preemptible-word",
        ),
        pytest.param(
            "submit_s,gpus,priority,user,runtime_s,time_limit_s,preemptible\n0,1,normal,a,100,\n",
            2,
            "expected 7 fields",
            id="preemptible-missing",
        ),
        pytest.param(
            "submit_s,gpus,priority,user,runtime_s,time_limit_s,checkpoint\n",
            1,
            "(and, optionally, ,preemptible)",
            id="unknown-column",
        ),
        pytest.param("0,1,normal,a,100,\n", 1, "expected the header line", id="no-header"),
        pytest.param("# nodes: 0x4\n" + HEADER + "\n", 1, "nodes: cluster '0x4'", id="nodes-zero"),
        pytest.param("# nodes: four\n" + HEADER + "\n", 1, "NODESxGPUS", id="nodes-word"),
        pytest.param(
            "# nodes: 1x4\n# nodes: 2x4\n" + HEADER + "\n", 2, "a second `# nodes:` line", id="nodes-twice"
        ),
    ],
)
def test_bad_traces_are_refused_naming_the_line_and_field(source: str, line: int, says: str) -> None:
    with pytest.raises(TraceError) as caught:
        parse_trace(source, name="t.csv")
    assert f"t.csv, line {line}: " in caught.value.detail
    assert says in caught.value.detail
    assert caught.value.code == "invalid_trace"
    assert isinstance(caught.value, GpuyardError)


@pytest.mark.parametrize(
    "source", ["", "# only a comment\n", HEADER + "\n"], ids=["empty", "comment", "header"]
)
def test_a_trace_without_jobs_is_refused(source: str) -> None:
    with pytest.raises(TraceError, match="no jobs"):
        parse_trace(source, name="t.csv")


def test_a_smaller_cluster_refuses_the_jobs_it_cannot_hold() -> None:
    trace = parse_trace(text("0,1,normal,a,1,", "0,4,normal,a,1,"), name="t.csv")
    assert with_cluster(trace, nodes=3, gpus_per_node=4).total_gpus == 12
    with pytest.raises(TraceError, match="line 3: gpus: the job asks for 4 GPUs"):
        with_cluster(trace, nodes=8, gpus_per_node=2)


# --- the round trip ----------------------------------------------------------------------------------


def test_format_then_parse_gives_the_same_trace() -> None:
    jobs = (
        TraceJob(1, 0.0, 1, Priority.LOW, "ana", 60.0, None),
        TraceJob(2, 0.25, 4, Priority.URGENT, "ben", 3600.5, 7200.0),
        TraceJob(3, 86400.0, 2, Priority.NORMAL, "chen", 1e-3, 1.0 / 3.0),
    )
    trace = Trace("t.csv", jobs, nodes=2, gpus_per_node=4)
    assert parse_trace(format_trace(trace), name="t.csv") == trace
    assert "preemptible" not in format_trace(trace)  # a trace without preemptible jobs keeps six columns
    some = Trace("t.csv", (jobs[0], TraceJob(2, 5.0, 2, Priority.HIGH, "ben", 60.0, None, preemptible=True)))
    text = format_trace(some)
    assert text.splitlines()[1].endswith(",preemptible") and text.splitlines()[3].endswith(",yes")
    assert parse_trace(text, name="t.csv") == some


def test_the_preemptible_column_takes_yes_no_or_empty() -> None:
    header = "submit_s,gpus,priority,user,runtime_s,time_limit_s,preemptible"
    rows = ["0,1,normal,a,100,,yes", "0,1,normal,a,100,,no", "0,1,normal,a,100,,", "0,1,normal,a,100,,TRUE"]
    trace = parse_trace("\n".join([header, *rows]), name="t.csv")
    assert [j.preemptible for j in trace.jobs] == [True, False, False, True]


@pytest.mark.parametrize("name", ["lab_week.csv", "burst_500.csv", "urgent_hourly.csv"])
def test_the_shipped_traces_parse_and_round_trip(name: str) -> None:
    trace = parse_trace((SHIPPED / name).read_text(), name=name)
    assert (trace.nodes, trace.gpus_per_node) == (1, 4)
    assert parse_trace(format_trace(trace), name=name) == trace
