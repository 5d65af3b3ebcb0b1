"""Retries, dead letters and leases on a live stack: failed attempts retried per the policy and keeping
their place, a job out of attempts dead-lettered with its log tail and requeued, poison messages recorded,
and a node that reports an attempt that is over told to kill it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from gpuyard.client import ApiError
from tests.support.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    env = {"GPUYARD_RETRY_BACKOFF_S": "0.5", "GPUYARD_MAX_ATTEMPTS_CAP": "5"}
    with running_stack(tmp_path_factory.mktemp("reliability"), amqp_url, extra_env=env) as s:
        yield s


def flaky(counter: Path, *, succeed_on: int) -> str:
    """A job that fails until its `succeed_on`-th run (counted in a file), printing which run it is."""
    return (
        f'n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo "$n" > {counter}; echo "run $n"; '
        f'[ "$n" -ge {succeed_on} ] || {{ echo "boom on run $n" >&2; exit 3; }}'
    )


def test_a_job_s_own_failure_is_final_unless_it_asked_for_retries(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as admin:
        plain = admin.submit(flaky(tmp_path / "a", succeed_on=2), name="plain")
        retried = admin.submit(flaky(tmp_path / "b", succeed_on=2), name="retried", retry_on=["exit_nonzero"])
        assert retried["max_attempts"] == 3 and retried["retry_on"] == ["exit_nonzero"]
    failed = stack.wait_state(plain["id"], "failed")
    assert failed["attempt"] == 1 and failed["failure_class"] == "exit_nonzero" and failed["exit_code"] == 3
    done = stack.wait_state(retried["id"], "succeeded")
    assert done["attempt"] == 2
    attempts = stack.job(retried["id"])["attempts"]
    assert [(a["number"], a["exit_code"], a["failure_class"]) for a in attempts] == [
        (1, 3, "exit_nonzero"),
        (2, 0, None),
    ]
    waited = datetime.fromisoformat(attempts[1]["dispatched_at"]) - datetime.fromisoformat(
        attempts[0]["ended_at"]
    )
    assert waited >= timedelta(seconds=0.5), "the second attempt waited out its backoff"
    with stack.admin() as admin:
        assert admin.logs(retried["id"], attempt=1)["data"].endswith("boom on run 1\n")
        assert all(d["job_id"] not in (plain["id"], retried["id"]) for d in admin.dead_letters())


def test_a_job_out_of_attempts_is_dead_lettered_and_requeued_with_a_fresh_budget(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.admin() as admin:
        job = admin.submit(
            flaky(tmp_path / "c", succeed_on=3), name="doomed", retry_on=["exit_nonzero"], max_attempts=2
        )
        failed = stack.wait_state(job["id"], "failed", timeout_s=30)
        assert failed["attempt"] == 2 and failed["retry_at"] is None
        (dead,) = [d for d in admin.dead_letters() if d["job_id"] == job["id"]]
        assert dead["kind"] == "job" and dead["attempts"] == 2 and dead["failure_class"] == "exit_nonzero"
        assert "boom on run 2" in dead["log_tail"] and "2 attempt" in dead["reason"]

        requeued = admin.requeue_dead(dead["id"])
        assert requeued["requeued_at"] is not None
        done = stack.wait_state(job["id"], "succeeded")
        assert done["attempt"] == 3 and done["max_attempts"] == 4  # 2 used + a fresh budget of 2
        assert all(d["id"] != dead["id"] for d in admin.dead_letters())
        assert any(d["id"] == dead["id"] for d in admin.dead_letters(include_requeued=True))
        with pytest.raises(ApiError) as twice:
            admin.requeue_dead(dead["id"])
        assert twice.value.status == 409 and "requeued already" in twice.value.detail
        with pytest.raises(ApiError) as not_failed:
            admin.requeue(job["id"])
        assert not_failed.value.status == 409 and "only a failed or timed-out job" in not_failed.value.detail


def test_requeue_and_dead_letters_are_the_owner_s(stack: Stack, alice: str, bob: str, tmp_path: Path) -> None:
    with stack.client(alice) as a, stack.client(bob) as b:
        job = a.submit("exit 7", name="alices")
        stack.wait_state(job["id"], "failed")
        with pytest.raises(ApiError) as denied:
            b.requeue(job["id"])
        assert denied.value.status == 403
        again = a.requeue(job["id"])
        assert again["state"] in ("queued", "dispatched", "running", "failed")
        with pytest.raises(ApiError) as too_many:
            a.submit("true", max_attempts=6)
        assert too_many.value.status == 422 and "at most 5" in too_many.value.detail
        with pytest.raises(ApiError) as unknown:
            a.submit("true", retry_on=["node_lost"])
        assert unknown.value.status == 422 and "always retried" in unknown.value.detail
        assert b.dead_letters() == []


def publish(stack: Stack, routing_key: str, body: bytes) -> None:
    async def send() -> None:
        connection = await aio_pika.connect(stack.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(f"gpuyard.{stack.instance}")
            await exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    asyncio.run(send())


def test_poison_messages_are_recorded_as_dead_letters_and_can_be_sent_again(stack: Stack) -> None:
    publish(stack, "events", b"this is not json")
    publish(
        stack,
        "events",
        json.dumps(
            {
                "type": "started",
                "job_id": 99999,
                "attempt": 1,
                "node": "x",
                "pid": 1,
                "at": "2026-12-04T10:00:00+00:00",
            }
        ).encode(),
    )
    publish(stack, f"node.{stack.node}", json.dumps({"type": "teleport"}).encode())
    with stack.admin() as admin:
        dead = wait_for(
            lambda: (
                (rows := [d for d in admin.dead_letters() if d["kind"] == "message"])
                and len(rows) >= 3
                and rows
            ),
            what="three dead-lettered messages",
        )
        reasons = {d["routing_key"]: d for d in dead}
        assert (
            "Expecting value" in [d for d in dead if d["body"] == {"text": "this is not json"}][0]["reason"]
        )
        unknown = [d for d in dead if d["job_id"] == 99999][0]
        assert "job 99999, which does not exist" in unknown["reason"] and unknown["routing_key"] == "events"
        assert reasons[f"node.{stack.node}"]["body"] == {"type": "teleport"}
        assert f"gpuyard.{stack.instance}.node.{stack.node}" in reasons[f"node.{stack.node}"]["reason"]

        sent = admin.requeue_dead(unknown["id"])  # it fails again, and is recorded again
        assert sent["requeued_at"] is not None
        wait_for(
            lambda: (
                len([d for d in admin.dead_letters() if d["job_id"] == 99999]) == 1
                and [d for d in admin.dead_letters() if d["job_id"] == 99999][0]["id"] != unknown["id"]
            ),
            what="the requeued message to come back dead",
        )


def test_a_node_that_reports_an_attempt_that_is_over_is_told_to_kill_it(stack: Stack, tmp_path: Path) -> None:
    with stack.admin() as admin:
        job = admin.submit("sleep 60", name="stale")
        stack.wait_state(job["id"], "running")
    # The controller's view moves on (as after a lost lease) while the worker still runs attempt 1.
    import sqlite3

    db = sqlite3.connect(stack.data_dir / "gpuyard.db")
    with db:
        db.execute(
            "UPDATE jobs SET state = 'failed', finished_at = '2026-12-04 10:00:00' WHERE id = ?", (job["id"],)
        )
    db.close()
    wait_for(
        lambda: f"job {job['id']} attempt 1 cancelled" in stack.log("worker"),
        what="the worker to kill the stale attempt",
    )
    assert "which is over: telling it to kill it" in stack.log("controller")
