"""Core figures on this machine, with SQLite and a local RabbitMQ (not a timed test: it prints numbers).

    .venv/bin/python bench/bench_core.py [--jobs 200] [--handoffs 20]

1. Submissions per second through the HTTP API: N jobs from one client, then from 8 concurrent clients.
   One GPU is held by a long job and every submitted job asks for all 4, so nothing starts and the line
   grows: each answer carries the job's place, estimated start and reason from a full scheduling pass.
2. Dispatch latency: on a 1-GPU node, the time from a job's exit to the start of the next waiting job's
   process, over consecutive hand-offs (p50, p95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpuyard.adapters.broker.local import LocalRabbitmq, amqp_reachable, free_port  # noqa: E402
from tests.support.stack import running_stack, wait_for  # noqa: E402

SYSTEM_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class LeanHttp:
    """A keep-alive HTTP/1.1 client on a bare asyncio stream. httpx costs about as much CPU per request as
    the server does; on a 2-core machine it would measure the client as much as gpuyard."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, object]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        self.writer.write(request)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def submit_many(url: str, token: str, *, jobs: int, clients: int) -> float:
    body = {"command": ["true"], "gpus": 4, "name": "bench"}

    async def client(count: int) -> None:
        http = LeanHttp(url, token)
        try:
            for _ in range(count):
                status, answer = await http.post("/api/v1/jobs", body)
                assert status == 201, answer
        finally:
            await http.close()

    shares = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in shares))
    return jobs / (time.perf_counter() - started)


def bench_submissions(base: Path, amqp_url: str, jobs: int) -> None:
    with running_stack(base / "submit", amqp_url) as stack:
        with stack.admin() as c:
            blocker = c.submit("sleep 600", gpus=1, name="blocker")["id"]
            stack.wait_state(blocker, "running")
            for clients in (1, 8):
                rate = asyncio.run(submit_many(stack.url, stack.admin_token, jobs=jobs, clients=clients))
                waiting = len(c.queue()["data"])
                print(f"submissions: {jobs} jobs, {clients} client(s): {rate:7.1f} /s  (queue now {waiting})")
            c.cancel(blocker)


def bench_dispatch(base: Path, amqp_url: str, handoffs: int) -> None:
    marks = base / "marks"
    marks.mkdir(parents=True)
    script = (
        f"date +%s%N > {marks}/$GPUYARD_JOB_ID.start; sleep 0.3; date +%s%N > {marks}/$GPUYARD_JOB_ID.end"
    )
    with running_stack(base / "dispatch", amqp_url, fake_gpus=1) as stack:
        with stack.admin() as c:
            ids = [c.submit(script, gpus=1, name=f"handoff{i}")["id"] for i in range(handoffs + 1)]
            for job_id in ids:
                stack.wait_state(job_id, "succeeded", timeout_s=120)
        wait_for(lambda: (marks / f"{ids[-1]}.end").exists(), what="the last job's mark")
    ns = {p.name: int(p.read_text()) for p in marks.iterdir()}
    gaps_ms = [(ns[f"{b}.start"] - ns[f"{a}.end"]) / 1e6 for a, b in zip(ids, ids[1:], strict=False)]
    print(
        f"dispatch latency over {len(gaps_ms)} hand-offs (job exit → next job's process start): "
        f"p50 {statistics.median(gaps_ms):.1f} ms, p95 {percentile(gaps_ms, 0.95):.1f} ms, "
        f"max {max(gaps_ms):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--handoffs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuyard-bench-") as tmp:
        base = Path(tmp)
        if amqp_reachable(SYSTEM_AMQP):
            amqp_url, rabbit = SYSTEM_AMQP, None
        else:
            rabbit = LocalRabbitmq(base / "rabbitmq", port=free_port())
            amqp_url = rabbit.start()
        try:
            print(f"machine: {sys.platform}, python {sys.version.split()[0]}, SQLite, RabbitMQ at {amqp_url}")
            bench_submissions(base, amqp_url, args.jobs)
            bench_dispatch(base, amqp_url, args.handoffs)
        finally:
            if rabbit is not None:
                rabbit.stop()


if __name__ == "__main__":
    main()
