"""Start gpuyard's real processes (controller, worker) for a test, each with its own data dir and broker
namespace, and take them down again, queues included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gpuyard.adapters.broker.local import free_port
from gpuyard.client import Client

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll until `predicate()` is truthy; return its value. Fails with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def held_job(release_dir: Path) -> str:
    """A shell job that prints its GPUs and runs until the test creates release_dir/<job id>."""
    return (
        f'echo "CVD=$CUDA_VISIBLE_DEVICES"; while [ ! -e {release_dir}/$GPUYARD_JOB_ID ]; do sleep 0.05; '
        "done; echo released"
    )


def release(release_dir: Path, *job_ids: int) -> None:
    for job_id in job_ids:
        (release_dir / str(job_id)).touch()


class Stack:
    def __init__(
        self, base: Path, amqp_url: str, *, fake_gpus: int = 4, extra_env: dict[str, str] | None = None
    ):
        self.base = base
        self.data_dir = base / "data"
        self.port = free_port()
        self.instance = "t" + uuid.uuid4().hex[:10]
        self.node = "node-" + self.instance
        self.amqp_url = amqp_url
        self.fake_state_file = base / "fake-gpus.json"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")},
            "GPUYARD_DATA_DIR": str(self.data_dir),
            "GPUYARD_PORT": str(self.port),
            "GPUYARD_AMQP_URL": amqp_url,
            "GPUYARD_BROKER": "external",
            "GPUYARD_INSTANCE": self.instance,
            "GPUYARD_NODE_NAME": self.node,
            "GPUYARD_GPU_BACKEND": "fake",
            "GPUYARD_FAKE_GPUS": str(fake_gpus),
            "GPUYARD_FAKE_GPU_STATE_FILE": str(self.fake_state_file),
            "GPUYARD_KILL_GRACE_S": "1",
            "GPUYARD_HEARTBEAT_INTERVAL_S": "0.5",
            "GPUYARD_SCHEDULER_TICK_S": "1",
            "GPUYARD_STOP_JOBS_ON_EXIT": "true",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.nodes: set[str] = set()  # further workers' nodes, whose queues go when the stack stops
        self.url = f"http://127.0.0.1:{self.port}"

    def start_process(
        self, role: str, *, name: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `gpuyard <role>`, known (and logged) as `name` (default: the role)."""
        name = name or role
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuyard", role],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        ctl = self.start_process("controller")
        wait_for(lambda: self._ready(ctl), timeout_s=60, what="the controller's /readyz")
        self.start_process("worker")
        wait_for(lambda: self.admin().gpus()["gpus"], timeout_s=60, what="the worker's first heartbeat")

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"controller exited ({proc.returncode}):\n{self.log('controller')}")
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def admin(self) -> Client:
        return Client(self.url, self.admin_token)

    def client(self, token: str | None) -> Client:
        return Client(self.url, token)

    def log(self, role: str) -> str:
        path = self.base / f"{role}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop_process(self, role: str, *, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        proc = self.procs.get(role)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "controller"] + ["controller"]:
            self.stop_process(name)
        self.nodes.add(self.node)
        self.kill_leftover_jobs()
        asyncio.run(delete_broker_objects(self.amqp_url, self.instance, sorted(self.nodes)))

    def kill_leftover_jobs(self) -> None:
        """Jobs outlive their workers by design: when the test is over, nothing of them may stay."""
        from gpuyard.adapters.runner.supervisor import alive, read_json

        for state_dir in (self.data_dir / "jobs").glob("*/.attempt-*"):
            for name, kill in (("supervisor.json", os.kill), ("job.json", os.killpg)):
                record = read_json(state_dir / name)
                if alive(record):
                    assert record is not None
                    with contextlib.suppress(OSError):
                        kill(int(record["pid"]), signal.SIGKILL)

    def job(self, job_id: int) -> dict[str, Any]:
        with self.admin() as c:
            return c.job(job_id)

    def wait_state(self, job_id: int, *states: str, timeout_s: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        return wait_for(reached, timeout_s=timeout_s, what=f"job {job_id} to be {'/'.join(states)}")


async def delete_broker_objects(amqp_url: str, instance: str, nodes: list[str]) -> None:
    import aio_pika

    prefix = f"gpuyard.{instance}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in [f"{prefix}.events", f"{prefix}.dead", *(f"{prefix}.node.{n}" for n in nodes)]:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for name in (prefix, f"{prefix}.dlx"):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except Exception:  # noqa: BLE001
                pass


@contextmanager
def running_stack(base: Path, amqp_url: str, **kwargs: Any) -> Iterator[Stack]:
    stack = Stack(base, amqp_url, **kwargs)
    try:
        stack.start()
        yield stack
    except BaseException:
        sys.stderr.write(
            f"--- controller log ---\n{stack.log('controller')}\n--- worker log ---\n{stack.log('worker')}\n"
        )
        raise
    finally:
        stack.stop()
