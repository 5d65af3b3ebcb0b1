"""Preemptible jobs on the controller: a preemption asked for by a scheduling pass is recorded once and its
stop queued to the node; how the stopped attempt ends decides what follows (back in its place, uncounted;
a success; a cancel). Then the API and the command line, and the whole path on real services.

The service tests drive the controller's own parts with a real SQLite file, feeding them the messages a
worker would send; no node queue is consumed, so the stops stay in the outbox, where the test reads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from gpuyard.adapters.broker.messages import Finished, GpuSample, Heartbeat, Started
from gpuyard.adapters.db import dead_repo, jobs_repo, repo
from gpuyard.adapters.db.migrate import migrate
from gpuyard.domain.jobs import make_spec
from gpuyard.entrypoints.api.controller import Controller
from gpuyard.scheduling.model import Preemption
from gpuyard.services.auth import User
from gpuyard.settings import Settings
from tests.support.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

NODE = "box"
GRACE_S = 7.0


class Scene:
    """A controller with one 4-GPU node, and the events its worker would send."""

    def __init__(self, controller: Controller, user: User) -> None:
        self.ctl = controller
        self.user = user

    async def heartbeat(self) -> None:
        gpus = [
            GpuSample(index=i, uuid=f"GPU-{i}", name="fake", memory_total_mib=24000, memory_used_mib=0)
            for i in range(4)
        ]
        beat = Heartbeat(node=NODE, backend="fake", gpus=gpus, at=datetime.now(UTC))
        await self.ctl.events.handle(beat.model_dump(mode="json"))

    async def running(self, *, preemptible: bool = True, max_attempts: int = 3) -> int:
        """A job that runs (attempt 1)."""
        spec = make_spec(command=["train"], gpus=1, preemptible=preemptible, max_attempts=max_attempts)
        job, _ = await self.ctl.jobs.submit(self.user, spec)
        await self.start(job["id"])
        return int(job["id"])

    async def start(self, job_id: int) -> int:
        """Its next attempt placed by a pass and started; returns the attempt's number."""
        await self.ctl.scheduler.run_pass()
        job = await self.job(job_id)
        assert job["state"] == "dispatched", job
        started = Started(job_id=job_id, attempt=job["attempt"], node=NODE, pid=4242, at=datetime.now(UTC))
        await self.ctl.events.handle(started.model_dump(mode="json"))
        return int(job["attempt"])

    async def preempt(self, job_id: int) -> int:
        return await self.ctl.scheduler.preempt([Preemption(job_id, for_job_id=999)], now=self.ctl.clock())

    async def end(self, job_id: int, outcome: str, failure: str | None, *, exit_code: int | None) -> None:
        job = await self.job(job_id)
        finished = Finished(
            job_id=job_id,
            attempt=job["attempt"],
            node=NODE,
            outcome=outcome,
            failure_class=failure,
            exit_code=exit_code,
            at=datetime.now(UTC),
        )
        await self.ctl.events.handle(finished.model_dump(mode="json"))

    async def job(self, job_id: int) -> dict[str, Any]:
        return await self.ctl.jobs.get(self.user, job_id, with_attempts=True)

    async def stops(self) -> list[dict[str, Any]]:
        """The stops queued to the node (cancels and preemptions), oldest first."""
        async with self.ctl.db.read() as conn:
            rows = await repo.unpublished_outbox(conn)
        return [r["body"] for r in rows if r["body"]["type"] == "cancel"]


@pytest.fixture
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    settings = Settings(data_dir=tmp_path, instance="preempt-test", preempt_grace_s=GRACE_S)
    controller = Controller(settings)
    await migrate(controller.db)
    try:
        user, _ = await controller.auth.add_user("erin", is_admin=False)
        s = Scene(controller, user)
        await s.heartbeat()
        yield s
    finally:
        await controller.db.dispose()


async def test_a_preemption_is_recorded_once_and_stops_the_attempt_with_the_preemption_grace(
    scene: Scene,
) -> None:
    job_id = await scene.running()
    assert await scene.preempt(job_id) == 1
    assert await scene.preempt(job_id) == 0, "asked for already: not again"
    job = await scene.job(job_id)
    assert job["state"] == "running" and job["preempt_requested_at"] is not None
    (stop,) = await scene.stops()
    assert stop == {
        "type": "cancel",
        "job_id": job_id,
        "attempt": 1,
        "reason": "preempted",
        "grace_s": GRACE_S,
    }


async def test_only_a_running_preemptible_job_that_is_not_being_stopped_is_preempted(scene: Scene) -> None:
    plain = await scene.running(preemptible=False)
    cancelled = await scene.running()
    await scene.ctl.jobs.cancel(scene.user, cancelled)
    waiting, _ = await scene.ctl.jobs.submit(scene.user, make_spec(command=["x"], gpus=4, preemptible=True))
    for job_id in (plain, cancelled, waiting["id"], 12345):
        assert await scene.preempt(job_id) == 0, job_id
    assert [s["reason"] for s in await scene.stops()] == ["cancelled"]


async def test_a_preempted_job_goes_back_to_its_place_uncounted_and_runs_again(scene: Scene) -> None:
    job_id = await scene.running(max_attempts=1)
    behind, _ = await scene.ctl.jobs.submit(scene.user, make_spec(command=["x"], gpus=4))
    await scene.preempt(job_id)
    await scene.end(job_id, "failed", "preempted", exit_code=143)

    job = await scene.job(job_id)
    assert (job["state"], job["attempt"], job["preemptions"]) == ("queued", 1, 1)
    assert job["preempt_requested_at"] is None and job["retry_at"] is None, "back at once, no backoff"
    assert job["failure_class"] == "preempted"
    assert [a["failure_class"] for a in job["attempts"]] == ["preempted"]
    async with scene.ctl.db.read() as conn:
        pending = [r["id"] for r in await jobs_repo.pending_jobs(conn)]
        assert pending == [job_id, behind["id"]], "it keeps its place: ahead of a later job"
        assert await dead_repo.counted_attempts(conn, job_id) == 0
        assert await dead_repo.list_open(conn, user_id=None, include_requeued=True, limit=10) == []
    assert b"gpuyard_preemptions_total 1.0" in generate_latest(scene.ctl.metrics.registry)

    # Preempted again, with max_attempts 1: a preemption never uses the job's attempts up.
    assert await scene.start(job_id) == 2
    await scene.preempt(job_id)
    await scene.end(job_id, "failed", "exit_nonzero", exit_code=1)  # it exited 1 on the SIGTERM
    assert (await scene.job(job_id))["state"] == "queued"
    assert await scene.start(job_id) == 3
    await scene.end(job_id, "succeeded", None, exit_code=0)
    job = await scene.job(job_id)
    assert (job["state"], job["attempt"], job["preemptions"]) == ("succeeded", 3, 2)
    assert [a["failure_class"] for a in job["attempts"]] == ["preempted", "preempted", None]


async def test_a_job_that_succeeds_before_its_stop_takes_effect_has_succeeded(scene: Scene) -> None:
    job_id = await scene.running()
    await scene.preempt(job_id)
    await scene.end(job_id, "succeeded", None, exit_code=0)
    job = await scene.job(job_id)
    assert (job["state"], job["preemptions"], job["failure_class"]) == ("succeeded", 0, None)
    assert job["preempt_requested_at"] is None


async def test_a_cancel_while_a_preemption_is_pending_ends_the_job_cancelled(scene: Scene) -> None:
    job_id = await scene.running()
    await scene.preempt(job_id)
    job = await scene.ctl.jobs.cancel(scene.user, job_id)
    assert job["state"] == "running" and job["cancel_requested_at"] is not None
    assert [(s["reason"], s["grace_s"]) for s in await scene.stops()] == [
        ("preempted", GRACE_S),
        ("cancelled", None),
    ]
    # The supervisor had stopped it for the preemption already, so the worker reports that.
    await scene.end(job_id, "failed", "preempted", exit_code=None)
    job = await scene.job(job_id)
    assert (job["state"], job["failure_class"], job["preemptions"]) == ("cancelled", "cancelled", 0)
    assert [a["failure_class"] for a in job["attempts"]] == ["cancelled"]


async def test_a_time_limit_that_ends_a_job_being_preempted_still_ends_it(scene: Scene) -> None:
    job_id = await scene.running()
    await scene.preempt(job_id)
    await scene.end(job_id, "timed_out", "timeout", exit_code=None)
    job = await scene.job(job_id)
    assert (job["state"], job["failure_class"], job["preemptions"]) == ("timed_out", "timeout", 0)


# The API, the command line and the whole path, on real services.


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    env = {"GPUYARD_PREEMPT_GRACE_S": "2", "GPUYARD_PREEMPT_MIN_RUN_S": "0"}
    with running_stack(tmp_path_factory.mktemp("preempt"), amqp_url, extra_env=env) as s:
        yield s


def gpuyard(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")}
    env.update(GPUYARD_URL=stack.url, GPUYARD_TOKEN=stack.admin_token)
    return subprocess.run(
        [sys.executable, "-m", "gpuyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_preemptible_submission_round_trips_through_the_api(stack: Stack) -> None:
    with stack.admin() as admin:
        job = admin.submit(["true"], gpus=1, preemptible=True)
        assert (job["preemptible"], job["preemptions"], job["preempting"]) == (True, 0, False)
        done = stack.wait_state(job["id"], "succeeded")
        assert (done["preemptible"], done["preemptions"]) == (True, 0)
        assert admin.submit(["true"], gpus=1)["preemptible"] is False, "not unless asked"
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    body = {"command": ["true"], "preemptible": "maybe"}
    response = httpx.post(stack.url + "/api/v1/jobs", json=body, headers=headers, timeout=10)
    assert response.status_code == 422 and "preemptible" in response.text


def test_gpuyard_submit_preemptible_and_show(stack: Stack, tmp_path: Path) -> None:
    result = gpuyard(stack, "submit", "--preemptible", "--json", "-C", str(tmp_path), "--", "true")
    assert result.returncode == 0, result.stderr
    job_id = int(json.loads(result.stdout)["id"])
    assert stack.wait_state(job_id, "succeeded")["preemptible"] is True
    shown = gpuyard(stack, "show", str(job_id))
    assert shown.returncode == 0 and "preemptible: yes, preempted 0 time(s)" in shown.stdout


PREEMPTIBLE_JOB = (
    'if [ "$GPUYARD_ATTEMPT" = 1 ]; then trap "echo stopping; exit 143" TERM; '
    "while true; do sleep 0.1; done; fi; echo attempt $GPUYARD_ATTEMPT done"
)


def test_a_head_job_preempts_a_preemptible_job_that_then_runs_again(stack: Stack) -> None:
    """A holds 3 GPUs; H (4 GPUs) waits for it; P (1 GPU, preemptible, no time limit) starts at once on the
    free GPU. When A ends, H takes P's GPU: P is stopped and waits again in its place; once H is done, P
    runs its second attempt, which ends at once."""
    with stack.admin() as admin:
        a = admin.submit(["sleep", "6"], gpus=3, time_limit_s=60, name="A")["id"]
        stack.wait_state(a, "running")
        h = admin.submit(["sleep", "1"], gpus=4, time_limit_s=60, name="H")["id"]
        p = admin.submit(PREEMPTIBLE_JOB, gpus=1, preemptible=True, name="P")["id"]
        try:
            stack.wait_state(p, "running", timeout_s=5)
            assert admin.job(h)["state"] == "queued", "P started at once, in the gap before H"

            wait_for(lambda: admin.job(p)["preemptions"] == 1, timeout_s=30, what="P to be preempted")
            stack.wait_state(h, "running", "succeeded", timeout_s=30)
            done = stack.wait_state(p, "succeeded", timeout_s=60)
            assert (done["attempt"], done["preemptions"]) == (2, 1)
            assert [x["failure_class"] for x in done["attempts"]] == ["preempted", None]
            assert "stopping" in admin.logs(p, attempt=1)["data"], "it got SIGTERM"
            assert "attempt 2 done" in admin.logs(p, attempt=2)["data"]
            assert stack.wait_state(h, "succeeded")["attempt"] == 1
            assert stack.wait_state(a, "succeeded")["attempt"] == 1
        finally:
            for job_id in (a, h, p):
                if admin.job(job_id)["state"] not in ("succeeded", "failed", "cancelled", "timed_out"):
                    admin.cancel(job_id)
            for job_id in (a, h, p):
                stack.wait_state(job_id, "succeeded", "cancelled", "failed", "timed_out")
