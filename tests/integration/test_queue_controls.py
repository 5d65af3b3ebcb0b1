"""Queue controls on the real controller: hold, release and change the priority of a waiting job; who may
do it; the urgent priority for admins; where a waiting job stands (`GET /jobs/{id}/wait`, `gpuyard why`);
the per-user limit of waiting jobs. The worker has 4 fake GPUs and the jobs run until the test releases
them, so the test decides when GPUs free."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuyard.adapters.db.migrate import migrate
from gpuyard.client import ApiError, Client
from gpuyard.domain.errors import QuotaExceeded
from gpuyard.domain.jobs import make_spec
from gpuyard.entrypoints.api.controller import Controller
from gpuyard.services.auth import User
from gpuyard.services.jobs import JobService
from gpuyard.settings import Settings
from tests.support.stack import Stack, held_job, running_stack

pytestmark = pytest.mark.integration

SOURCES = {"progress", "time_limit", "history", "default"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str):  # type: ignore[no-untyped-def]
    with running_stack(tmp_path_factory.mktemp("queue"), amqp_url) as s:
        yield s


class Scene:
    """Jobs of one test: submitted through a client, ended by the test, and all cleaned up at the end
    (waiting ones cancelled, running ones released), so the next test finds 4 free GPUs."""

    def __init__(self, stack: Stack, release_dir: Path) -> None:
        self.stack = stack
        self.release_dir = release_dir
        self.ids: list[int] = []

    def submit(self, client: Client, **kwargs: Any) -> dict[str, Any]:
        job = client.submit(held_job(self.release_dir), **kwargs)
        self.ids.append(job["id"])
        return job

    def fill_gpus(self, client: Client) -> list[int]:
        """Four 1-GPU jobs, all running: every GPU is busy until the test ends one."""
        ids = [self.submit(client, gpus=1, name=f"blocker{i}")["id"] for i in range(4)]
        for job_id in ids:
            self.stack.wait_state(job_id, "running")
        return ids

    def end(self, *job_ids: int) -> None:
        for job_id in job_ids:
            (self.release_dir / str(job_id)).touch()
        for job_id in job_ids:
            self.stack.wait_state(job_id, "succeeded")

    def close(self) -> None:
        with self.stack.admin() as c:
            for job_id in self.ids:
                if c.job(job_id)["state"] == "queued":
                    try:
                        c.cancel(job_id)
                    except ApiError:
                        pass  # it started meanwhile: released below
                (self.release_dir / str(job_id)).touch()
        for job_id in self.ids:
            self.stack.wait_state(job_id, "succeeded", "cancelled")


@pytest.fixture
def scene(stack: Stack, tmp_path: Path) -> Iterator[Scene]:
    s = Scene(stack, tmp_path)
    try:
        yield s
    finally:
        s.close()


def queue_ids(client: Client) -> list[int]:
    return [q["id"] for q in client.queue()["data"]]


def assert_in_band(wait: dict[str, Any]) -> None:
    """The estimated start lies in its band (times compared as times, not as strings)."""
    early, start, late = (
        datetime.fromisoformat(wait[k].replace("Z", "+00:00"))
        for k in ("estimated_start_earliest_at", "estimated_start_at", "estimated_start_latest_at")
    )
    assert early <= start <= late, wait


def api_error(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_hold_and_release_mark_a_waiting_job_that_keeps_its_place(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a:
        scene.fill_gpus(a)
        first, second = (scene.submit(a, gpus=1, name=n)["id"] for n in ("first", "second"))

        held = a.hold(first)
        assert held["held"] is True and held["state"] == "queued"
        assert a.hold(first)["held"] is True, "holding a held job again changes nothing and is no error"
        assert a.job(first)["held"] is True
        entries = {q["id"]: q for q in a.queue()["data"]}
        assert entries[first]["held"] is True and entries[second]["held"] is False
        assert queue_ids(a).index(first) < queue_ids(a).index(second), "a held job keeps its place"

        released = a.release(first)
        assert released["held"] is False and released["state"] == "queued"
        assert a.release(first)["held"] is False, "releasing a job that is not held changes nothing"
        assert queue_ids(a)[:2] == [first, second]


def test_a_held_job_does_not_start_but_the_one_behind_it_does(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a:
        blockers = scene.fill_gpus(a)
        first, second = (scene.submit(a, gpus=1, name=n)["id"] for n in ("first", "second"))
        a.hold(first)

        scene.end(blockers[0])
        scene.stack.wait_state(second, "running", timeout_s=10)
        assert a.job(first)["state"] == "queued", "a held job does not start when a GPU frees"
        assert queue_ids(a) == [first]

        a.release(first)
        assert a.job(first)["state"] == "queued", "released, it still waits for a GPU"
        scene.end(blockers[1])
        scene.stack.wait_state(first, "running", timeout_s=10)


def test_raising_the_priority_of_a_waiting_job_moves_it_ahead(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a:
        blockers = scene.fill_gpus(a)
        first, second = (scene.submit(a, gpus=1, name=n)["id"] for n in ("first", "second"))
        assert queue_ids(a) == [first, second]

        job = a.set_priority(second, "high")
        assert job["priority"] == "high" and job["state"] == "queued"
        assert queue_ids(a) == [second, first]
        assert [q["position"] for q in a.queue()["data"]] == [1, 2]

        scene.end(blockers[0])
        scene.stack.wait_state(second, "running")
        assert a.job(first)["state"] == "queued"

        a.set_priority(first, "low")
        assert a.job(first)["priority"] == "low"


def test_only_admins_may_use_the_urgent_priority(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a, scene.stack.admin() as admin:
        scene.fill_gpus(admin)
        mine = scene.submit(a, gpus=1, name="mine")["id"]

        error = api_error(lambda: a.submit(["true"], gpus=1, priority="urgent"))
        assert error.status == 403 and error.code == "permission_denied"
        assert "Only admins may use the urgent priority" in error.detail and "use high" in error.detail
        error = api_error(lambda: a.set_priority(mine, "urgent"))
        assert error.status == 403 and "Only admins may use the urgent priority" in error.detail
        assert a.job(mine)["priority"] == "normal", "a refused change changes nothing"
        error = api_error(lambda: a.set_priority(mine, "asap"))
        assert error.status == 422 and "Unknown priority" in error.detail

        assert admin.set_priority(mine, "urgent")["priority"] == "urgent"
        assert a.set_priority(mine, "high")["priority"] == "high", "its owner may lower it again"
        urgent = scene.submit(admin, gpus=1, priority="urgent", name="admins")
        assert urgent["priority"] == "urgent" and urgent["position"] == 1


def test_only_the_owner_or_an_admin_may_hold_release_or_reprioritize(
    scene: Scene, alice: str, bob: str
) -> None:
    with scene.stack.client(alice) as a, scene.stack.client(bob) as b, scene.stack.admin() as admin:
        scene.fill_gpus(admin)
        job_id = scene.submit(a, gpus=1, name="alices")["id"]
        for call, action in [
            (lambda: b.hold(job_id), "hold it"),
            (lambda: b.release(job_id), "release it"),
            (lambda: b.set_priority(job_id, "high"), "change its priority"),
        ]:
            error = api_error(call)
            assert error.status == 403 and error.code == "permission_denied"
            assert "belongs to alice" in error.detail and action in error.detail
        job = a.job(job_id)
        assert (job["held"], job["priority"]) == (False, "normal")

        assert admin.hold(job_id)["held"] is True
        assert admin.release(job_id)["held"] is False
        assert admin.set_priority(job_id, "low")["priority"] == "low"
        assert a.hold(job_id)["held"] is True
        assert a.release(job_id)["held"] is False


def test_a_job_that_is_not_waiting_cannot_be_held_released_or_reprioritized(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a:
        running = scene.submit(a, gpus=1, name="running")["id"]
        scene.stack.wait_state(running, "running")
        done = a.submit(["true"], gpus=1, name="done")["id"]
        scene.stack.wait_state(done, "succeeded")
        for job_id, state in [(running, "running"), (done, "succeeded")]:
            for call in (
                partial(a.hold, job_id),
                partial(a.release, job_id),
                partial(a.set_priority, job_id, "high"),
            ):
                error = api_error(call)
                assert error.status == 409 and error.code == "invalid_transition"
                assert f"Job {job_id}" in error.detail and state in error.detail
                assert "only a waiting job" in error.detail
        job = a.job(running)
        assert (job["state"], job["held"], job["priority"]) == ("running", False, "normal")
        assert api_error(lambda: a.hold(999999)).status == 404


def test_where_a_waiting_job_stands_and_why(scene: Scene, alice: str, bob: str) -> None:
    with scene.stack.client(alice) as a, scene.stack.client(bob) as b:
        blockers = scene.fill_gpus(a)
        first = scene.submit(a, gpus=1, name="first", time_limit_s=600)
        second = scene.submit(a, gpus=2, name="second", time_limit_s=600)
        for submitted in (first, second):
            assert submitted["source"] in SOURCES and isinstance(submitted["backfill"], bool)
            assert_in_band(submitted)

        wait = a.wait(second["id"])
        assert (wait["id"], wait["user"], wait["gpus"], wait["held"]) == (second["id"], "alice", 2, False)
        assert wait["position"] == 2 and wait["reason"] and wait["reason_text"]
        assert wait["source"] in SOURCES and wait["backfill"] is False
        assert wait["estimated_start_at"] and wait["estimated_wait_s"] > 0
        assert_in_band(wait)
        assert b.wait(second["id"])["position"] == 2, "everyone sees the queue, so everyone may ask"

        (entry,) = [q for q in a.queue()["data"] if q["id"] == second["id"]]
        assert entry["source"] == wait["source"] and entry["held"] is False
        assert "estimated_start_latest_at" in entry

        a.hold(first["id"])
        assert a.wait(first["id"])["held"] is True

        error = api_error(lambda: a.wait(blockers[0]))
        assert error.status == 409 and "running" in error.detail and "place in line" in error.detail
        assert api_error(lambda: a.wait(999999)).status == 404


def test_openapi_documents_the_queue_controls(stack: Stack) -> None:
    spec = httpx.get(stack.url + "/openapi.json", timeout=10).json()
    for path in ("hold", "release", "priority", "wait"):
        assert f"/api/v1/jobs/{{job_id}}/{path}" in spec["paths"], path
    assert "429" in spec["paths"]["/api/v1/jobs"]["post"]["responses"]


# The command line, against the same stack.


def gpuyard(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")}
    env.update(GPUYARD_URL=stack.url, GPUYARD_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "gpuyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_hold_release_priority_why(scene: Scene, alice: str) -> None:
    with scene.stack.client(alice) as a:
        blockers = scene.fill_gpus(a)
        first, second = (scene.submit(a, gpus=1, name=n, time_limit_s=600)["id"] for n in ("first", "second"))

        result = gpuyard(scene.stack, alice, "why", str(second))
        assert result.returncode == 0, result.stderr
        assert f"Job {second} is 2nd in line." in result.stdout
        assert "Estimated start" in result.stdout and "Why: " in result.stdout

        result = gpuyard(scene.stack, alice, "hold", str(first))
        assert result.returncode == 0, result.stderr
        assert f"Job {first}: held" in result.stdout and f"gpuyard release {first}" in result.stdout
        assert a.job(first)["held"] is True
        assert f"Job {first} is held" in gpuyard(scene.stack, alice, "why", str(first)).stdout
        assert "HELD" in gpuyard(scene.stack, alice, "queue").stdout

        result = gpuyard(scene.stack, alice, "release", str(first))
        assert result.returncode == 0 and f"Job {first}: released" in result.stdout
        assert a.job(first)["held"] is False

        result = gpuyard(scene.stack, alice, "priority", str(second), "high")
        assert result.returncode == 0, result.stderr
        assert f"Job {second}: priority high. Now 1st in line" in result.stdout
        assert queue_ids(a) == [second, first]

        result = gpuyard(scene.stack, alice, "priority", str(second), "urgent")
        assert result.returncode == 1 and "Only admins may use the urgent priority" in result.stderr
        result = gpuyard(scene.stack, alice, "why", str(blockers[0]))
        assert result.returncode == 1 and "running" in result.stderr
        result = gpuyard(scene.stack, alice, "hold", str(blockers[0]), str(first))
        assert result.returncode == 1, "one job could not be held"
        assert "only a waiting job can be held" in result.stderr and f"Job {first}: held" in result.stdout


# The per-user limit of waiting jobs.


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str):  # type: ignore[no-untyped-def]
    env = {"GPUYARD_MAX_WAITING_JOBS_PER_USER": "2"}
    with running_stack(tmp_path_factory.mktemp("limited"), amqp_url, fake_gpus=1, extra_env=env) as s:
        yield s


def test_a_submission_over_the_waiting_limit_is_refused(limited_stack: Stack, tmp_path: Path) -> None:
    stack = limited_stack
    with stack.admin() as admin:
        carol = stack.client(str(admin.add_user("carol")["token"]))
        dave = stack.client(str(admin.add_user("dave")["token"]))
    scene = Scene(stack, tmp_path)
    try:
        with carol, dave:
            blocker = scene.submit(carol, gpus=1, name="blocker")["id"]
            stack.wait_state(blocker, "running")
            waiting = [scene.submit(carol, gpus=1, name=f"w{i}")["id"] for i in range(2)]
            error = api_error(lambda: carol.submit(["true"], gpus=1))
            assert error.status == 429 and error.code == "quota_exceeded"
            assert error.detail.startswith("You have 2 jobs waiting, the limit per user: ")
            assert "cancel some" in error.detail
            assert scene.submit(dave, gpus=1, name="daves")["state"] == "queued", "the limit is per user"
            carol.cancel(waiting[0])
            assert scene.submit(carol, gpus=1, name="again")["state"] == "queued"
    finally:
        scene.close()


async def test_the_waiting_limit_in_the_service_is_exact_under_concurrent_submissions(
    tmp_path: Path,
) -> None:
    """The limit itself, on the controller's own parts (database, scheduler) with a real SQLite file,
    whatever the controller passes today. No node has reported, so every job waits."""
    controller = Controller(Settings(data_dir=tmp_path, instance="limit-test"))
    jobs = JobService(
        controller.db,
        controller.scheduler,
        controller.broker,
        clock=controller.clock,
        max_waiting_jobs_per_user=2,
    )
    await migrate(controller.db)
    try:
        erin, _ = await controller.auth.add_user("erin", is_admin=False)
        frank, _ = await controller.auth.add_user("frank", is_admin=False)
        spec = make_spec(command=["true"], gpus=1)
        results = await asyncio.gather(
            *(jobs.submit(erin, spec) for _ in range(5)), jobs.submit(frank, spec), return_exceptions=True
        )
        refused = [r for r in results[:5] if isinstance(r, QuotaExceeded)]
        assert len(refused) == 3 and not isinstance(results[5], BaseException), results
        assert refused[0].detail.startswith("You have 2 jobs waiting, the limit per user: ")
        with pytest.raises(QuotaExceeded):
            await jobs.submit(erin, spec)
        assert await waiting_count(jobs, erin) == 2
        accepted = [r for r in results[:5] if isinstance(r, tuple)]
        await jobs.cancel(erin, accepted[0][0]["id"])
        await jobs.submit(erin, spec)  # a cancelled job frees a place
        assert await waiting_count(jobs, erin) == 2
    finally:
        await controller.db.dispose()


async def waiting_count(jobs: JobService, user: User) -> int:
    rows = await jobs.list_jobs(user, states=["queued"], owner=None, before_id=None, limit=100)
    return len(rows)


async def test_the_queue_answers_from_the_last_estimates_until_the_line_changes(tmp_path: Path) -> None:
    """Asking again for the queue or a job's wait reuses the last pass's estimates until the line changes
    (a submission, a queue control) or they grow older than a few seconds; then a new pass makes them.
    No node has reported, so every job waits."""
    moment = [datetime(2026, 12, 4, 12, 0, tzinfo=UTC)]
    controller = Controller(Settings(data_dir=tmp_path, instance="reuse-test"), clock=lambda: moment[0])
    jobs = controller.jobs
    await migrate(controller.db)
    try:
        erin, _ = await controller.auth.add_user("erin", is_admin=False)
        spec = make_spec(command=["true"], gpus=1)
        first, _ = await jobs.submit(erin, spec)
        result, rows = await jobs.queue()
        assert [r["id"] for r in rows] == [first["id"]]
        assert (await jobs.queue())[0] is result, "nothing changed: the same estimates"
        assert (await jobs.wait(erin, first["id"]))[2] == result.now

        second, _ = await jobs.submit(erin, spec)
        grown, rows = await jobs.queue()
        assert grown is not result and [r["id"] for r in rows] == [first["id"], second["id"]]

        await jobs.hold(erin, first["id"])
        held, rows = await jobs.queue()
        assert held is not grown and rows[0]["held_at"] is not None

        moment[0] += timedelta(seconds=6)
        later, _ = await jobs.queue()
        assert later is not held and later.now == moment[0], "older than 5 s: a new pass"
    finally:
        await controller.db.dispose()
