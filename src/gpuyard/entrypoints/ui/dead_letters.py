"""Dead letters (jobs that used up their attempts; messages that could not be processed): API results in,
table rows and sentences out (no Streamlit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gpuyard.entrypoints.ui.views import when

Letter = Mapping[str, Any]  # one item of GET /dead


def dead_rows(letters: Sequence[Letter], *, me: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Table rows, newest first as the API lists them; a `kind` column only where there are messages."""
    messages = any(d["kind"] == "message" for d in letters)
    rows = []
    for d in letters:
        row: dict[str, Any] = {"id": d["id"]}
        if messages:
            row["kind"] = d["kind"]
        row |= {
            "job": d.get("job_id"),
            "owner": _owner(d, me=me),
            "failure": d.get("failure_class") or "",
            "attempts": d.get("attempts"),
            "when": when(d.get("created_at"), now=now),
            "requeued": when(d["requeued_at"], now=now) if d.get("requeued_at") else "",
            "why": d["reason"],
        }
        rows.append(row)
    return rows


def _owner(letter: Letter, *, me: str) -> str:
    user = letter.get("user")
    return "you" if user and user == me else str(user or "-")


def dead_summary(letters: Sequence[Letter], *, is_admin: bool) -> str:
    waiting = [d for d in letters if not d.get("requeued_at")]
    if not waiting:
        whose = "" if is_admin else " of yours"
        return (
            f"No dead letter{whose} waits for a decision. A job becomes one when it has used up its attempts "
            "on failures that were to be retried (a lost machine, or what it asked for with --retry-on)."
        )
    jobs = sum(1 for d in waiting if d["kind"] == "job")
    parts = [f"{jobs} job{'s' if jobs != 1 else ''}"] if jobs else []
    messages = len(waiting) - jobs
    if messages:
        parts.append(f"{messages} message{'s' if messages != 1 else ''}")
    verb = "waits" if len(waiting) == 1 else "wait"
    return (
        f"{' and '.join(parts)} {verb} for a decision: read why below, fix what needs fixing, then requeue."
    )


def dead_title(letter: Letter, *, me: str, now: datetime | None = None) -> str:
    """How a dead letter reads as the title of its expander."""
    at = when(letter.get("created_at"), now=now)
    requeued = f" · requeued {when(letter['requeued_at'], now=now)}" if letter.get("requeued_at") else ""
    if letter["kind"] != "job":
        return (
            f"Dead letter {letter['id']} · a message to {letter.get('routing_key') or '?'} · {at}{requeued}"
        )
    attempts = letter.get("attempts")
    tried = f", {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    failure = letter.get("failure_class") or "failed"
    owner = _owner(letter, me=me)
    return (
        f"Dead letter {letter['id']} · job {letter['job_id']} ({owner}) · {failure}{tried} · {at}{requeued}"
    )


def may_requeue(letter: Letter, *, is_admin: bool) -> bool:
    """Not requeued yet, and a job (its owner sees only their own), or a message for an admin."""
    return not letter.get("requeued_at") and (letter["kind"] == "job" or is_admin)


def requeued_text(letter: Letter) -> str:
    """What requeueing did, from the API's answer."""
    if letter["kind"] == "job":
        return (
            f"Dead letter {letter['id']}: job {letter['job_id']} is back in line, with a fresh budget of "
            "attempts. The Queue page shows where it stands."
        )
    return f"Dead letter {letter['id']}: the message was sent again to {letter.get('routing_key')}."
