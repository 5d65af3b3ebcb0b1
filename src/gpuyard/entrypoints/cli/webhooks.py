"""`gpuyard webhook add | list | rm | deliveries`: notifications of job events."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gpuyard.domain.webhooks import EVENTS


def register(app: typer.Typer) -> None:
    hooks = typer.Typer(
        help="Webhooks: a signed POST when your jobs start, end, fail or idle.", no_args_is_help=True
    )
    hooks.command("add")(add)
    hooks.command("list")(list_hooks)
    hooks.command("rm")(remove)
    hooks.command("deliveries")(deliveries)
    app.add_typer(hooks, name="webhook")


def add(
    url: str,
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help=f"Repeatable; default all: {', '.join(EVENTS)}.")
    ] = None,
    slack: Annotated[bool, typer.Option("--slack", help='Slack-compatible body: {"text": ...}.')] = False,
    all_jobs: Annotated[bool, typer.Option("--all-jobs", help="Every user's jobs (admins).")] = False,
) -> None:
    """Add a webhook. Its secret is printed once: check each POST's X-Gpuyard-Signature with it."""
    from gpuyard.entrypoints.cli.main import _call, out

    hook = _call(
        lambda c: c.add_webhook(
            url, events=event or None, format="slack" if slack else "json", all_jobs=all_jobs
        )
    )
    out.print(f"Webhook {hook['id']} added for {', '.join(hook['events'])}.")
    out.print("Secret (shown once; X-Gpuyard-Signature is sha256=HMAC-SHA256(secret, body)):")
    out.print(hook["secret"], soft_wrap=True)


def list_hooks() -> None:
    """Your webhooks and the global ones (admins: all)."""
    from gpuyard.entrypoints.cli.main import _call, out

    table = Table("ID", "FOR", "URL", "FORMAT", "EVENTS", box=None)
    for h in _call(lambda c: c.webhooks()):
        table.add_row(str(h["id"]), h["user"] or "all jobs", h["url"], h["format"], ", ".join(h["events"]))
    out.print(table)


def remove(hook_id: int) -> None:
    """Remove a webhook and its delivery records."""
    from gpuyard.entrypoints.cli.main import _call, out

    _call(lambda c: c.remove_webhook(hook_id))
    out.print(f"Webhook {hook_id} removed.")


def deliveries(hook_id: int, limit: Annotated[int, typer.Option("--limit", "-n")] = 20) -> None:
    """A webhook's latest deliveries: state, tries, last answer."""
    from gpuyard.entrypoints.cli.main import _call, out

    table = Table("ID", "EVENT", "JOB", "STATE", "TRIES", "LAST", "NEXT TRY", box=None)
    for d in _call(lambda c: c.webhook_deliveries(hook_id, limit=limit)):
        last = f"HTTP {d['last_status']}" if d["last_status"] is not None else (d["last_error"] or "-")
        table.add_row(
            str(d["id"]),
            d["event"],
            str(d["job_id"] or "-"),
            d["state"],
            str(d["attempts"]),
            last,
            d["next_attempt_at"] or "-",
        )
    out.print(table)
