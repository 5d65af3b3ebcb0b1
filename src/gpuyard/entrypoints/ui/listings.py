"""Listings of GPUs and of finished jobs: API results in, table rows and sentences out (no Streamlit)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gpuyard.entrypoints.cli import format as fmt
from gpuyard.entrypoints.ui.views import STATE_WORDS, Job, ago, parse_time, when

# GPUs


def gpu_rows(
    gpus: Iterable[Mapping[str, Any]], *, me: str, idle: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """One row per GPU; `idle` (job id -> idle since, see idle_jobs) marks the jobs flagged idle."""
    idle = idle or {}
    rows = []
    for g in gpus:
        if g.get("job_id"):
            owner = "you" if g["job_user"] == me else g["job_user"]
            holder = f"job {g['job_id']} · {g['job_name']} ({owner})"
        else:
            holder = "free" if g["node_online"] else "-"
        outside = ", ".join(
            f"pid {p['pid']} ({p.get('user') or '?'}"
            + (f", {p['used_memory_mib']} MiB" if p.get("used_memory_mib") else "")
            + ")"
            for p in g.get("outside_processes") or []
        )
        total = g.get("memory_total_mib") or 0
        rows.append(
            {
                "node": g["node"] if g["node_online"] else f"{g['node']} (offline)",
                "GPU": g["index"],
                "model": g["name"],
                "job": holder,
                "idle since": when(idle[g["job_id"]]) if g.get("job_id") in idle else "",
                "util %": g.get("utilization_pct"),
                "memory": (g.get("memory_used_mib") or 0) / total if total else None,
                "memory MiB": f"{g.get('memory_used_mib', 0)} / {total}",
                "outside gpuyard": outside or "-",
            }
        )
    return rows


def idle_from_gpus(gpus: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """The jobs flagged idle on the GPUs they hold, as `/gpus` reports them to everyone: id -> since when."""
    return {
        int(g["job_id"]): str(g["job_idle_since"])
        for g in gpus
        if g.get("job_id") and g.get("job_idle_since")
    }


def idle_notes(gpus: Iterable[Mapping[str, Any]], idle: Mapping[int, str], *, me: str) -> list[str]:
    """One sentence per job flagged idle: which GPUs it holds unused, since when, and what to do."""
    held: dict[int, list[Mapping[str, Any]]] = {}
    for g in gpus:
        if g.get("job_id") in idle:
            held.setdefault(int(g["job_id"]), []).append(g)
    notes = []
    for job_id, its in sorted(held.items()):
        first = its[0]
        owner = "you" if first["job_user"] == me else first["job_user"]
        word, them = ("GPU", "it") if len(its) == 1 else ("GPUs", "them")
        where = f"{first['node']} {word} {', '.join(str(g['index']) for g in its)}"
        notes.append(
            f"Job {job_id} · {first['job_name']} ({owner}) holds {where} but has not used {them} since "
            f"{when(idle[job_id])}. If it no longer needs {them}, cancel it: others could use {them}."
        )
    return notes


def node_notes(nodes: Iterable[Mapping[str, Any]], *, now: datetime) -> list[str]:
    """One line per offline node: what it means and what to do."""
    return [
        f"Node {n['name']} is offline (last heard from {ago(n.get('last_seen_at'), now=now)}): its "
        f"{n['gpus']} GPUs get no new jobs. Check that `gpuyard worker` runs there."
        for n in nodes
        if not n["online"]
    ]


def gpu_summary(payload: Mapping[str, Any]) -> str:
    gpus = payload.get("gpus") or []
    if not gpus:
        return "No worker node has reported its GPUs yet: is `gpuyard worker` (or `gpuyard up`) running?"
    online = [g for g in gpus if g["node_online"]]
    busy = [g for g in online if g.get("job_id")]
    outside = [g for g in online if g.get("outside_processes")]
    text = f"{len(busy)} of {len(online)} GPUs in use by gpuyard jobs"
    if outside:
        text += f"; {len(outside)} with processes outside gpuyard"
    offline = len(gpus) - len(online)
    if offline:
        text += f"; {offline} on offline nodes"
    return text + "."


# history


def history_rows(jobs: Iterable[Job], *, me: str) -> list[dict[str, Any]]:
    rows = []
    for j in jobs:
        rows.append(
            {
                "job": j["id"],
                "name": j["name"],
                "owner": "you" if j["user"] == me else j["user"],
                "state": STATE_WORDS.get(j["state"], j["state"]),
                "exit": j.get("exit_code"),
                "failure": j.get("failure_class") or "",
                "attempts": f"{j.get('attempt')} of {j['max_attempts']}"
                if j.get("max_attempts")
                else j.get("attempt"),
                "GPUs": j["gpus"],
                "submitted": fmt.clock(j.get("submitted_at")),
                "duration": fmt.duration(_run_seconds(j)),
            }
        )
    return rows


def _run_seconds(job: Job) -> float | None:
    start, end = parse_time(job.get("started_at")), parse_time(job.get("finished_at"))
    return (end - start).total_seconds() if start and end else None


def attempt_rows(attempts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "attempt": a["number"],
            "node": a["node"],
            "GPUs": ", ".join(map(str, a["gpu_indices"])),
            "started": fmt.clock(a.get("started_at")),
            "ended": fmt.clock(a.get("ended_at")),
            "exit": a.get("exit_code"),
            "signal": a.get("signal"),
            "failure": a.get("failure_class") or "",
        }
        for a in attempts
    ]


def attempts_text(job: Job, *, now: datetime) -> str:
    """Its attempts, what is retried, and when a job waiting out its backoff tries again: 'Attempt 2 of 3.
    Retried after: a lost machine, exit_nonzero. Attempt 3 starts no earlier than 14:05:10 (in 8s).'"""
    attempt, most = job.get("attempt") or 0, job.get("max_attempts")
    of = f" of {most}" if most else ""
    sentences = [f"Attempt {attempt}{of}." if attempt else f"No attempt yet ({most} allowed)."]
    asked = ", ".join(job.get("retry_on") or [])
    sentences.append(f"Retried after: a lost machine{', ' + asked if asked else ''}.")
    if job.get("preemptions"):
        sentences.append(f"Preempted {job['preemptions']} time(s) for jobs ahead of it (not counted).")
    retry_at = parse_time(job.get("retry_at"))
    if job.get("state") == "queued" and retry_at is not None and retry_at > now:
        after = f" after {job['failure_class']}" if job.get("failure_class") else ""
        sentences.append(
            f"Waiting out its backoff{after}: attempt {attempt + 1}{of} starts no earlier than "
            f"{fmt.clock(retry_at.isoformat())} (in {fmt.about((retry_at - now).total_seconds())})."
        )
    return " ".join(sentences)


def may_requeue(job: Job) -> bool:
    """A failed or timed-out job goes back in line as itself (POST /jobs/{id}/requeue); others are run
    again as a copy."""
    return job.get("state") in ("failed", "timed_out")


def requeued_text(job: Job) -> str:
    """What requeueing a job did, from the API's answer (the job, back in line)."""
    return (
        f"Job {job['id']} ({job['name']}) is back in line, with a fresh budget of attempts: attempt "
        f"{job['attempt'] + 1} of {job['max_attempts']} comes next. The Queue page shows where it stands."
    )


def day_bounds(first: Any, last: Any) -> tuple[datetime | None, datetime | None]:
    """A range of local calendar days (date objects or None) as [start, end) in UTC."""

    def start_of(day: Any) -> datetime:
        return datetime(day.year, day.month, day.day).astimezone().astimezone(UTC)

    after = start_of(first) if first else None
    before = start_of(last + timedelta(days=1)) if last else None
    return after, before
