"""`gpuyard simulate TRACE`: replay a job trace through the scheduling policy and print the figures.

Wired into the main app with `simulate.register(app)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.figures import figures_as_dict, format_report
from gpuyard.scheduling.model import Rules
from gpuyard.scheduling.simulator import SimulationError, simulate
from gpuyard.scheduling.trace import Trace, TraceError, parse_cluster, parse_trace, with_cluster


def register(app: typer.Typer) -> None:
    app.command(name="simulate")(simulate_command)


def simulate_command(
    trace: Annotated[
        Path,
        typer.Argument(help="A trace file: submit_s,gpus,priority,user,runtime_s,time_limit_s[,preemptible]"),
    ],
    nodes: Annotated[
        str | None, typer.Option("--nodes", help="NODESxGPUS, e.g. 1x4 (default: the trace's, else 1x4).")
    ] = None,
    backfill: Annotated[
        bool, typer.Option("--backfill/--no-backfill", help="Let later jobs start in gaps they provably fit.")
    ] = True,
    aging_s: Annotated[
        float | None, typer.Option("--aging-s", help="A waiting job gains a priority level per N s.", min=1)
    ] = None,
    aging_max: Annotated[
        str, typer.Option("--aging-max", help="The highest priority aging gives: normal or high.")
    ] = "high",
    fair_share: Annotated[
        bool, typer.Option("--fair-share", help="Within a priority, less GPU time used goes first.")
    ] = False,
    max_gpus_per_user: Annotated[
        int | None, typer.Option("--max-gpus-per-user", help="GPUs one user may hold at once.", min=1)
    ] = None,
    default_runtime_s: Annotated[
        float, typer.Option("--default-runtime-s", help="Expected runtime of a job without a limit.", min=1)
    ] = 3600.0,
    preempt_grace_s: Annotated[
        float, typer.Option("--preempt-grace-s", help="SIGTERM to SIGKILL for a preempted job.", min=0)
    ] = 60.0,
    preempt_min_run_s: Annotated[
        float,
        typer.Option("--preempt-min-run-s", help="Least run a preemptible job's gap must allow.", min=0),
    ] = 600.0,
    restart_cost_s: Annotated[
        float,
        typer.Option("--restart-cost-s", help="What a preempted job redoes when it resumes.", min=0),
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Replay a trace of jobs through the scheduling policy in simulated time and print the figures."""
    try:
        loaded = _load(trace, nodes)
        rules = Rules(
            backfill=backfill,
            aging_s=aging_s,
            aging_max_rank=_aging_max(aging_max),
            fair_share=fair_share,
            max_gpus_per_user=max_gpus_per_user,
            preempt_grace_s=preempt_grace_s,
            preempt_min_run_s=preempt_min_run_s,
        )
        result = simulate(
            loaded, rules=rules, default_runtime_s=default_runtime_s, restart_cost_s=restart_cost_s
        )
    except TraceError as e:
        typer.echo(f"error: {e.detail}", err=True)
        raise typer.Exit(2) from None
    except SimulationError as e:  # a policy bug, not the trace's fault
        typer.echo(f"error: {e.detail}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(figures_as_dict(result), indent=2) + "\n")
    else:
        sys.stdout.write(format_report(result))


def _aging_max(text: str) -> int:
    if text.strip().lower() not in ("normal", "high"):
        raise TraceError(f"--aging-max must be normal or high, not {text!r}.")
    return Priority(text.strip().lower()).rank


def _load(path: Path, nodes: str | None) -> Trace:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TraceError(f"cannot read the trace {str(path)!r}: {reason}.") from None
    trace = parse_trace(text, name=str(path))
    if nodes is not None:
        try:
            count, gpus_per_node = parse_cluster(nodes)
        except TraceError as e:
            raise TraceError(f"--nodes: {e.detail}") from None
        trace = with_cluster(trace, nodes=count, gpus_per_node=gpus_per_node)
    return trace
