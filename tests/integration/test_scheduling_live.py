"""The core scenarios on real processes: a controller, a worker with 4 fake GPUs, a real RabbitMQ,
SQLite, and job processes that wait for a release file so the test decides when each one ends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.stack import Stack, held_job, release, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str):  # type: ignore[no-untyped-def]
    with running_stack(tmp_path_factory.mktemp("stack"), amqp_url) as s:
        yield s


def running_ids(stack: Stack) -> set[int]:
    with stack.admin() as c:
        return {j["id"] for j in c.jobs(states=["running"], limit=500)["data"]}


def assert_no_gpu_shared(stack: Stack) -> None:
    with stack.admin() as c:
        active = c.jobs(states=["dispatched", "running"], limit=500)["data"]
    used = [(j["node"], i) for j in active for i in j["gpu_indices"] or []]
    assert len(used) == len(set(used)), f"a GPU runs two jobs: {active}"


def test_six_one_gpu_jobs_on_four_gpus(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as c:
        ids = [c.submit(held_job(tmp_path), gpus=1, name=f"j{i}")["id"] for i in range(6)]
        wait_for(lambda: running_ids(stack) >= set(ids[:4]), what="the first four jobs to run")
        assert_no_gpu_shared(stack)
        queue = c.queue()["data"]
        assert [q["id"] for q in queue] == ids[4:]
        assert [q["position"] for q in queue] == [1, 2]
        assert all(q["reason"] == "gpus_busy" and q["estimated_start_at"] for q in queue)

        release(tmp_path, ids[1])
        stack.wait_state(ids[1], "succeeded")
        wait_for(lambda: ids[4] in running_ids(stack), what="job 5 to take the freed GPU")
        assert stack.job(ids[5])["state"] == "queued", "job 6 must wait: only one GPU freed"
        assert_no_gpu_shared(stack)

        release(tmp_path, *ids)
        for job_id in ids:
            job = stack.wait_state(job_id, "succeeded")
            (attempt,) = job["attempts"]
            log = c.logs(job_id)["data"]
            visible = re.search(r"CVD=(\S*)", log)
            assert visible is not None, log
            assert visible.group(1) == ",".join(map(str, attempt["gpu_indices"]))
            assert len(attempt["gpu_indices"]) == 1 and attempt["exit_code"] == 0
        starts = [stack.job(i)["attempts"][0]["dispatched_at"] for i in ids]
        assert starts[4] <= starts[5], "waiting jobs start in submission order"


def test_four_gpu_job_waits_for_all_four_and_is_not_overtaken(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as c:
        blocker = c.submit(held_job(tmp_path), gpus=1, name="blocker")["id"]
        stack.wait_state(blocker, "running")
        big = c.submit(held_job(tmp_path), gpus=4, name="big")
        assert big["state"] == "queued" and big["position"] == 1
        assert big["reason"] == "gpus_busy"
        small = c.submit(held_job(tmp_path), gpus=1, name="small")
        assert small["state"] == "queued", "a later 1-GPU job must not overtake the waiting 4-GPU job"
        assert small["reason"] == "behind_earlier_jobs"

        release(tmp_path, blocker)
        job = stack.wait_state(big["id"], "running")
        assert sorted(job["attempts"][0]["gpu_indices"]) == [0, 1, 2, 3]
        assert stack.job(small["id"])["state"] == "queued"
        wait_for(lambda: "CVD=0,1,2,3" in c.logs(big["id"])["data"], what="the 4-GPU job's output")
        release(tmp_path, big["id"], small["id"])
        stack.wait_state(small["id"], "succeeded")


def test_cancel_waiting_and_running_jobs(stack: Stack, tmp_path: Path) -> None:
    stubborn = "trap '' TERM; echo started; while true; do sleep 0.05; done"
    with stack.admin() as c:
        running = c.submit(stubborn, gpus=4, name="stubborn")["id"]
        stack.wait_state(running, "running")
        wait_for(lambda: "started" in c.logs(running)["data"], what="the job's first output")
        waiting = c.submit(held_job(tmp_path), gpus=1, name="waiting")["id"]
        assert c.cancel(waiting)["state"] == "cancelled"
        assert c.cancel(running)["cancel_requested"] is True
        job = stack.wait_state(running, "cancelled", timeout_s=20)
        assert job["failure_class"] == "cancelled"
        assert job["attempts"][0]["signal"] == 9, "SIGTERM was ignored, so SIGKILL after the grace period"
        assert stack.job(waiting)["attempt"] == 0, "a job cancelled while waiting never runs"


def test_time_limit_failures_and_launch_errors(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as c:
        slow = c.submit("sleep 30", gpus=1, time_limit_s=1, name="slow")["id"]
        failing = c.submit("echo boom >&2; exit 3", gpus=1, name="failing")["id"]
        oom = c.submit("echo 'RuntimeError: CUDA out of memory. Tried to allocate 2 GiB'; exit 1", gpus=1)[
            "id"
        ]
        no_dir = c.submit(["true"], gpus=1, workdir=str(tmp_path / "missing"))["id"]
        no_prog = c.submit(["/no/such/program"], gpus=1)["id"]

        job = stack.wait_state(slow, "timed_out")
        assert job["failure_class"] == "timeout" and "time limit" in job["error"]
        job = stack.wait_state(failing, "failed")
        assert (job["exit_code"], job["failure_class"]) == (3, "exit_nonzero")
        assert "boom" in c.logs(failing)["data"]
        assert stack.wait_state(oom, "failed")["failure_class"] == "oom"
        job = stack.wait_state(no_dir, "failed")
        assert job["failure_class"] == "launch_error" and "does not exist" in job["error"]
        job = stack.wait_state(no_prog, "failed")
        assert job["failure_class"] == "launch_error" and "not found" in job["error"]
        assert "could not start" in c.logs(no_prog)["data"]


def test_gpu_held_outside_gpuyard_is_not_used(stack: Stack, tmp_path: Path) -> None:
    import json
    import os

    state = {"outside": {"0": [{"pid": 999999, "user": "bob", "used_memory_mib": 2000}]}}
    tmp = stack.fake_state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, stack.fake_state_file)
    try:
        with stack.admin() as c:
            wait_for(lambda: c.gpus()["gpus"][0]["outside_processes"], what="GPU 0's outside process")
            assert c.gpus()["gpus"][0]["outside_processes"][0]["user"] == "bob"
            ids = [c.submit(held_job(tmp_path), gpus=1)["id"] for _ in range(3)]
            for job_id in ids:
                stack.wait_state(job_id, "running")
            used = {i for job_id in ids for i in stack.job(job_id)["attempts"][0]["gpu_indices"]}
            assert used == {1, 2, 3}
            four = c.submit(held_job(tmp_path), gpus=4)
            assert four["reason"] == "gpu_held_outside", four
            c.cancel(four["id"])
            release(tmp_path, *ids)
            for job_id in ids:
                stack.wait_state(job_id, "succeeded")
    finally:
        stack.fake_state_file.unlink()
