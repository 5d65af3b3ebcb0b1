"""The live half of the fault-injection suite (tests/integration/test_faults.py): the stack under test, a
private RabbitMQ behind a TCP proxy, the faults it can suffer and how long it takes to recover from each, and
a steady stream of submissions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from gpuyard.adapters.broker.local import LocalRabbitmq
from gpuyard.client import ApiError, Client
from gpuyard.domain.lease import fence_after_s
from tests.support.faults import FINAL_STATES, FaultRecord, JobPlan
from tests.support.stack import Stack, wait_for
from tests.support.tcp_proxy import TcpProxy

KILL_GRACE_S = 1.0
RECOVERY_DEADLINE_S = 90.0  # generous: a fault not recovered from by then is a stuck state


class Rig:
    """The stack under test and the faults it can suffer."""

    def __init__(
        self, stack: Stack, rabbit: LocalRabbitmq, proxy: TcpProxy, *, ledger: Path, lease_s: float
    ) -> None:
        self.stack = stack
        self.lease_s = lease_s
        self.rabbit = rabbit
        self.proxy = proxy
        self.ledger = ledger
        self.nodes = {"worker": stack.node, "worker-b": f"{stack.node}-b"}
        self.api = stack.admin()
        self.faults: list[FaultRecord] = []
        self.poison: list[str] = []  # a marker in each poison message sent
        self.readyz_lied = 0  # broker outages during which /readyz said ok

    # processes

    def start_worker(self, name: str) -> None:
        self.stack.start_process("worker", name=name, env={"GPUYARD_NODE_NAME": self.nodes[name]})

    def signal(self, name: str, sig: int) -> None:
        os.kill(self.stack.procs[name].pid, sig)
        if sig == signal.SIGKILL:
            self.stack.procs[name].wait()

    # what the API says (None while it cannot say)

    def ready(self) -> bool:
        try:
            return httpx.get(self.stack.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def ask(self, question: Callable[[Client], Any]) -> Any:
        try:
            return question(self.api)
        except ApiError:  # unreachable (0) or 5xx while it restarts
            return None

    def job(self, job_id: int) -> dict[str, Any] | None:
        try:
            return self.api.job(job_id)
        except ApiError:
            return None

    def last_seen(self) -> dict[str, float]:
        gpus = self.ask(lambda c: c.gpus()) or {"nodes": []}
        return {n["name"]: datetime.fromisoformat(n["last_seen_at"]).timestamp() for n in gpus["nodes"]}

    def live_on(self, node: str) -> dict[int, int]:
        """The attempts the controller has on `node` now: {job id: attempt}."""
        page = self.ask(lambda c: c.jobs(states=["dispatched", "running"], limit=500)) or {"data": []}
        return {int(j["id"]): int(j["attempt"]) for j in page["data"] if j.get("node") == node}

    def all_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.api.jobs(limit=500, cursor=cursor)
            jobs += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                return jobs

    # waiting for recovery

    def wait(self, predicate: Callable[[], Any], what: str) -> float:
        """Seconds until `predicate()` holds (polled); fails after a generous deadline."""
        started = time.monotonic()
        wait_for(predicate, timeout_s=RECOVERY_DEADLINE_S, what=what)
        return time.monotonic() - started

    def node_recovered(self, node: str, affected: dict[int, int], back_at: float) -> bool:
        """The node heartbeats again since `back_at`, and each job it had is final, runs again as a later
        attempt, or runs on as the same attempt, followed by the node's new (or woken) worker."""
        if not self.ready() or self.last_seen().get(node, 0.0) <= back_at:
            return False
        for job_id in affected:
            job = self.job(job_id)
            if job is None or (job["state"] not in FINAL_STATES and job["state"] != "running"):
                return False
        return True

    def jobs_moved(self, affected: dict[int, int]) -> bool:
        """Each job is final, or runs again as a later attempt (elsewhere: its node is away)."""
        for job_id, attempt in affected.items():
            job = self.job(job_id)
            if job is None:
                return False
            if job["state"] not in FINAL_STATES and not (
                job["state"] == "running" and job["attempt"] > attempt
            ):
                return False
        return True

    def record(self, fault: FaultRecord) -> FaultRecord:
        self.faults.append(fault)
        when = time.strftime("%H:%M:%S")
        print(f"{when} fault {len(self.faults)}: {fault.kind} {fault.target}", flush=True)
        return fault

    # the faults

    def busy(self, name: str) -> tuple[str, dict[int, int]]:
        """A worker that runs jobs now, and its attempts: `name` if it does, else the other one (a fault
        that is to move jobs elsewhere needs jobs). Waits a while for one; else `name`, with none."""
        order = [name] + [n for n in self.nodes if n != name]

        def found() -> tuple[str, dict[int, int]] | None:
            return next(((n, live) for n in order if (live := self.live_on(self.nodes[n]))), None)

        try:
            busy = wait_for(found, timeout_s=20, what="a worker with jobs")
        except AssertionError:
            return name, {}
        assert busy is not None
        return busy

    def kill_worker(self, name: str, *, away_s: float) -> None:
        kind = "kill -9 worker, away > lease" if away_s > self.lease_s else "kill -9 worker, restart"
        name, affected = self.busy(name) if away_s else (name, self.live_on(self.nodes[name]))
        node = self.nodes[name]
        fault = self.record(FaultRecord(kind, name, at=time.time()))
        self.signal(name, signal.SIGKILL)
        away_until = time.monotonic() + away_s
        while time.monotonic() < away_until:  # the worker stays dead: its jobs must run again elsewhere
            if fault.recovered_s is None and affected and self.jobs_moved(affected):
                fault.recovered_s = time.time() - fault.at
            time.sleep(0.2)
        back_at = time.time()
        self.start_worker(name)
        fault.notes.append(f"{len(affected)} jobs")
        self.wait(lambda: self.node_recovered(node, affected, back_at), f"{kind} ({name}) recovered")
        if fault.recovered_s is None:
            fault.recovered_s = time.time() - fault.at

    def freeze_worker(self, name: str, *, for_s: float) -> None:
        fence_s = fence_after_s(lease_s=self.lease_s, kill_grace_s=KILL_GRACE_S)
        span = "< fence" if for_s < fence_s else "> lease" if for_s > self.lease_s else "fence..lease"
        name, affected = self.busy(name) if for_s > fence_s else (name, self.live_on(self.nodes[name]))
        node = self.nodes[name]
        fault = self.record(FaultRecord(f"SIGSTOP worker {span}", name, at=time.time()))
        self.signal(name, signal.SIGSTOP)
        time.sleep(for_s)  # the fault itself
        back_at = time.time()
        self.signal(name, signal.SIGCONT)
        fault.notes.append(f"{len(affected)} jobs")
        self.wait(lambda: self.node_recovered(node, affected, back_at), f"worker {name} thawed")
        fault.recovered_s = time.time() - fault.at

    def kill_controller(self, *, down_s: float = 0.0) -> None:
        fault = self.record(FaultRecord("kill -9 controller, restart", at=time.time()))
        proc = self.stack.procs["controller"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if down_s:
            time.sleep(down_s)
        self.stack.start_process("controller")
        self.wait(self.ready, "the controller's /readyz after its restart")
        fault.recovered_s = time.time() - fault.at

    def kill_broker(self) -> None:
        fault = self.record(FaultRecord("kill -9 broker, restart", at=time.time()))
        self.rabbit.kill()
        try:
            wait_for(lambda: not self.ready(), timeout_s=10, what="/readyz to say degraded")
        except AssertionError:
            fault.notes.append("/readyz stayed ok while RabbitMQ was down")
            self.readyz_lied += 1
        self.rabbit.start()
        up_at = time.time()
        fault.notes.append(f"down {up_at - fault.at:.1f} s")
        fault.at = up_at  # recovery counts from the broker being back
        self.wait(self.ready, "the controller's /readyz after the broker restart")
        fault.recovered_s = time.time() - up_at

    def drop_connections(self) -> None:
        fault = self.record(FaultRecord("dropped connections (proxy)", at=time.time()))
        fault.notes.append(f"{self.proxy.drop_all()} connections")
        after = fault.at + 0.5  # a heartbeat already on its way does not count

        def heard_again() -> bool:
            seen = self.last_seen()
            return self.ready() and all(seen.get(n, 0.0) > after for n in self.nodes.values())

        self.wait(heard_again, "every node heard again after the drop")
        fault.recovered_s = time.time() - fault.at

    def send_poison(self) -> None:
        k = len(self.poison)
        marker = f"poison-{k}"
        bodies = [
            f"{marker}: not JSON".encode(),
            json.dumps(["a list", marker]).encode(),
            json.dumps({"type": "teleport", "marker": marker}).encode(),
            json.dumps(
                {"type": "started", "job_id": 10**9 + k, "attempt": 1, "node": marker, "pid": 1, "at": _now()}
            ).encode(),
        ]
        fault = self.record(FaultRecord("poison message", at=time.time()))
        asyncio.run(_publish(self.rabbit.url, f"gpuyard.{self.stack.instance}", bodies[k % len(bodies)]))
        self.poison.append(marker)
        self.wait(lambda: marker in self.dead_messages(), f"{marker} recorded as a dead letter")
        fault.recovered_s = time.time() - fault.at

    def dead_messages(self) -> str:
        rows = self.ask(lambda c: c.dead_letters(limit=1000)) or []
        return json.dumps([d for d in rows if d["kind"] == "message"])


class Submitter(threading.Thread):
    """Submits the plans at a steady pace, retrying each until the API accepts it (201)."""

    def __init__(self, rig: Rig, plans: list[JobPlan], *, every_s: float) -> None:
        super().__init__(name="submitter", daemon=True)
        self.rig = rig
        self.plans = plans
        self.every_s = every_s
        self.accepted: dict[int, JobPlan] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.rig.stack.admin() as client:
                started = time.monotonic()
                for i, plan in enumerate(self.plans):
                    time.sleep(max(0.0, started + i * self.every_s - time.monotonic()))
                    self._submit(client, plan)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _submit(self, client: Client, plan: JobPlan) -> None:
        while True:
            try:
                job = client.submit(plan.command(self.rig.ledger), **plan.submit_args())
            except ApiError as e:
                if e.status not in (0, 502, 503):
                    raise
                time.sleep(0.3)  # the controller is restarting
                continue
            self.accepted[int(job["id"])] = plan
            return


def _now() -> str:
    return datetime.now().astimezone().isoformat()


async def _publish(url: str, exchange_name: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key="events", mandatory=True)
