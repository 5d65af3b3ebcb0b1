"""Processes die and come back; jobs are neither lost nor run twice.

A worker stopped or killed leaves its jobs running under their supervisors: the next worker on the node
picks them up, or reports how they ended while it was away. A worker that stays away is fenced by its
supervisors before the controller's lease runs out, and its jobs run again elsewhere. Drain lets the
running jobs finish and takes no new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, release, running_stack, wait_for

pytestmark = pytest.mark.integration

LEASE_S = 6  # the worker's supervisors fence after max(6 - 1 - 5, 6 / 2) = 3 s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    env = {
        "GPUYARD_STOP_JOBS_ON_EXIT": "false",
        "GPUYARD_NODE_LEASE_S": str(LEASE_S),
        "GPUYARD_RETRY_BACKOFF_S": "0.2",
        "GPUYARD_HEARTBEAT_INTERVAL_S": "0.5",
    }
    with running_stack(tmp_path_factory.mktemp("restarts"), amqp_url, extra_env=env) as s:
        yield s


def logged_job(log: Path, release_dir: Path) -> str:
    """Appends `start <attempt> <t>` and `end <attempt> <t>` to a shared log, waits for its release file."""
    return (
        f'echo "start $GPUYARD_ATTEMPT $(date +%s.%N)" >> {log}; echo "running"; '
        f"while [ ! -e {release_dir}/$GPUYARD_JOB_ID ]; do sleep 0.05; done; "
        f'echo "end $GPUYARD_ATTEMPT $(date +%s.%N)" >> {log}; echo "done"'
    )


def supervised_pids(stack: Stack, job_id: int, attempt: int) -> tuple[int, int]:
    state = stack.data_dir / "jobs" / str(job_id) / f".attempt-{attempt}"
    job = json.loads((state / "job.json").read_text())
    supervisor = json.loads((state / "supervisor.json").read_text())
    return int(supervisor["pid"]), int(job["pid"])


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def restart_worker(stack: Stack, *, sig: int) -> None:
    stack.stop_process("worker", sig=sig)
    stack.start_process("worker")


def test_a_job_survives_a_worker_restart_and_is_followed_again(stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    with stack.admin() as admin:
        job = admin.submit(logged_job(log, tmp_path), name="survivor")
        stack.wait_state(job["id"], "running")
        wait_for(lambda: "running" in admin.logs(job["id"])["data"], what="its first output")
        supervisor, pid = supervised_pids(stack, job["id"], 1)

        restart_worker(stack, sig=signal.SIGTERM)  # a graceful stop leaves the job running
        assert running(pid) and running(supervisor)
        wait_for(lambda: f"job {job['id']} attempt 1: resumed" in stack.log("worker"), what="the reattach")
        release(tmp_path, job["id"])
        done = stack.wait_state(job["id"], "succeeded")
        assert done["attempt"] == 1 and done["exit_code"] == 0
        assert admin.logs(job["id"])["data"] == "running\ndone\n"  # nothing lost, nothing twice
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["start", "1"], ["end", "1"]]


def test_a_job_that_ends_while_its_worker_is_dead_is_reported_with_its_exit_code(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.admin() as admin:
        job = admin.submit(
            f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done; echo bye; exit 5", name="orphan"
        )
        stack.wait_state(job["id"], "running")
        stack.stop_process("worker", sig=signal.SIGKILL)
        (tmp_path / "go").touch()
        _, pid = supervised_pids(stack, job["id"], 1)
        wait_for(lambda: not running(pid), what="the job to end on its own")
        stack.start_process("worker")
        failed = stack.wait_state(job["id"], "failed")
        assert (
            failed["exit_code"] == 5 and failed["failure_class"] == "exit_nonzero" and failed["attempt"] == 1
        )
        assert admin.logs(job["id"])["data"] == "bye\n"


def test_a_redelivered_dispatch_never_starts_an_attempt_twice(stack: Stack, tmp_path: Path) -> None:
    """A worker killed between starting a job and acking its dispatch gets the dispatch again."""
    log = tmp_path / "attempts.log"
    with stack.admin() as admin:
        job = admin.submit(logged_job(log, tmp_path), name="once")
        stack.wait_state(job["id"], "running")
        restart_worker(stack, sig=signal.SIGKILL)
        wait_for(lambda: f"job {job['id']} attempt 1: resumed" in stack.log("worker"), what="the reattach")
        release(tmp_path, job["id"])
        assert stack.wait_state(job["id"], "succeeded")["attempt"] == 1
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "end"]


def test_a_worker_gone_for_good_is_fenced_and_its_job_runs_again_elsewhere(
    stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "attempts.log"
    with stack.admin() as admin:
        job = admin.submit(logged_job(log, tmp_path), name="moved")
        stack.wait_state(job["id"], "running")
        supervisor, pid = supervised_pids(stack, job["id"], 1)
        stack.stop_process("worker", sig=signal.SIGKILL)
        wait_for(lambda: not running(pid), timeout_s=LEASE_S, what="its supervisor to fence the job")

        other = f"{stack.node}-b"
        stack.nodes.add(other)
        stack.start_process("worker", name="worker-b", env={"GPUYARD_NODE_NAME": other})
        moved = wait_for(
            lambda: (j := stack.job(job["id"]))["attempt"] == 2 and j["state"] == "running" and j,
            timeout_s=LEASE_S + 30,
            what="the job to run again on the other node",
        )
        assert moved["node"] == other
        attempts = stack.job(job["id"])["attempts"]
        assert attempts[0]["failure_class"] == "node_lost" and attempts[0]["ended_at"] is not None
        release(tmp_path, job["id"])
        assert stack.wait_state(job["id"], "succeeded")["attempt"] == 2
        stack.stop_process("worker-b")
        stack.start_process("worker")
    starts = [line.split() for line in log.read_text().splitlines()]
    assert [s[:2] for s in starts] == [["start", "1"], ["start", "2"], ["end", "2"]]  # 1 was killed
    assert not running(supervisor)


def test_drain_lets_running_jobs_finish_takes_no_new_one_and_exits(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as admin:
        first = admin.submit(f"while [ ! -e {tmp_path}/$GPUYARD_JOB_ID ]; do sleep 0.05; done", name="a")
        stack.wait_state(first["id"], "running")
        drain = subprocess.run(
            [sys.executable, "-m", "gpuyard", "worker", "drain", "--no-wait"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert drain.returncode == 0 and "is draining" in drain.stderr
        wait_for(lambda: "draining: no new jobs" in stack.log("worker"), what="the worker to drain")
        second = admin.submit("echo second", name="b")
        time.sleep(1)  # a pass or two: the second job must stay in line, not start on the draining node
        assert stack.job(second["id"])["state"] == "queued"
        assert stack.procs["worker"].poll() is None  # still running its job
        release(tmp_path, first["id"])
        assert stack.wait_state(first["id"], "succeeded")
        assert stack.procs["worker"].wait(timeout=30) == 0
        assert stack.job(second["id"])["state"] == "queued"
        stack.start_process("worker")
        assert stack.wait_state(second["id"], "succeeded")
