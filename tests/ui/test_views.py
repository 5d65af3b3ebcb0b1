"""The UI's page logic as plain functions: forms, sentences, rows, log tails, and series for charts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuyard.client import ApiError, ApiUnreachable
from gpuyard.entrypoints.cli import format as fmt
from gpuyard.entrypoints.ui import cards, dead_letters, listings, views
from gpuyard.entrypoints.ui.forms import (
    SubmitForm,
    copy_submission,
    parse_command,
    parse_env,
    parse_submission,
)
from gpuyard.entrypoints.ui.series import (
    LogTail,
    gpu_usage_rows,
    job_usage_rows,
    metric_names,
    metric_points,
    read_all,
    usage_span,
)

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python train.py --lr 3e-4", ["python", "train.py", "--lr", "3e-4"]),
        ("  python 'my script.py'  ", ["python", "my script.py"]),
        ("python prep.py && python train.py > out.txt", "python prep.py && python train.py > out.txt"),
        ("echo $HOME", "echo $HOME"),
    ],
)
def test_parse_command(text: str, expected: object) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "Enter the command"), ("   ", "Enter the command"), ("python 'oops", "never closed")],
)
def test_parse_command_says_what_to_fix(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_command(text)


def test_parse_env() -> None:
    assert parse_env("A=1\n\n# note\n B = two=2 \n") == {"A": "1", "B": " two=2"}
    for bad, says in [("NOPE", "line 1"), ("1X=2", "line 1"), ("OK=1\nGPUYARD_JOB_ID=3", "set by gpuyard")]:
        with pytest.raises(ValueError, match=says):
            parse_env(bad)


def test_parse_submission_collects_every_problem(tmp_path: Path) -> None:
    form = SubmitForm(
        command="", gpus=0, priority="asap", workdir="relative/dir", env_text="X", time_limit="5 q"
    )
    submission, problems = parse_submission(form)
    assert submission is None
    text = " ".join(problems)
    for says in (
        "Enter the command",
        "at least 1 GPU",
        "Priority must be",
        "absolute path",
        "KEY=VALUE",
        "Time limit",
    ):
        assert says in text
    _, problems = parse_submission(SubmitForm(command="true", workdir=str(tmp_path / "missing")))
    assert problems == [
        f"The working directory {tmp_path / 'missing'} does not exist: create it or pick another."
    ]


def test_parse_submission(tmp_path: Path) -> None:
    form = SubmitForm(
        command="python train.py",
        gpus=2,
        priority="High",
        name=" run ",
        workdir=str(tmp_path),
        env_text="SEED=1",
        time_limit="1h30m",
        preemptible=True,
    )
    submission, problems = parse_submission(form, base_env={"PATH": "/venv/bin", "SEED": "0"})
    assert problems == [] and submission is not None
    assert submission.command == ["python", "train.py"]
    assert submission.kwargs() == {
        "gpus": 2,
        "priority": "high",
        "name": "run",
        "workdir": str(tmp_path),
        "env": {"PATH": "/venv/bin", "SEED": "1"},
        "time_limit_s": 5400,
        "preemptible": True,
    }


def test_copy_submission_copies_the_spec() -> None:
    job = {
        "command": ["sh", "-c", "echo hi"],
        "gpus": 2,
        "priority": "low",
        "name": "x",
        "workdir": "/w",
        "env": {"A": "1"},
        "time_limit_s": 60,
        "state": "succeeded",
        "retry_on": ["oom"],
        "max_attempts": 5,  # after a requeue, it counts the attempts used before: not copied
    }
    submission = copy_submission(job)
    assert submission.command == ["sh", "-c", "echo hi"]
    assert submission.kwargs() == {
        "gpus": 2,
        "priority": "low",
        "name": "x",
        "workdir": "/w",
        "env": {"A": "1"},
        "time_limit_s": 60,
        "retry_on": ("oom",),
    }


def test_describe_error() -> None:
    url = "http://127.0.0.1:9"
    down = ApiUnreachable(url, httpx.ConnectError("refused"))
    down.__cause__ = httpx.ConnectError("refused")
    slow = ApiUnreachable(url, httpx.ReadTimeout("slow"))
    slow.__cause__ = httpx.ReadTimeout("slow")
    assert "Cannot reach the gpuyard API at http://127.0.0.1:9" in views.describe_error(
        down, api_url=url, timeout_s=5
    )
    assert "did not answer within 5 s" in views.describe_error(slow, api_url=url, timeout_s=5)
    assert "not valid" in views.describe_error(
        ApiError(401, "not_authenticated", "x"), api_url=url, timeout_s=5
    )
    assert (
        views.describe_error(ApiError(409, "invalid_transition", "Job 3 is done."), api_url=url, timeout_s=5)
        == "Job 3 is done."
    )
    text = views.describe_error(KeyError("boom"), api_url=url, timeout_s=5)
    assert "KeyError" in text and "Traceback" not in text


def wait(**over: Any) -> dict[str, Any]:
    base = {
        "id": 7,
        "position": 3,
        "held": False,
        "reason": "gpus_busy",
        "reason_text": "waiting for 2 GPUs",
        "estimated_start_at": None,
        "estimated_wait_s": None,
        "backfill": False,
        "source": "time_limit",
    }
    return {**base, **over}


def test_wait_text() -> None:
    assert views.wait_text(wait(position=0, reason="starting")) == "Job 7 is starting now."
    text = views.wait_text(wait(estimated_start_at=iso(NOW), estimated_wait_s=1500))
    assert text.startswith("Job 7 is 3rd in line. Estimated start ")
    assert "from time limits" in text and "in 25m." in text and text.endswith("Why: waiting for 2 GPUs")
    assert views.wait_text(wait(position=1)).startswith(
        "Job 7 is next in line. No start can be foreseen yet."
    )
    held = views.wait_text(wait(held=True, reason="held", reason_text="held"))
    assert held == "Job 7 is held (3rd in line): release it to let it start."


BACKOFF_TEXT = (
    "retrying after exit_nonzero: attempt 2 of 3 starts no earlier than 12:00:20; it keeps its place in line"
)


def test_a_job_waiting_out_its_backoff_reads_well() -> None:
    retry = wait(
        position=1,
        reason="retry_backoff",
        reason_text=BACKOFF_TEXT,
        estimated_start_at=iso(NOW + timedelta(seconds=20)),
        estimated_start_earliest_at=iso(NOW + timedelta(seconds=20)),
        estimated_start_latest_at=None,
        estimated_wait_s=20,
    )
    text = views.wait_text(retry)
    start = views.when(retry["estimated_start_at"])
    assert text == f"Job 7 is next in line. Estimated start {start}, in 20s. Why: {BACKOFF_TEXT}", (
        "no runtime source and no band: it starts at its retry time"
    )
    (row,) = views.queue_rows(
        [{**retry, "user": "bob", "name": "x", "gpus": 1, "priority": "high"}], me="alice"
    )
    assert (row["priority"], row["est. start"], row["wait"], row["why"]) == (
        "high, retrying",
        start,
        "20s",
        BACKOFF_TEXT,
    )


def job(**over: Any) -> dict[str, Any]:
    base = {
        "id": 5,
        "name": "digits",
        "user": "alice",
        "state": "running",
        "gpus": 2,
        "node": "box",
        "gpu_indices": [0, 1],
        "started_at": iso(NOW - timedelta(minutes=10)),
        "finished_at": None,
        "time_limit_s": None,
        "progress": None,
        "progress_step": None,
        "progress_total": None,
        "metrics": None,
        "exit_code": None,
        "failure_class": None,
        "attempt": 1,
        "submitted_at": iso(NOW),
        "cancel_requested": False,
        "priority": "normal",
        "max_attempts": 3,
        "retry_on": [],
        "retry_at": None,
    }
    return {**base, **over}


@pytest.mark.parametrize(
    ("over", "minutes", "source"),
    [
        ({"progress": 0.25}, 40, "progress"),
        ({"time_limit_s": 1800}, 30, "time limit"),
        ({"progress": 0.25, "time_limit_s": 1800}, 30, "time limit (its progress rate would run past it)"),
        ({"progress": 0.5, "time_limit_s": 3600}, 20, "progress"),
        ({}, None, ""),
    ],
)
def test_estimated_end(over: dict[str, Any], minutes: int | None, source: str) -> None:
    end, said = cards.estimated_end(job(**over), now=NOW)
    started = NOW - timedelta(minutes=10)
    assert end == (None if minutes is None else started + timedelta(minutes=minutes))
    assert said == source


def test_running_view() -> None:
    view = cards.running_view(
        job(progress=0.5, progress_step=50.0, progress_total=100.0, metrics={"loss": 0.5}), now=NOW
    )
    assert view.title == "Job 5 · digits" and view.gpus == "box GPUs 0, 1" and view.elapsed == "10m00s"
    assert view.progress_text == "50% (step 50 of 100)" and "from progress" in view.ends
    bare = cards.running_view(job(), now=NOW)
    assert "gpuyard.report" in bare.progress_text and bare.ends.startswith("unknown")
    assert (bare.idle, bare.usage, bare.tensorboard_url, bare.tensorboard_text) == ("", "", None, "")


def test_running_view_flags_idle_gpus_and_links_tensorboard() -> None:
    usage = {
        "utilization_mean_pct": 2.4,
        "utilization_peak_pct": 61.0,
        "memory_mean_mib": 4096,
        "memory_peak_mib": 5120,
        "samples": 40,
        "idle_since": iso(NOW - timedelta(minutes=5)),
    }
    run = "job-5-digits/attempt-1"
    view = cards.running_view(job(gpu_usage=usage, tensorboard_run=run), now=NOW)
    since = views.when(usage["idle_since"], now=NOW)
    assert view.idle == f"GPUs idle since {since}"
    assert view.usage == "GPU use 2% mean, 61% peak · memory 4,096 MiB mean, 5,120 MiB peak"
    assert view.tensorboard_url is None and f"`{run}`" in view.tensorboard_text
    assert "`gpuyard up --tensorboard-port 6006`" in view.tensorboard_text, "how to get a link"
    one = job(gpus=1, gpu_indices=[0], gpu_usage={**usage, "idle_since": None})
    assert cards.running_view(one, now=NOW).idle == "", "busy again: no flag"
    assert cards.idle_text({**one, "gpu_usage": usage}, now=NOW) == f"GPU idle since {since}"
    url = "http://box:6006/?runFilter=x#timeseries"
    linked = cards.running_view(job(tensorboard_run=run, tensorboard_url=url), now=NOW)
    assert linked.tensorboard_url == url and linked.tensorboard_text == f"Its run {run} in TensorBoard"


def test_queue_rows_and_summary() -> None:
    entries = [
        {
            "id": 3,
            "position": 1,
            "user": "bob",
            "name": "a",
            "gpus": 1,
            "priority": "high",
            "held": False,
            "estimated_start_at": iso(NOW),
            "estimated_wait_s": 60,
            "reason_text": "waiting for 1 GPU",
        },
        {
            "id": 4,
            "position": 2,
            "user": "alice",
            "name": "b",
            "gpus": 2,
            "priority": "normal",
            "held": True,
            "estimated_start_at": None,
            "estimated_wait_s": None,
            "reason_text": "held",
        },
    ]
    rows = views.queue_rows(entries, me="alice")
    assert [r["job"] for r in rows] == [3, 4] and rows[1]["owner"] == "alice (you)"
    assert rows[1]["why"].startswith("held") and rows[1]["priority"] == "normal, held"
    summary = views.queue_summary(entries, me="alice")
    assert summary == "2 jobs waiting; 1 of them yours, the first (4) is 2nd in line."
    assert views.queue_summary([], me="alice").startswith("Nobody is waiting")
    assert [views.may_act(e, me="alice", is_admin=False) for e in entries] == [False, True]


def gpu(index: int, **over: Any) -> dict[str, Any]:
    base = {
        "node": "box",
        "index": index,
        "name": "RTX 3090",
        "memory_total_mib": 24000,
        "memory_used_mib": 6000,
        "utilization_pct": 50,
        "job_id": None,
        "job_user": None,
        "job_name": None,
        "outside_processes": [],
        "node_online": True,
    }
    return {**base, **over}


def test_gpu_rows_summary_and_others() -> None:
    gpus = [
        gpu(0, job_id=9, job_user="bob", job_name="big"),
        gpu(1, job_id=9, job_user="bob", job_name="big"),
        gpu(2, outside_processes=[{"pid": 42, "user": "carol", "used_memory_mib": 900}]),
        gpu(3, node="old", node_online=False),
    ]
    rows = listings.gpu_rows(gpus, me="alice")
    assert rows[0]["job"] == "job 9 · big (bob)" and rows[0]["memory"] == 0.25
    assert rows[2]["outside gpuyard"] == "pid 42 (carol, 900 MiB)" and rows[3]["node"] == "old (offline)"
    assert listings.gpu_summary({"gpus": gpus}) == (
        "2 of 3 GPUs in use by gpuyard jobs; 1 with processes outside gpuyard; 1 on offline nodes."
    )
    assert [r["idle since"] for r in rows] == ["", "", "", ""]
    assert cards.others_running(gpus, shown=set()) == [
        {"job": 9, "owner": "bob", "name": "big", "node": "box", "GPUs": "0, 1"}
    ]
    assert cards.others_running(gpus, shown={9}) == []
    notes = listings.node_notes(
        [{"name": "old", "online": False, "gpus": 4, "last_seen_at": iso(NOW - timedelta(minutes=5))}],
        now=NOW,
    )
    assert notes == [
        "Node old is offline (last heard from 5m ago): its 4 GPUs get no new jobs. "
        "Check that `gpuyard worker` runs there."
    ]


def test_gpus_of_a_job_flagged_idle() -> None:
    since = iso(NOW - timedelta(minutes=5))
    gpus = [
        gpu(0, job_id=9, job_user="bob", job_name="big", job_idle_since=since),
        gpu(1, job_id=9, job_user="bob", job_name="big", job_idle_since=since),
        gpu(2, job_id=10, job_user="alice", job_name="busy", job_idle_since=None),
        gpu(3),
    ]
    idle = listings.idle_from_gpus(gpus)
    assert idle == {9: since}
    gpus = gpus[:3]
    rows = listings.gpu_rows(gpus, me="alice", idle=idle)
    at = views.when(since)
    assert [r["idle since"] for r in rows] == [at, at, ""]
    assert listings.idle_notes(gpus, idle, me="alice") == [
        f"Job 9 · big (bob) holds box GPUs 0, 1 but has not used them since {at}. If it no longer needs "
        "them, cancel it: others could use them."
    ]
    mine = listings.idle_notes([gpu(3, job_id=9, job_user="alice", job_name="big")], idle, me="alice")
    assert mine == [
        f"Job 9 · big (you) holds box GPU 3 but has not used it since {at}. If it no longer needs it, "
        "cancel it: others could use it."
    ]


def test_history_rows() -> None:
    done = job(state="failed", exit_code=3, failure_class="exit_nonzero", finished_at=iso(NOW), attempt=2)
    (row,) = listings.history_rows([done], me="alice")
    assert row["state"] == "failed" and row["exit"] == 3 and row["attempts"] == "2 of 3"
    assert row["owner"] == "you" and row["duration"] == "10m00s"


def test_attempts_retries_and_a_backoff_in_words() -> None:
    failed = job(state="failed", failure_class="exit_nonzero", attempt=3, retry_on=["exit_nonzero", "oom"])
    assert listings.attempts_text(failed, now=NOW) == (
        "Attempt 3 of 3. Retried after: a lost machine, exit_nonzero, oom."
    )
    assert listings.may_requeue(failed) and listings.may_requeue(job(state="timed_out"))
    assert not any(listings.may_requeue(job(state=s)) for s in ("succeeded", "cancelled", "queued"))
    retry_at = NOW + timedelta(seconds=20)
    backing_off = job(state="queued", failure_class="node_lost", attempt=1, retry_at=iso(retry_at))
    assert listings.attempts_text(backing_off, now=NOW) == (
        "Attempt 1 of 3. Retried after: a lost machine. Waiting out its backoff after node_lost: attempt 2 "
        f"of 3 starts no earlier than {fmt.clock(iso(retry_at))} (in 20s)."
    )
    assert "backoff" not in listings.attempts_text(backing_off, now=retry_at), "its time has come"
    assert listings.attempts_text(job(state="queued", attempt=0), now=NOW).startswith(
        "No attempt yet (3 allowed)."
    )
    back = job(id=12, name="bert", state="queued", attempt=3, max_attempts=6)
    assert listings.requeued_text(back).startswith(
        "Job 12 (bert) is back in line, with a fresh budget of attempts: attempt 4 of 6 comes next."
    )


def letter(**over: Any) -> dict[str, Any]:
    base = {
        "id": 4,
        "kind": "job",
        "job_id": 12,
        "user": "alice",
        "reason": "Job 12 failed: exit_nonzero on each of its 1 attempt(s), and it may not try again.",
        "failure_class": "exit_nonzero",
        "attempts": 1,
        "log_tail": "boom\n",
        "routing_key": None,
        "body": None,
        "created_at": iso(NOW),
        "requeued_at": None,
    }
    return {**base, **over}


def test_dead_letter_rows_titles_and_summary() -> None:
    message = letter(
        id=5, kind="message", job_id=None, user=None, failure_class=None, attempts=None,
        reason="rejected: the body is not a known message", routing_key="gpuyard.t1.events", body={"x": 1},
    )  # fmt: skip
    done = letter(id=3, requeued_at=iso(NOW))
    rows = dead_letters.dead_rows([letter(), message, done], me="alice", now=NOW)
    assert [r["kind"] for r in rows] == ["job", "message", "job"], "messages are there: a kind column"
    assert rows[0] | {"when": "-"} == {
        "id": 4, "kind": "job", "job": 12, "owner": "you", "failure": "exit_nonzero", "attempts": 1,
        "when": "-", "requeued": "", "why": letter()["reason"],
    }  # fmt: skip
    assert rows[1]["owner"] == "-" and rows[2]["requeued"] == views.when(iso(NOW), now=NOW)
    assert "kind" not in dead_letters.dead_rows([letter()], me="bob")[0], "jobs only: no kind column"
    at = views.when(iso(NOW), now=NOW)
    assert dead_letters.dead_title(letter(), me="bob", now=NOW) == (
        f"Dead letter 4 · job 12 (alice) · exit_nonzero, 1 attempt · {at}"
    )
    assert dead_letters.dead_title(message, me="bob", now=NOW) == (
        f"Dead letter 5 · a message to gpuyard.t1.events · {at}"
    )
    assert dead_letters.dead_title(done, me="alice", now=NOW).endswith(
        f"(you) · exit_nonzero, 1 attempt · {at} · requeued {at}"
    )
    assert dead_letters.dead_summary([letter(), message, done], is_admin=True) == (
        "1 job and 1 message wait for a decision: read why below, fix what needs fixing, then requeue."
    )
    assert dead_letters.dead_summary([letter(id=6), letter()], is_admin=False).startswith("2 jobs wait")
    assert dead_letters.dead_summary([done], is_admin=False).startswith("No dead letter of yours waits")


def test_who_may_requeue_a_dead_letter_and_what_it_did() -> None:
    message = letter(id=5, kind="message", job_id=None, routing_key="gpuyard.t1.node.box")
    assert dead_letters.may_requeue(letter(), is_admin=False)
    assert not dead_letters.may_requeue(letter(requeued_at=iso(NOW)), is_admin=True), "once"
    assert not dead_letters.may_requeue(message, is_admin=False) and dead_letters.may_requeue(
        message, is_admin=True
    )
    assert dead_letters.requeued_text(letter()).startswith(
        "Dead letter 4: job 12 is back in line, with a fresh budget of attempts."
    )
    assert (
        dead_letters.requeued_text(message)
        == "Dead letter 5: the message was sent again to gpuyard.t1.node.box."
    )


def test_day_bounds_cover_whole_local_days() -> None:
    after, before = listings.day_bounds(date(2026, 5, 1), date(2026, 5, 3))
    assert after is not None and before is not None
    assert after.tzinfo is not None and before - after == timedelta(days=3)
    assert listings.day_bounds(None, None) == (None, None)


def test_log_tail_reads_on_and_starts_over_for_a_new_attempt() -> None:
    log = {1: "a\nb\nc", 2: "new\n"}
    attempt = {"now": 1}

    def read(offset: int) -> dict[str, Any]:
        text = log[attempt["now"]]
        chunk = text[offset : offset + 2]
        return {"attempt": attempt["now"], "data": chunk, "next_offset": offset + len(chunk)}

    tail = LogTail(max_lines=2)
    tail.catch_up(read)
    assert tail.text == "b\nc" and tail.offset == 5
    log[1] += "\nd\n"
    tail.catch_up(read)
    assert list(tail.lines) == ["c", "d"] and tail.partial == ""
    attempt["now"] = 2
    tail.catch_up(read)
    assert tail.text == "new" and tail.attempt == 2


def test_read_all_stops_at_the_cap() -> None:
    def read(offset: int) -> dict[str, Any]:
        chunk = "x" * 10 if offset < 100 else ""
        return {"data": chunk, "next_offset": offset + len(chunk)}

    assert read_all(read) == ("x" * 100, True)
    assert read_all(read, max_bytes=25) == ("x" * 30, False)


def report(step: float | None, **metrics: Any) -> dict[str, Any]:
    return {"at": iso(NOW), "step": step, "total": 10, "metrics": metrics}


def test_metric_points_one_per_step_from_the_api_series() -> None:
    series = {
        "attempt": 2,
        "progress": [
            report(1, loss=0.9, tag="x", ok=True),
            report(None, loss=0.8),  # no step: not on a curve over steps
            report(1, loss=0.85),  # a step reported again: the last report wins
            report(2, loss=0.5),
            report(3),  # no numbers
        ],
    }
    points = metric_points(series)
    assert points == [{"step": 1.0, "loss": 0.85}, {"step": 2.0, "loss": 0.5}]
    assert metric_names(points) == ["loss"]
    latest = {"attempt": 2, "progress_step": 4, "metrics": {"loss": 0.25, "acc": 0.9}}
    with_latest = metric_points(series, job=latest)
    assert with_latest[-1] == {"step": 4.0, "loss": 0.25, "acc": 0.9}, "a report the series has not kept yet"
    assert metric_names(with_latest) == ["loss", "acc"]
    assert metric_points(series, job={**latest, "attempt": 3}) == points, (
        "another attempt's report: not mixed"
    )
    many = {"attempt": 1, "progress": [report(i, loss=1.0 / i) for i in range(1, 1001)]}
    thinned = metric_points(many, max_points=100)
    assert len(thinned) <= 100 and thinned[-1]["step"] == 1000.0, "thinned, the newest kept"


def test_job_usage_rows_over_clock_time() -> None:
    series = {"gpu": [{"at": iso(NOW), "utilization_pct": 97.5, "memory_used_mib": 4000}]}
    assert job_usage_rows(series) == [{"time": NOW, "utilization": 97.5, "memory": 4000}]
    assert job_usage_rows({"gpu": []}) == []


def usage(node: str, index: int, *points: tuple[int, float, int]) -> dict[str, Any]:
    """A GPU of GET /gpus/usage, with (seconds after NOW, utilization %, memory MiB) points."""
    return {
        "node": node,
        "index": index,
        "points": [
            {"at": iso(NOW + timedelta(seconds=s)), "utilization_pct": u, "memory_used_mib": m}
            for s, u, m in points
        ],
    }


def test_gpu_usage_rows_and_span() -> None:
    payload = {"gpus": [usage("box", 0, (0, 10, 6000), (30, 20, 12000)), usage("gone", 0, (30, 5, 100))]}
    totals = {("box", 0): 24000}
    assert gpu_usage_rows(payload, "utilization", memory_total_mib=totals) == [
        {"time": NOW, "GPU": "box:0", "percent": 10.0},
        {"time": NOW + timedelta(seconds=30), "GPU": "box:0", "percent": 20.0},
        {"time": NOW + timedelta(seconds=30), "GPU": "gone:0", "percent": 5.0},
    ]
    memory = gpu_usage_rows(payload, "memory", memory_total_mib=totals)
    assert [(r["GPU"], r["percent"]) for r in memory] == [("box:0", 25.0), ("box:0", 50.0)], (
        "a GPU of unknown size has no memory percent"
    )
    assert usage_span(payload) == timedelta(seconds=30)
    assert usage_span({"gpus": []}) == timedelta(0)


def test_gpu_usage_rows_thin_out_a_long_series_for_the_chart() -> None:
    payload = {"gpus": [usage("box", 0, *((2 * i, i % 100, 0) for i in range(1000)))]}
    rows = gpu_usage_rows(payload, "utilization", memory_total_mib={}, max_points=100)
    assert 90 <= len(rows) <= 100 and rows[-1]["time"] == NOW + timedelta(seconds=1998)


def test_session_book_tickets_are_one_time_and_sessions_expire() -> None:
    from gpuyard.entrypoints.ui.remember import SESSION_TTL_S, TICKET_TTL_S, SessionBook

    book = SessionBook()
    sid, ticket = book.issue("gy_a", now=0)
    assert book.redeem(ticket, now=1) == sid and book.redeem(ticket, now=1) is None, "one time"
    assert book.token(sid, now=2) == "gy_a"
    assert book.token(sid, now=SESSION_TTL_S + 1) is None and book.token(sid, now=3) is None
    sid2, ticket2 = book.issue("gy_b", now=0)
    assert book.redeem(ticket2, now=TICKET_TTL_S + 1) is None, "a stale ticket"
    book.forget(sid2)
    assert book.token(sid2, now=1) is None
    assert book.token("unknown") is None


def test_remember_route_sets_an_http_only_session_cookie() -> None:
    import asyncio

    from starlette.requests import Request

    from gpuyard.entrypoints.ui.remember import BOOK, COOKIE, ROUTE, remember_route

    def get(ticket: str) -> Any:
        scope = {
            "type": "http",
            "method": "GET",
            "path": ROUTE,
            "headers": [],
            "query_string": f"ticket={ticket}".encode(),
        }
        return asyncio.run(remember_route(Request(scope)))

    sid, ticket = BOOK.issue("gy_c")
    answer = get(ticket)
    assert answer.status_code == 204
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={sid};") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "expires" not in cookie.lower() and "max-age" not in cookie.lower(), "a browser-session cookie"
    again = get(ticket)
    assert again.status_code == 204 and "set-cookie" not in again.headers
    BOOK.forget(sid)


def test_when_says_today_tomorrow_or_the_day() -> None:
    local_noon = datetime.now().astimezone().replace(hour=12, minute=0, second=0, microsecond=0)
    now = local_noon.astimezone(UTC)
    assert views.when(iso(local_noon.replace(hour=14, minute=5)), now=now) == "14:05"
    assert views.when(iso(local_noon + timedelta(hours=13)), now=now) == "tomorrow 01:00"
    assert views.when(iso(local_noon + timedelta(days=3)), now=now) == (
        local_noon + timedelta(days=3)
    ).strftime("%a %d %b 12:00")
    assert views.when(None) == "-"


def test_a_long_log_is_entered_near_its_end() -> None:
    text = "".join(f"line {i}\n" for i in range(200_000))  # about 2.2 MB
    reads: list[int] = []

    def read(offset: int) -> dict[str, Any]:
        reads.append(offset)
        chunk = text[offset : offset + 256 * 1024]
        return {"attempt": 1, "data": chunk, "next_offset": offset + len(chunk)}

    tail = LogTail(max_lines=5)
    tail.catch_up(read)
    assert tail.text.splitlines() == [f"line {i}" for i in range(199_995, 200_000)]
    assert len(reads) < 20 and all(line.startswith("line ") for line in tail.lines)
    first_lines = LogTail()
    first_lines.catch_up(lambda offset: {"attempt": 1, "data": "a\nb\n"[offset:], "next_offset": 4})
    assert first_lines.text == "a\nb", "a short log is read whole, from its start"
