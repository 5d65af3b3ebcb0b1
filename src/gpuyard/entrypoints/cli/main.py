"""`gpuyard` — the command line. Talks to the API through gpuyard.client; `up`, `controller` and `worker`
start the services."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gpuyard.client import ApiError, Client, discover
from gpuyard.entrypoints.cli import format as fmt

app = typer.Typer(
    help="gpuyard: training jobs on shared GPU workstations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
admin_app = typer.Typer(help="Administration (admins only).", no_args_is_help=True)
user_app = typer.Typer(help="Users and their tokens.", no_args_is_help=True)
admin_app.add_typer(user_app, name="user")
app.add_typer(admin_app, name="admin")

# Piped output is not wrapped at 80 columns: a script or a pager gets whole lines.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ACTIVE = ("queued", "dispatched", "running")
FINAL = ("succeeded", "failed", "cancelled", "timed_out")
# What makes `python` (or a conda/venv) in the submitter's shell the one the job runs.
SHELL_ENV = ("PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYTHONPATH")


def _client() -> Client:
    url, token = discover()
    if not token:
        err.print(
            "No gpuyard token found: set GPUYARD_TOKEN, or GPUYARD_TOKEN_FILE, or GPUYARD_DATA_DIR to the "
            "data directory of `gpuyard up` (its admin.token)."
        )
        raise typer.Exit(2)
    return Client(url, token)


def _call(fn: Callable[[Client], T]) -> T:
    """Run one API call; an API error becomes a clear message and exit status 1."""
    try:
        with _client() as client:
            return fn(client)
    except ApiError as e:
        err.print(f"error: {e.detail}")
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    command: Annotated[
        list[str], typer.Argument(help="The command, after `--`: gpuyard submit -- python train.py")
    ],
    gpus: Annotated[int, typer.Option("--gpus", "-g", help="Whole GPUs on one node.")] = 1,
    priority: Annotated[
        str, typer.Option("--priority", "-p", help="low | normal | high | urgent.")
    ] = "normal",
    name: Annotated[str | None, typer.Option("--name", "-n", help="A label for the job.")] = None,
    workdir: Annotated[
        str | None, typer.Option("--workdir", "-C", help="Default: the current directory.")
    ] = None,
    env: Annotated[list[str], typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")] = [],  # noqa: B006
    time_limit: Annotated[str | None, typer.Option("--time-limit", "-t", help="e.g. 90s, 30m, 2h.")] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", help="Attempts, retries included [3].")
    ] = None,
    retry_on: Annotated[
        list[str],
        typer.Option(
            "--retry-on", help="Also retry: exit_nonzero | oom | timeout | launch_error (repeatable)."
        ),
    ] = [],  # noqa: B006
    preemptible: Annotated[
        bool,
        typer.Option(
            "--preemptible",
            help="May start early, in gaps; may then be stopped (SIGTERM) for a job ahead of it and put back "
            "in its place in line. Resume from $GPUYARD_CHECKPOINT_DIR.",
        ),
    ] = False,
    shell_env: Annotated[
        bool,
        typer.Option(
            "--shell-env/--no-shell-env",
            help=f"Pass this shell's {', '.join(SHELL_ENV)} to the job, so `python` is the one you run here.",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Queue a training command; prints its id, place in line and estimated start."""
    env_vars: dict[str, str] = {k: os.environ[k] for k in SHELL_ENV if shell_env and k in os.environ}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"error: --env {item!r} must look like KEY=VALUE.")
            raise typer.Exit(2)
        env_vars[key] = value
    try:
        limit_s = fmt.parse_duration(time_limit) if time_limit else None
    except ValueError as e:
        err.print(f"error: {e}")
        raise typer.Exit(2) from None
    folder = os.path.abspath(workdir) if workdir else os.getcwd()
    if not os.path.isdir(folder):
        err.print(f"error: the working directory {folder} does not exist: create it or pass another with -C.")
        raise typer.Exit(2)
    argv: str | list[str] = command
    if len(command) == 1 and any(c in command[0] for c in " |&;<>$`*"):
        argv = command[0]  # one quoted shell line: run it under sh -c
    job = _call(
        lambda c: c.submit(
            argv,
            gpus=gpus,
            priority=priority,
            name=name,
            workdir=folder,
            env=env_vars,
            time_limit_s=limit_s,
            max_attempts=max_attempts,
            retry_on=retry_on,
            preemptible=preemptible,
        )
    )
    if as_json:
        _print_json(job)
        return
    if job["state"] != "queued":
        out.print(f"Job {job['id']} ({job['name']}) is {job['state']}: starting now.")
        return
    wait = fmt.duration(job["estimated_wait_s"])
    start = fmt.clock(job["estimated_start_at"])
    out.print(
        f"Job {job['id']} ({job['name']}) queued: position {job['position']}, "
        f"estimated start {start} (in {wait})."
    )
    out.print(f"  {job['reason_text']}")


def _jobs_table(jobs: list[dict[str, Any]], *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("ID", "USER", "NAME", "STATE", "GPUS", "PRIO", "PROGRESS", "ELAPSED", "SUBMITTED"):
        table.add_column(col)
    for j in jobs:
        table.add_row(
            str(j["id"]),
            j["user"],
            j["name"],
            f"{j['state']} (held)" if j.get("held") else j["state"],
            fmt.gpu_list(j),
            fmt.priority(j),
            fmt.progress(j),
            fmt.duration(fmt.elapsed(j)),
            fmt.clock(j["submitted_at"]),
        )
    return table


@app.command()
def ps(
    all_users: Annotated[bool, typer.Option("--all", "-a", help="Everyone's jobs (admins).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Your waiting and running jobs, with progress."""

    def fetch(c: Client) -> dict[str, Any]:
        owner = None if all_users else c.me()["name"]
        return c.jobs(states=ACTIVE, user=owner, limit=500)

    page = _call(fetch)
    jobs = sorted(page["data"], key=lambda j: j["id"])
    if as_json:
        _print_json(jobs)
        return
    out.print(_jobs_table(jobs, title="Jobs") if jobs else "No waiting or running jobs.")


@app.command()
def queue(as_json: JsonOpt = False) -> None:
    """Everyone's waiting jobs in order: estimated start and why each waits."""
    data = _call(lambda c: c.queue())
    if as_json:
        _print_json(data)
        return
    if not data["data"]:
        out.print("The queue is empty.")
        return
    table = Table(title="Queue", title_justify="left")
    for col in ("POS", "ID", "USER", "NAME", "GPUS", "PRIO", "EST. START", "WAIT", "WHY"):
        table.add_column(col)
    for q in data["data"]:
        band = fmt.band(q)
        table.add_row(
            f"{q['position']} HELD" if q.get("held") else str(q["position"]),
            str(q["id"]),
            q["user"],
            q["name"],
            str(q["gpus"]),
            fmt.priority(q),
            fmt.clock(q["estimated_start_at"]) + (f" ({band})" if band else ""),
            fmt.duration(q["estimated_wait_s"]),
            q["reason_text"],
        )
    out.print(table)


@app.command()
def gpus(as_json: JsonOpt = False) -> None:
    """Every GPU: which job holds it, its load, and processes outside gpuyard."""
    data = _call(lambda c: c.gpus())
    if as_json:
        _print_json(data)
        return
    table = Table(title="GPUs", title_justify="left")
    for col in ("NODE", "GPU", "MODEL", "UTIL", "MEMORY", "JOB", "OUTSIDE GPUYARD"):
        table.add_column(col)
    for g in data["gpus"]:
        job = f"{g['job_id']} {g['job_user']}/{g['job_name']}" if g["job_id"] else "free"
        outside = ", ".join(f"pid {p['pid']} ({p.get('user') or '?'})" for p in g["outside_processes"]) or "-"
        util = "-" if g["utilization_pct"] is None else f"{g['utilization_pct']}%"
        node = g["node"] if g["node_online"] else f"{g['node']} (offline)"
        table.add_row(
            node,
            str(g["index"]),
            g["name"],
            util,
            f"{g['memory_used_mib']}/{g['memory_total_mib']} MiB",
            job,
            outside,
        )
    out.print(table if data["gpus"] else "No worker node has reported yet: is `gpuyard worker` running?")


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many jobs.")] = 20,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Another user's (admins).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Finished jobs, newest first."""
    page = _call(lambda c: c.jobs(states=FINAL, user=user, limit=limit))
    if as_json:
        _print_json(page["data"])
        return
    table = Table(title="History", title_justify="left")
    for col in ("ID", "USER", "NAME", "STATE", "EXIT", "FAILURE", "GPUS", "STARTED", "DURATION"):
        table.add_column(col)
    for j in page["data"]:
        exit_code = "-" if j["exit_code"] is None else str(j["exit_code"])
        table.add_row(
            str(j["id"]),
            j["user"],
            j["name"],
            j["state"],
            exit_code,
            j["failure_class"] or "-",
            str(j["gpus"]),
            fmt.clock(j["started_at"]),
            fmt.duration(fmt.elapsed(j)),
        )
    out.print(table if page["data"] else "No finished jobs yet.")


@app.command()
def show(job_id: int, as_json: JsonOpt = False) -> None:
    """One job with its attempts."""
    job = _call(lambda c: c.job(job_id))
    if as_json:
        _print_json(job)
        return
    out.print(f"Job {job['id']} {job['name']} ({job['user']}): {job['state']}")
    out.print(f"  command: {shlex.join(job['command'])}")
    out.print(f"  gpus: {job['gpus']}  priority: {job['priority']}  workdir: {job['workdir'] or '-'}")
    if job.get("preemptible"):
        stopping = "; being stopped now for a job ahead of it" if job.get("preempting") else ""
        out.print(f"  preemptible: yes, preempted {job.get('preemptions', 0)} time(s){stopping}")
    if job["error"]:
        out.print(f"  error: {job['error']}")
    usage = job.get("gpu_usage")
    if usage:
        idle = f"  IDLE since {fmt.clock(usage['idle_since'])}" if usage["idle_since"] else ""
        out.print(
            f"  GPU use: {usage['utilization_mean_pct']:.0f} % mean,"
            f" {usage['utilization_peak_pct']:.0f} % peak;"
            f" memory {usage['memory_mean_mib']} MiB mean, {usage['memory_peak_mib']} MiB peak{idle}"
        )
    if job.get("tensorboard_run"):
        out.print(f"  TensorBoard: {job.get('tensorboard_url') or job['tensorboard_run']}")
    for a in job["attempts"] or []:
        out.print(
            f"  attempt {a['number']}: {a['node']} GPUs {a['gpu_indices']}"
            f" started {fmt.clock(a['started_at'])} ended {fmt.clock(a['ended_at'])}"
            f" exit {a['exit_code']} {a['failure_class'] or ''}"
        )


@app.command()
def logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """A job's output (stdout and stderr)."""
    if follow:
        try:
            with _client() as client:
                for text in client.follow_logs(job_id):
                    sys.stdout.write(text)
                    sys.stdout.flush()
        except ApiError as e:
            err.print(f"error: {e.detail}")
            raise typer.Exit(1) from None
        return
    offset = 0
    while True:
        page = _call(partial(_read_logs, job_id=job_id, offset=offset))
        sys.stdout.write(page["data"])
        if page["next_offset"] == offset:
            break
        offset = page["next_offset"]


def _read_logs(client: Client, *, job_id: int, offset: int) -> dict[str, Any]:
    return client.logs(job_id, offset=offset)


JobIds = Annotated[list[int], typer.Argument(help="One or more job ids.")]


def _for_each(
    job_ids: list[int], call: Callable[[Client, int], dict[str, Any]], say: Callable[[dict[str, Any]], str]
) -> None:
    """One API call per job; every job gets its line, and any error makes the exit status 1."""
    failed = False
    with _client() as client:
        for job_id in job_ids:
            try:
                job = call(client, job_id)
            except ApiError as e:
                err.print(f"error: job {job_id}: {e.detail}")
                failed = True
                continue
            out.print(say(job))
    if failed:
        raise typer.Exit(1)


@app.command()
def cancel(job_ids: JobIds) -> None:
    """Cancel jobs: waiting ones at once, running ones get SIGTERM (SIGKILL after a grace period)."""

    def say(job: dict[str, Any]) -> str:
        verb = "cancelled" if job["state"] == "cancelled" else "stopping (cancel sent to its worker)"
        return f"Job {job['id']}: {verb}."

    _for_each(job_ids, Client.cancel, say)


@app.command()
def hold(job_ids: JobIds) -> None:
    """Hold waiting jobs: they keep their place in line but do not start until released."""
    _for_each(
        job_ids,
        Client.hold,
        lambda job: (
            f"Job {job['id']}: held. It keeps its place in line; `gpuyard release {job['id']}` lets it start."
        ),
    )


@app.command()
def release(job_ids: JobIds) -> None:
    """Release held jobs: each starts when its turn comes."""
    _for_each(
        job_ids, Client.release, lambda job: f"Job {job['id']}: released; it starts when its turn comes."
    )


@app.command()
def priority(
    job_id: int,
    level: Annotated[str, typer.Argument(help="low | normal | high | urgent (urgent: admins).")],
) -> None:
    """Give a waiting job another priority; it moves ahead of (or behind) the jobs of other priorities."""

    def change(c: Client) -> tuple[dict[str, Any], dict[str, Any] | None]:
        job = c.set_priority(job_id, level)
        try:
            return job, c.wait(job_id)
        except ApiError:  # it may have started at once
            return job, None

    job, wait = _call(change)
    line = f"Job {job_id}: priority {job['priority']}."
    if wait is None or not wait["position"]:
        line += " Starting now."
    else:
        line += f" Now {fmt.ordinal(wait['position'])} in line"
        if wait["estimated_start_at"]:
            line += f", estimated start {fmt.hhmm(wait['estimated_start_at'])}"
        line += "."
    out.print(line)


@app.command()
def why(job_id: int, as_json: JsonOpt = False) -> None:
    """Why a waiting job waits: its place in line, estimated start (with a range) and the reason."""
    wait = _call(lambda c: c.wait(job_id))
    if as_json:
        _print_json(wait)
        return
    out.print(fmt.why(wait))


@user_app.command("add")
def user_add(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
) -> None:
    """Create a user and print its token (shown once)."""
    user = _call(lambda c: c.add_user(name, is_admin=admin))
    out.print(f"User {user['name']} created{' (admin)' if user['is_admin'] else ''}. Token (shown once):")
    sys.stdout.write(user["token"] + "\n")


from gpuyard.entrypoints.cli import dead as _dead  # noqa: E402  (registers dead, requeue)
from gpuyard.entrypoints.cli import services as _services  # noqa: E402  (registers up/controller/worker)
from gpuyard.entrypoints.cli import simulate as _simulate  # noqa: E402  (registers simulate)
from gpuyard.entrypoints.cli import tensorboard as _tensorboard  # noqa: E402  (registers tensorboard)
from gpuyard.entrypoints.cli import webhooks as _webhooks  # noqa: E402  (registers webhook ...)

_services.register(app)
_simulate.register(app)
_tensorboard.register(app)
_webhooks.register(app)
_dead.register(app)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
