"""`gpuyard dead [requeue ID]` and `gpuyard requeue JOB_ID`: what could not run, and sending it back."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from rich.table import Table

from gpuyard.client import Client
from gpuyard.entrypoints.cli import format as fmt


def register(app: typer.Typer) -> None:
    dead_app = typer.Typer(
        help="Dead letters: jobs that used up their attempts, messages that could not be processed.",
        invoke_without_command=True,
    )
    dead_app.callback()(dead)
    dead_app.command("requeue")(requeue_dead)
    app.add_typer(dead_app, name="dead")
    app.command("requeue")(requeue)


def dead(
    ctx: typer.Context,
    include_requeued: Annotated[bool, typer.Option("--all", help="Also those already requeued.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    tail: Annotated[bool, typer.Option("--tail", help="Show each one's log tail.")] = False,
) -> None:
    """List dead letters (yours; admins: all), newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from gpuyard.entrypoints.cli.main import _call, _print_json, out

    rows = _call(lambda c: c.dead_letters(include_requeued=include_requeued))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("No dead letters.")
        return
    table = Table("ID", "KIND", "JOB", "USER", "ATTEMPTS", "WHEN", "REASON", box=None)
    for r in rows:
        when = fmt.clock(r["created_at"]) + (" (requeued)" if r["requeued_at"] else "")
        table.add_row(
            str(r["id"]),
            r["kind"],
            str(r["job_id"] or "-"),
            r["user"] or "-",
            str(r["attempts"] or "-"),
            when,
            r["reason"],
        )
    out.print(table)
    if tail:
        for r in rows:
            if r["log_tail"]:
                out.print(f"--- dead letter {r['id']} (job {r['job_id']}): last output ---", style="bold")
                out.print(r["log_tail"], markup=False, highlight=False)
    out.print("Send one back with `gpuyard dead requeue ID`.")


def requeue_dead(dead_id: int) -> None:
    """Requeue a dead letter: a job goes back in line with a fresh budget; a message is sent again."""
    from gpuyard.entrypoints.cli.main import _call, out

    row = _call(lambda c: c.requeue_dead(dead_id))
    if row["kind"] == "job":
        out.print(f"Dead letter {dead_id}: job {row['job_id']} is back in line.")
    else:
        out.print(f"Dead letter {dead_id}: the message was sent again to {row['routing_key']}.")


def requeue(job_ids: list[int]) -> None:
    """Send failed or timed-out jobs back in line (same id, a fresh budget of attempts)."""
    from gpuyard.entrypoints.cli.main import _call, out

    for job_id in job_ids:
        job = _call(partial(_requeue_one, job_id))
        attempt = f"attempt {job['attempt'] + 1} of {job['max_attempts']}"
        out.print(f"Job {job['id']} ({job['name']}) is back in line: {attempt}.")


def _requeue_one(job_id: int, client: Client) -> dict[str, Any]:
    return client.requeue(job_id)
