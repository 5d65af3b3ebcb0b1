"""Every page of the web UI, driven by Streamlit's AppTest against a real controller and worker: what it
shows, what its buttons do, and what it says when the input, the token or the API is wrong."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gpuyard.adapters.broker.local import free_port
from gpuyard.entrypoints.ui import session, views
from tests.support.stack import Stack, held_job, release, running_stack, wait_for
from tests.ui.conftest import app, assert_no_exception, charts, errors, open_page, texts

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# Series quick enough for a test: a usage point a second, every progress report kept, and a job whose GPUs
# are idle for 2 s is flagged (the fake GPUs' load follows the job's CPU use: a sleeping job is idle). A
# retried job waits a minute, long enough to look at it however slow the machine is.
STACK_ENV = {
    "GPUYARD_USAGE_BUCKET_S": "1",
    "GPUYARD_PROGRESS_POINT_S": "0",
    "GPUYARD_IDLE_GPU_AFTER_S": "2",
    "GPUYARD_RETRY_BACKOFF_S": "60",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("ui-pages")
    with running_stack(base, amqp_url, fake_gpus=2, extra_env=STACK_ENV) as s:
        yield s


def button(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r} on the page (buttons: {[b.label for b in at.button]})"
    return found[0]


def sign_in(at: AppTest, token: str) -> AppTest:
    at.text_input(key="signin.token").input(token)
    button(at, "Sign in").click()
    return at.run()


def test_sign_in_says_what_is_wrong_then_lets_a_valid_token_in(stack: Stack) -> None:
    at = app(stack.url).run()
    assert "Sign in" in [b.label for b in at.button]
    sign_in(at, "  ")
    assert "Paste your token" in errors(at)
    sign_in(at, "gy_not-a-real-token")
    assert "This token is not valid" in errors(at) and "gpuyard admin user add" in errors(at)
    assert at.text_input(key="signin.token").value == "gy_not-a-real-token", "what was typed stays"
    assert session.TOKEN not in at.session_state
    sign_in(at, stack.admin_token)
    assert_no_exception(at)
    assert at.session_state[session.USER]["is_admin"] is True
    assert "Queue" in [h.value for h in at.header], "signed in, the queue is the first page"
    at.switch_page("screens/history.py").run()
    assert "history.filters" in at.session_state
    button(at, "Sign out").click()
    at.run()
    assert session.TOKEN not in at.session_state and "Sign in" in [b.label for b in at.button]
    left = [k for k in at.session_state.keys() if k.split(".")[0] in ("history", "running", "gpus", "queue")]
    assert left == [], "what the pages kept goes with the sign-in"
    assert at.session_state[session.API_URL] == stack.url


def test_an_api_that_is_down_is_named_with_what_to_do(stack: Stack) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    at = app(down).run()
    assert f"Cannot reach the gpuyard API at {down}" in at.warning[0].value, "said before anyone signs in"
    at = sign_in(at, stack.admin_token)
    assert_no_exception(at)
    assert f"Cannot reach the gpuyard API at {down}" in errors(at) and "gpuyard up" in errors(at)
    at = open_page(stack, stack.admin_token, "queue.py")  # signed in, then the API goes away
    at.session_state[session.API_URL] = down
    at.run()
    assert_no_exception(at)
    assert "Could not load the queue. Cannot reach the gpuyard API" in errors(at)


def test_a_slow_api_is_named_and_the_page_recovers(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUYARD_UI_API_TIMEOUT_S", "1")
    session.config.cache_clear()
    at = open_page(stack, stack.admin_token, "gpus.py")
    controller = stack.procs["controller"]
    os.kill(controller.pid, signal.SIGSTOP)  # it still accepts connections, and answers nothing
    try:
        at.run()
    finally:
        os.kill(controller.pid, signal.SIGCONT)
    assert_no_exception(at)
    assert "did not answer within 1 s" in errors(at)
    at.run()
    assert not at.error and "GPUs in use" in texts(at)


def test_submit_refuses_bad_input_and_keeps_what_was_typed(stack: Stack) -> None:
    at = open_page(stack, stack.admin_token, "submit.py")
    at.text_input(key="submit.command").input("")
    at.number_input(key="submit.gpus").set_value(0)
    at.text_input(key="submit.time_limit").input("soon")
    at.text_area(key="submit.env").input("SEED=1\nnot an assignment")
    at.text_input(key="submit.name").input("keep-me")
    button(at, "Submit").click()
    at.run()
    assert_no_exception(at)
    said = errors(at)
    for expected in ("was not submitted", "Enter the command", "at least 1 GPU", "Time limit", "line 2"):
        assert expected in said
    assert at.text_input(key="submit.name").value == "keep-me"
    assert at.text_area(key="submit.env").value == "SEED=1\nnot an assignment"
    with stack.admin() as c:
        assert c.jobs()["data"] == [], "nothing was submitted"
    # A request the API refuses: more GPUs than any node has.
    at.text_input(key="submit.command").input("true")
    at.number_input(key="submit.gpus").set_value(8)
    at.text_input(key="submit.time_limit").input("")
    at.text_area(key="submit.env").input("")
    button(at, "Submit").click()
    at.run()
    assert_no_exception(at)
    assert "Could not submit the job." in errors(at) and "8 GPUs" in errors(at)
    assert at.text_input(key="submit.command").value == "true"


def test_submit_shows_place_in_line_then_that_it_started(stack: Stack, release_dir: Path) -> None:
    with stack.admin() as c:
        blockers = [c.submit(held_job(release_dir), gpus=1, name=f"block{i}")["id"] for i in range(2)]
    at = open_page(stack, stack.admin_token, "submit.py")
    at.text_input(key="submit.command").input(f"echo started; ls {release_dir}")
    at.number_input(key="submit.gpus").set_value(2)
    at.text_input(key="submit.name").input("after-blockers")
    at.text_input(key="submit.workdir").input(str(ROOT))
    at.checkbox(key="submit.preemptible").check()
    button(at, "Submit").click()
    at.run()
    assert_no_exception(at)
    assert not at.error
    job_id = at.session_state["submit.last_job"]
    said = texts(at)
    assert f"Job {job_id} is next in line." in said and "Why: waiting for 2 GPUs" in said
    release(release_dir, *blockers)
    job = stack.wait_state(job_id, "succeeded")
    assert job["workdir"] == str(ROOT) and job["command"][-1] == f"echo started; ls {release_dir}"
    assert job["preemptible"] is True
    at.run()
    assert f"Job {job_id} succeeded" in texts(at)


def test_queue_lists_the_line_and_manages_a_waiting_job(stack: Stack, alice: str, release_dir: Path) -> None:
    with stack.admin() as c:
        blocker = c.submit(held_job(release_dir), gpus=2, name="blocker")["id"]
        stack.wait_state(blocker, "running")
        theirs = c.submit("true", gpus=1, name="admins-job")["id"]
    with stack.client(alice) as c:
        mine = c.submit("true", gpus=1, name="alices-job")["id"]
    at = open_page(stack, alice, "queue.py")
    said = texts(at)
    assert "2 jobs waiting; 1 of them yours, the first" in said
    assert "waiting for 1 GPU" in said and "alice (you)" in said and "admins-job" in said
    picker = at.selectbox(key="queue.job")
    assert picker.options == [f"{mine} · alices-job (alice, 2nd in line)"], "alice manages only her own jobs"
    button(at, "Hold").click()
    at.run()
    assert_no_exception(at)
    assert f"Job {mine} held" in texts(at)
    assert stack.job(mine)["held"] is True
    assert "normal, held" in texts(at)
    button(at, "Release").click()
    at.run()
    assert stack.job(mine)["held"] is False
    at.selectbox(key=f"queue.priority.{mine}").select("urgent")
    button(at, "Set priority").click()
    at.run()
    assert_no_exception(at)
    assert f"Could not change the priority of job {mine}." in errors(at) and "admin" in errors(at)
    assert stack.job(mine)["priority"] == "normal"
    at.selectbox(key=f"queue.priority.{mine}").select("high")
    button(at, "Set priority").click()
    at.run()
    assert stack.job(mine)["priority"] == "high" and f"Job {mine} now has priority high." in texts(at)
    button(at, "Cancel").click()
    at.run()
    assert_no_exception(at)
    assert stack.job(mine)["state"] == "cancelled" and f"Job {mine} cancelled." in texts(at)
    with stack.admin() as c:
        c.cancel(theirs)
    release(release_dir, blocker)
    stack.wait_state(blocker, "succeeded")


def test_queue_says_when_a_failed_job_tries_again(stack: Stack, alice: str) -> None:
    with stack.client(alice) as c:
        job_id = c.submit("exit 3", name="flaky", retry_on=["exit_nonzero"], max_attempts=2)["id"]
    backing_off = wait_for(
        lambda: (j := stack.job(job_id))["state"] == "queued" and j["retry_at"] and j,
        what=f"job {job_id} to wait out its backoff",
    )
    with stack.client(alice) as c:
        (entry,) = [q for q in c.queue()["data"] if q["id"] == job_id]
    assert entry["reason"] == "retry_backoff" and entry["estimated_start_at"] is not None
    at = open_page(stack, alice, "queue.py")
    (row,) = [r for _, r in at.table[0].value.iterrows() if r["job"] == job_id]
    assert row["priority"] == "normal, retrying"
    assert row["why"].startswith("retrying after exit_nonzero: attempt 2 of 2 starts no earlier than ")
    assert row["est. start"] == views.when(backing_off["retry_at"])
    with stack.client(alice) as c:
        c.cancel(job_id)
    stack.wait_state(job_id, "cancelled")


def reporting_job(release_dir: Path) -> str:
    """A job that reports steps 1, 2 and 3 of ten with a loss, each once the test lets it (the file
    step<N> in release_dir), then sleeps (idle on its GPU) until it is cancelled."""
    code = (
        "import gpuyard, os, time\n"
        "for i in range(1, 4):\n"
        f"    while i > 1 and not os.path.exists(os.path.join({str(release_dir)!r}, f'step{{i - 1}}')):\n"
        "        time.sleep(0.05)\n"
        "    gpuyard.report(step=i, total=10, loss=1.0 / i)\n"
        "    print('step', i, flush=True)\n"
        "time.sleep(600)\n"
    )
    script = release_dir / "report.py"
    script.write_text(code)
    return f"{sys.executable} {script}"


def test_running_shows_progress_output_and_curves_of_the_whole_run(
    stack: Stack, alice: str, release_dir: Path
) -> None:
    with stack.client(alice) as c:
        job_id = c.submit(reporting_job(release_dir), gpus=1, name="reporter", time_limit_s=600)["id"]
    with stack.admin() as c:
        other = c.submit(held_job(release_dir), gpus=1, name="admins-run")["id"]

    def reported(step: int) -> bool:
        return stack.job(job_id)["progress_step"] == step

    wait_for(lambda: reported(1), what="the first progress report")
    for step in (2, 3):
        (release_dir / f"step{step - 1}").touch()
        wait_for(lambda: reported(step), what=f"progress report {step}")  # noqa: B023 - used at once
    with stack.client(alice) as c:
        wait_for(lambda: len(c.job_series(job_id)["gpu"]) >= 2, what="two GPU usage points")
    wait_for(lambda: idle_since(stack, job_id), what="the job's idle flag (it sleeps)")
    at = open_page(stack, alice, "running.py")  # opened after the reports: the series come from the API
    assert_no_exception(at)
    said = texts(at)
    assert f"Job {job_id} · reporter" in said and "ends" in said and "from progress" in said
    assert [p.value for p in at.get("progress")] == [30], "step 3 of 10"
    assert "Other people's running jobs" in said and "admins-run" in said
    assert "step 3" in "\n".join(c.value for c in at.code), "the log tail"
    (curves,) = [c for c in charts(at) if "loss" in c]
    assert list(zip(curves["step"], curves["loss"], strict=True)) == [(s, 1.0 / s) for s in (1.0, 2.0, 3.0)]
    usage = [c for c in charts(at) if "utilization" in c][0]
    assert len(usage) >= 2 and usage["memory"].max() > 0, "its GPU over time, with the memory it holds"
    assert "GPU idle since" in said and "GPU use " in said, "the idle flag, and its use so far"
    run = stack.job(job_id)["tensorboard_run"]
    assert f"TensorBoard run `{run}`" in said and "gpuyard up --tensorboard-port 6006" in said
    button(at, "Cancel").click()
    at.run()
    assert stack.wait_state(job_id, "cancelled")["failure_class"] == "cancelled"
    release(release_dir, other)
    stack.wait_state(other, "succeeded")


def test_gpus_shows_holders_load_idle_jobs_and_outside_processes(stack: Stack, alice: str) -> None:
    stack.fake_state_file.write_text(
        json.dumps({"outside": {"1": [{"pid": 4242, "user": "carol", "used_memory_mib": 1000}]}})
    )
    with stack.admin() as c:
        job_id = c.submit("sleep 600", gpus=1, name="holder")["id"]  # idle on its GPU
        stack.wait_state(job_id, "running")
    try:
        wait_for(lambda: any(g["outside_processes"] for g in stack.admin().gpus()["gpus"]), what="the sample")
        wait_for(lambda: idle_since(stack, job_id), what="the job's idle flag")
        at = open_page(stack, stack.admin_token, "gpus.py")
        said = texts(at)
        assert "1 of 2 GPUs in use by gpuyard jobs; 1 with processes outside gpuyard." in said
        assert f"job {job_id} · holder (you)" in said and "pid 4242 (carol, 1000 MiB)" in said
        (warning,) = [w.value for w in at.warning]
        assert warning.startswith(f"Job {job_id} · holder (you) holds {stack.node} GPU ")
        assert "but has not used it since" in warning and "cancel it" in warning
        table = at.dataframe[0].value
        assert list(table[table["job"].str.startswith(f"job {job_id}")]["idle since"]) != [""]
        wait_for(lambda: fewest_usage_points(stack) >= 2, what="two usage points of each GPU")
        at.run()
        utilization, memory = [c for c in charts(at) if "GPU" in c]
        assert set(utilization["GPU"]) == {f"{stack.node}:0", f"{stack.node}:1"}, "a line per GPU"
        assert memory["percent"].max() > 0, "the job's GPU holds memory"
        theirs = open_page(stack, alice, "gpus.py")  # everyone sees who holds GPUs without using them
        (warning,) = [w.value for w in theirs.warning]
        assert warning.startswith(f"Job {job_id} · holder (") and "but has not used it since" in warning
    finally:
        stack.fake_state_file.write_text("{}")
        with stack.admin() as c:
            c.cancel(job_id)
        stack.wait_state(job_id, "cancelled")


def idle_since(stack: Stack, job_id: int) -> str | None:
    usage = stack.job(job_id)["gpu_usage"]
    return usage["idle_since"] if usage else None


def fewest_usage_points(stack: Stack) -> int:
    """The points of the GPU with the fewest in the last hour's usage series."""
    with stack.admin() as c:
        gpus = c.gpu_usage(minutes=60)["gpus"]
    return min((len(g["points"]) for g in gpus), default=0) if len(gpus) == 2 else 0


def test_history_filters_pages_shows_output_requeues_and_runs_again(stack: Stack, alice: str) -> None:
    with stack.client(alice) as c:
        ids = [c.submit(f"echo out-{i}; exit {i % 2}", name=f"hist-{i}")["id"] for i in range(3)]
    for job_id in ids:
        stack.wait_state(job_id, "succeeded", "failed")
    at = open_page(stack, alice, "history.py")
    assert_no_exception(at)
    rows = at.dataframe[0].value
    assert set(ids) <= set(rows["job"]) and set(rows["owner"]) == {"you"}, "alice sees her own jobs"
    assert at.text_input(key="history.user").disabled
    at.text_input(key="history.name").input("HIST-1")
    button(at, "Apply filters").click()
    at.run()
    assert list(at.dataframe[0].value["job"]) == [ids[1]]
    assert list(at.dataframe[0].value["failure"]) == ["exit_nonzero"]
    assert "out-1" in "\n".join(c.value for c in at.code), "the opened job's output"
    at.multiselect(key="history.states").set_value(["succeeded"])
    button(at, "Apply filters").click()
    at.run()
    assert "No finished job matches these filters." in texts(at)
    at.multiselect(key="history.states").set_value([])
    tomorrow = datetime.now().date() + timedelta(days=1)
    at.date_input(key="history.days").set_value((tomorrow, tomorrow))
    button(at, "Apply filters").click()
    at.run()
    assert "No finished job matches these filters." in texts(at)
    at.date_input(key="history.days").set_value(())
    button(at, "Apply filters").click()
    at.run()
    assert "Attempt 1 of 3. Retried after: a lost machine." in texts(at)
    assert [b.label for b in at.button if b.key and b.key.startswith("history.r")] == ["Requeue"]
    button(at, "Requeue").click()  # failed: the same job goes back in line
    at.run()
    assert_no_exception(at)
    assert not at.error, errors(at)
    assert f"Job {ids[1]} (hist-1) is back in line, with a fresh budget of attempts: attempt 2 of 4" in texts(
        at
    )
    wait_for(lambda: stack.job(ids[1])["attempt"] == 2, what=f"job {ids[1]}'s second attempt")
    stack.wait_state(ids[1], "failed")  # exit 1 again

    at.text_input(key="history.name").input("HIST-0")
    button(at, "Apply filters").click()
    at.run()
    assert [b.label for b in at.button if b.key and b.key.startswith("history.r")] == [
        "Run again (submit a copy as a new job)"
    ], "it succeeded: run again as a copy"
    button(at, "Run again (submit a copy as a new job)").click()
    at.run()
    assert_no_exception(at)
    success = "\n".join(s.value for s in at.success)
    assert not at.error, errors(at)
    assert f"Job {ids[0]} runs again as job" in success
    new_id = int(success.split("runs again as job ")[1].split()[0].rstrip(".,"))
    copy, original = stack.job(new_id), stack.job(ids[0])
    assert copy["user"] == "alice" and copy["command"] == original["command"] and copy["name"] == "hist-0"
    stack.wait_state(new_id, "succeeded")


def test_history_filters_in_the_api(stack: Stack, alice: str) -> None:
    with stack.client(alice) as c:
        c.submit("true", name="Needle-in-hay")
        now = datetime.now(UTC)
        assert [j["name"] for j in c.jobs(name="needle")["data"]] == ["Needle-in-hay"]
        assert c.jobs(name="needle", submitted_after=now + timedelta(minutes=1))["data"] == []
        assert len(c.jobs(name="needle", submitted_before=now + timedelta(minutes=1))["data"]) == 1
        assert c.jobs(name="50%_")["data"] == [], "LIKE wildcards match themselves"


def dead_job(stack: Stack, token: str, name: str) -> tuple[int, int]:
    """A job that fails at once, having asked for that failure to be retried but with one attempt only: it
    is dead-lettered. Its id, and its dead letter's."""
    with stack.client(token) as c:
        command = f"echo last words of {name}; exit 3"
        job_id = c.submit(command, name=name, retry_on=["exit_nonzero"], max_attempts=1)["id"]
        stack.wait_state(job_id, "failed")
        (dead,) = wait_for(
            lambda: [d for d in c.dead_letters() if d["job_id"] == job_id], what=f"job {job_id}'s dead letter"
        )
    return job_id, int(dead["id"])


def test_dead_letters_say_why_show_the_output_and_requeue(stack: Stack, alice: str) -> None:
    job_id, dead_id = dead_job(stack, alice, "doomed")
    admins_job, admins_dead = dead_job(stack, stack.admin_token, "admins-doomed")
    admins_page = open_page(stack, stack.admin_token, "dead.py")
    said = texts(admins_page)
    assert "wait for a decision" in said and {job_id, admins_job} <= set(
        admins_page.dataframe[0].value["job"]
    )
    (opened,) = [e for e in admins_page.expander if e.label.startswith(f"Dead letter {dead_id} ")]
    assert opened.label.startswith(f"Dead letter {dead_id} · job {job_id} (alice) · exit_nonzero, 1 attempt")
    assert "last words of doomed" in opened.code[0].value
    (why,) = [m.value for m in opened.markdown]
    reason = f"Job {job_id} failed: exit_nonzero on each of its 1 attempt(s), and it may not try again."
    assert why == f"**Why:** {reason}"

    at = open_page(stack, alice, "dead.py")
    assert list(at.dataframe[0].value["job"]) == [job_id], "alice sees her own jobs' dead letters"
    button(at, "Requeue").click()
    at.run()
    assert_no_exception(at)
    assert f"Dead letter {dead_id}: job {job_id} is back in line" in texts(at)
    wait_for(lambda: stack.job(job_id)["attempt"] == 2, what=f"job {job_id}'s second attempt")
    stack.wait_state(job_id, "failed")  # it fails again: a new dead letter
    at.checkbox(key="dead.include_requeued").check().run()
    assert dead_id in set(at.dataframe[0].value["id"]), "the requeued one, when asked for"

    with stack.admin() as c:  # someone requeues it while the admin's page still offers to
        c.requeue_dead(admins_dead)
    admins_page.button(key=f"dead.requeue.{admins_dead}").click()
    admins_page.run()
    assert_no_exception(admins_page)
    said = errors(admins_page)
    assert (
        f"Could not requeue dead letter {admins_dead}. Dead letter {admins_dead} was requeued already" in said
    )
    wait_for(lambda: stack.job(admins_job)["attempt"] == 2, what=f"job {admins_job}'s second attempt")
    stack.wait_state(admins_job, "failed")
