"""A worker's dispatch handling when its link to RabbitMQ breaks mid-way (found by tests/integration/
test_faults.py): a job it has started is always followed to its end and reported, never left running
unwatched while its job stays `dispatched` for good.

The worker runs in-process with fake GPUs and real supervised job processes; what it would publish is
recorded instead (no RabbitMQ is needed)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gpuyard.adapters.gpu.fake import FakeGpus
from gpuyard.domain.errors import BrokerUnavailable
from gpuyard.entrypoints.worker.agent import Worker
from gpuyard.entrypoints.worker.attempt import state_dir_of
from gpuyard.settings import Settings

pytestmark = pytest.mark.integration

NODE = "n1"


def dispatch(job_id: int, seconds: float) -> dict[str, Any]:
    return {
        "type": "dispatch",
        "job_id": job_id,
        "attempt": 1,
        "name": f"job-{job_id}",
        "user": "alice",
        "argv": ["sh", "-c", f"sleep {seconds}; echo done"],
        "gpu_indices": [0],
        "gpu_uuids": ["GPU-0"],
        "node_beat_at": datetime.now(UTC).isoformat(),  # a heartbeat of this node's current lease
    }


class Events:
    """What the worker publishes; the first `refuse` publishes fail as if RabbitMQ were down."""

    def __init__(self, refuse: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse = refuse

    async def emit(self, body: dict[str, Any]) -> None:
        if self.refuse > 0:
            self.refuse -= 1
            raise BrokerUnavailable("Publishing to 'events' failed: the channel is closed")
        self.sent.append(body)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.sent if e["type"] == kind]


async def until(predicate: Any, *, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if predicate():
            return
        assert loop.time() < deadline, f"timed out after {timeout_s} s"
        await asyncio.sleep(0.02)


def worker(tmp_path: Path, events: Events) -> Worker:
    settings = Settings(data_dir=tmp_path, node_name=NODE, kill_grace_s=1, instance="t")
    agent = Worker(settings, FakeGpus(2, node=NODE))
    agent.emit = events.emit  # type: ignore[method-assign]
    agent.lease.renew(datetime.now(UTC))  # as after its first heartbeat got through
    return agent


async def test_a_dispatch_whose_handler_is_cancelled_mid_launch_is_still_followed_and_reported(
    tmp_path: Path,
) -> None:
    events = Events()
    agent = worker(tmp_path, events)
    handler = asyncio.create_task(agent.handle(dispatch(1, 0.5)))
    await until(lambda: (state_dir_of(agent.settings.jobs_dir, 1, 1) / "spec.json").exists())
    handler.cancel()  # what aio-pika does to a consumer's handler when its channel closes
    with contextlib.suppress(asyncio.CancelledError):
        await handler

    await until(lambda: events.of("finished"))
    assert [e["type"] for e in events.sent if e["type"] != "log"] == ["started", "finished"]
    assert events.of("finished")[0]["outcome"] == "succeeded"
    await agent.handle(dispatch(1, 0.5))  # the redelivered dispatch: acked, never run twice
    assert len(events.of("started")) == 1
    await agent.shutdown()


async def test_a_start_that_cannot_be_reported_at_once_is_retried_and_the_job_followed(
    tmp_path: Path,
) -> None:
    events = Events(refuse=2)  # the first two tries to report the start fail
    agent = worker(tmp_path, events)
    await agent.handle(dispatch(2, 0.3))  # returns (the dispatch is acked) once `started` got through
    assert events.sent[0]["type"] == "started"
    await until(lambda: events.of("finished"))
    assert [e["type"] for e in events.sent if e["type"] != "log"] == ["started", "finished"]
    assert events.of("finished")[0]["outcome"] == "succeeded" and (2, 1) not in agent.running
    await agent.shutdown()


async def test_two_deliveries_of_one_dispatch_at_once_start_it_once(tmp_path: Path) -> None:
    """The controller republishes a dispatch whose confirm it lost; both copies may arrive together."""
    events = Events()
    agent = worker(tmp_path, events)
    body = dispatch(3, 0.3)
    await asyncio.gather(agent.handle(body), agent.handle(body))
    await until(lambda: events.of("finished"))
    assert len(events.of("started")) == 1 and len(events.of("finished")) == 1
    assert not (state_dir_of(agent.settings.jobs_dir, 3, 1) / "stop").exists()
    await agent.shutdown()


async def test_a_dispatch_placed_before_the_node_s_lease_lapsed_is_not_started(tmp_path: Path) -> None:
    """As for a worker frozen (SIGSTOP) past its lease with a dispatch in hand: the controller has given the
    attempt to another node meanwhile, so starting it now would run the job twice at once."""
    events = Events()
    agent = worker(tmp_path, events)
    body = dispatch(4, 0.3)  # names the heartbeat the controller heard last, before the lapse
    agent.lease.renewed_at -= agent.lease.fence_s + 1  # no heartbeat got through for longer than the fence...
    agent.lease.renew(datetime.now(UTC))  # ...until now
    await agent.handle(body)
    (finished,) = events.sent
    assert finished["type"] == "finished" and finished["failure_class"] == "node_lost"
    assert "lease lapsed" in finished["detail"] and not state_dir_of(agent.settings.jobs_dir, 4, 1).exists()

    fresh = dispatch(5, 0.3)  # placed after the controller heard the node again: it starts
    await agent.handle(fresh)
    await until(lambda: events.of("finished")[1:])
    assert events.of("finished")[1]["outcome"] == "succeeded"
    await agent.shutdown()
