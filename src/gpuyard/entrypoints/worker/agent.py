"""The worker: one per workstation. Reports its GPUs, runs what it is dispatched, streams what happens.

It never touches the database. A dispatch is acked only after the job's `started` (or its end) was
published with a confirm; a duplicate delivery of an attempt it already runs is acked and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpuyard.adapters.broker.messages import (
    Cancel,
    Dispatch,
    GpuSample,
    Heartbeat,
    JobUsage,
    Outcome,
    node_message,
)
from gpuyard.adapters.broker.rabbitmq import RabbitmqBroker, retry_while_unavailable
from gpuyard.adapters.gpu.base import GpuBackend
from gpuyard.adapters.runner.process import SPARES, LaunchError
from gpuyard.domain.errors import BrokerUnavailable
from gpuyard.domain.jobs import FailureClass
from gpuyard.entrypoints.worker.attempt import Attempt, active_dir, lease_file
from gpuyard.entrypoints.worker.lease import NodeLease
from gpuyard.entrypoints.worker.usage import usage_by_job
from gpuyard.settings import Settings

log = logging.getLogger(__name__)

_RECENT_ENDED = 10_000
# How an attempt stopped before it started ends, by the reason of the stop.
_STOP_CLASS = {"cancelled": FailureClass.CANCELLED, "preempted": FailureClass.PREEMPTED}


def _unstarted_outcome(failure: FailureClass) -> Outcome:
    """How an attempt that never started is reported: cancelled when it was, else failed."""
    return "cancelled" if failure is FailureClass.CANCELLED else "failed"


class Worker:
    def __init__(self, settings: Settings, gpus: GpuBackend) -> None:
        self.settings = settings
        self.node = settings.node_name
        self.gpus = gpus
        self.broker = RabbitmqBroker(settings.amqp_url, instance=settings.instance_name())
        self.running: dict[tuple[int, int], Attempt] = {}
        self._ended: dict[tuple[int, int], None] = {}
        self._cancelled_early: dict[tuple[int, int], Cancel] = {}  # stops that came before their dispatch
        self._starting: set[tuple[int, int]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._launch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._links: dict[int, list[int]] | None = None
        self.draining = False
        self.lease = NodeLease(
            lease_file(settings.jobs_dir, self.node),
            lease_s=settings.node_lease_s,
            kill_grace_s=settings.kill_grace_s,
        )

    async def emit(self, body: dict[str, Any]) -> None:
        await self.broker.publish("events", body)

    async def run(self) -> None:
        """Connect (retrying), then serve until `stop()`."""

        async def connect() -> None:
            await self.broker.connect()
            await self.broker.declare_node_queue(self.node)

        await retry_while_unavailable(connect, what="connecting to RabbitMQ")
        await self._resume_attempts()  # before any dispatch: a redelivered one must find its attempt
        self.lease.renew(await self._heartbeat_once())
        await self.broker.consume(
            self.broker.node_queue(self.node), self.handle, prefetch=self.settings.max_parallel_jobs
        )
        log.info(
            "worker %s ready: %s GPUs, instance %s",
            self.node,
            len(self.gpus.list_gpus()),
            self.broker.instance,
        )
        beat = asyncio.create_task(self._heartbeats())
        try:
            await self._stopping.wait()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    def stop(self) -> None:
        self._stopping.set()

    def drain(self) -> None:
        """Take no new job; stop once the running ones have ended."""
        if not self.draining:
            log.info("draining: no new jobs; exiting once the %s running ones end", len(self.running))
        self.draining = True
        if not self.running:
            self.stop()

    async def shutdown(self) -> None:
        """Disconnect. Running jobs keep running under their supervisors, for the next worker to pick up,
        unless GPUYARD_STOP_JOBS_ON_EXIT asks to stop them (and report their ends) first."""
        if self.settings.stop_jobs_on_exit:
            for attempt in list(self.running.values()):
                if attempt.process is not None:
                    attempt.process.stop("cancelled")
            waits = [a.finished.wait() for a in self.running.values()]
            if waits:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*waits), timeout=self.settings.kill_grace_s + 5)
        elif self.running:
            log.info(
                "%s jobs keep running under their supervisors; the next worker on this node picks them up",
                len(self.running),
            )
        for task in list(self._tasks):
            task.cancel()
        await SPARES.close()
        await self.broker.close()
        self.gpus.close()

    def _attempt(self, dispatch: Dispatch) -> Attempt:
        return Attempt(dispatch, **self._attempt_settings())

    def _attempt_settings(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "jobs_dir": self.settings.jobs_dir,
            "emit": self.emit,
            "kill_grace_s": self.settings.kill_grace_s,
            "tensorboard_dir": self.settings.tensorboard_logdir,
            "fence_s": self.lease.fence_s,
        }

    async def _resume_attempts(self) -> None:
        """Pick up the attempts a previous worker on this node started: running ones are followed again,
        those that ended meanwhile are reported, exit code included."""
        active = active_dir(self.settings.jobs_dir, self.node)
        for marker in sorted(active.glob("*.*")) if active.is_dir() else []:
            state_dir = Path(marker.read_text().strip())
            try:
                attempt = Attempt.resume(state_dir, **self._attempt_settings())
            except (OSError, ValueError) as e:
                log.error("cannot resume the attempt in %s (%s): forgetting it", state_dir, e)
                marker.unlink(missing_ok=True)
                continue
            assert attempt.process is not None
            if not attempt.process.launched:
                await attempt.finish(
                    "failed", FailureClass.NODE_LOST.value, detail="its worker stopped while starting it"
                )
                continue
            pid = attempt.process.pid
            self.running[attempt.key] = attempt
            self._mark_fake_load(pid, attempt.dispatch.gpu_indices)
            log.info("job %s attempt %s: resumed (pid %s)", *attempt.key, pid)
            await attempt.started_event(pid)
            self._spawn(self._supervise(attempt, pid))

    async def handle(self, body: dict[str, Any]) -> None:
        message = node_message.validate_python(body)
        if isinstance(message, Cancel):
            await self._cancel(message)
        else:
            await self._dispatch(message)

    async def _dispatch(self, d: Dispatch) -> None:
        key = (d.job_id, d.attempt)
        if key in self.running or key in self._ended or key in self._starting:
            log.info("job %s attempt %s: duplicate dispatch ignored", *key)
            return
        attempt = self._attempt(d)
        if attempt.state_dir.exists():  # started by an earlier worker: resumed or reported, never twice
            log.info("job %s attempt %s: started before, duplicate dispatch ignored", *key)
            return
        self._starting.add(key)  # before any await: a second delivery of it (republished) is a duplicate
        # A consumer's handler is cancelled when its channel closes (a dropped connection, a broker
        # restart). The start runs in a task of its own, so that a job is never launched and then left
        # unwatched: the dispatch is acked once `started` is confirmed, and a redelivery is a duplicate.
        await asyncio.shield(self._spawn(self._start(attempt)))

    async def _start(self, attempt: Attempt) -> None:
        try:
            await self._launch(attempt)
        finally:
            self._starting.discard(attempt.key)

    async def _launch(self, attempt: Attempt) -> None:
        """Start the attempt unless it may not (draining, cancelled, lease lapsed, GPUs taken), report its
        start (through a broker outage), then follow it."""
        d, key = attempt.dispatch, attempt.key
        if self.draining:
            await self._refuse(attempt, FailureClass.GPU_UNAVAILABLE, f"node {self.node} is draining")
            return
        early = self._cancelled_early.get(key)
        if early is not None:
            failure = _STOP_CLASS[early.reason]
            await self._refuse(attempt, failure, f"{early.reason} before it started")
            return
        async with self._launch_lock:  # one GPU check + launch at a time: never two jobs on one GPU
            stale = self.lease.refusal(d)
            if stale is not None:
                log.warning("job %s attempt %s not started: %s", *key, stale)
                await self._refuse(attempt, FailureClass.NODE_LOST, f"not started on {self.node}: {stale}")
                return
            busy = await asyncio.to_thread(self._unavailable, d.gpu_indices)
            if busy:
                detail = f"GPUs {busy} are held by processes outside gpuyard"
                await self._refuse(attempt, FailureClass.GPU_UNAVAILABLE, detail)
                return
            try:
                pid = await attempt.launch()
            except LaunchError as e:
                await attempt.fail_launch(e)
                self._end(key)
                return
            self.running[key] = attempt
            early = self._cancelled_early.get(key)
            if early is not None:  # a cancel (or a preemption) overtook this launch
                attempt.process.stop(early.reason, grace_s=early.grace_s)  # type: ignore[union-attr]
        self._mark_fake_load(pid, d.gpu_indices)
        log.info(
            "job %s attempt %s started: pid %s, CUDA_VISIBLE_DEVICES=%s",
            d.job_id,
            d.attempt,
            pid,
            ",".join(map(str, d.gpu_indices)),
        )
        await attempt.started_event(pid)
        self._spawn(self._supervise(attempt, pid))

    async def _refuse(self, attempt: Attempt, failure: FailureClass, detail: str) -> None:
        """Report an attempt that was not started."""
        await attempt.finish(_unstarted_outcome(failure), failure.value, detail=detail)
        self._end(attempt.key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of the worker's own: kept until it ends, cancelled at shutdown."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, attempt: Attempt, pid: int) -> None:
        try:
            await attempt.run()
        except Exception:
            log.exception("job %s attempt %s: supervision failed", *attempt.key)
        finally:
            self._clear_fake_load(pid)
            self.running.pop(attempt.key, None)
            self._end(attempt.key)
            if self.draining and not self.running:
                self.stop()

    async def _cancel(self, c: Cancel) -> None:
        """Stop an attempt, cancelled or preempted (then with the preemption's grace period)."""
        key = (c.job_id, c.attempt)
        attempt = self.running.get(key)
        if attempt is not None and attempt.process is not None:
            if c.reason == "preempted":
                log.info("job %s attempt %s: preempted, stopping it (grace %s s)", *key, c.grace_s)
            attempt.process.stop(c.reason, grace_s=c.grace_s)
        elif key not in self._ended:
            # The dispatch has not arrived (or this worker never had it): it must not start.
            self._cancelled_early[key] = c
            stub = Dispatch(
                job_id=c.job_id, attempt=c.attempt, name="", user="", argv=["-"], gpu_indices=[], gpu_uuids=[]
            )
            failure = _STOP_CLASS[c.reason]
            detail = f"{c.reason} before it started"
            await self._attempt(stub).finish(_unstarted_outcome(failure), failure.value, detail=detail)

    def _end(self, key: tuple[int, int]) -> None:
        self._ended[key] = None
        if len(self._ended) > _RECENT_ENDED:
            self._ended.pop(next(iter(self._ended)))

    def _own_pgids(self) -> set[int]:
        return {a.process.pid for a in self.running.values() if a.process is not None}

    def _unavailable(self, indices: list[int]) -> list[int]:
        free = {g.index for g in self.gpus.get_free_gpus(self._own_pgids())}
        return [i for i in indices if i not in free]

    def _mark_fake_load(self, pgid: int, indices: list[int]) -> None:
        set_job = getattr(self.gpus, "set_job_gpus", None)
        if set_job is not None:
            set_job(pgid, indices)

    def _clear_fake_load(self, pgid: int) -> None:
        clear = getattr(self.gpus, "clear_job", None)
        if clear is not None:
            clear(pgid)

    def _sample(self) -> tuple[list[GpuSample], list[JobUsage]]:
        jobs = {
            key: (a.process.pid, a.dispatch.gpu_indices)
            for key, a in list(self.running.items())
            if a.process is not None
        }
        own = {pgid for pgid, _ in jobs.values()}
        if self._links is None:  # the topology does not change while the worker runs: read it once
            self._links = {}
            for a, b in self.gpus.links():
                self._links.setdefault(a, []).append(b)
                self._links.setdefault(b, []).append(a)
        samples = []
        gpus = self.gpus.list_gpus()
        for gpu in gpus:
            outside = [
                {"pid": p.pid, "user": p.user, "used_memory_mib": p.used_memory_mib, "command": p.command}
                for p in self.gpus.outside_processes(gpu, own)
            ]
            samples.append(
                GpuSample(
                    index=gpu.index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    memory_total_mib=gpu.memory_total_mib,
                    memory_used_mib=gpu.memory_used_mib,
                    utilization_pct=gpu.utilization_pct,
                    outside=outside,
                    links=sorted(self._links.get(gpu.index, [])),
                )
            )
        return samples, usage_by_job(gpus, jobs)

    async def _heartbeat_once(self) -> datetime:
        """Send a heartbeat; returns its time once it got through."""
        samples, usage = await asyncio.to_thread(self._sample)
        beat = Heartbeat(
            node=self.node,
            backend=self.gpus.name,
            gpus=samples,
            running=list(self.running),
            usage=usage,
            draining=self.draining,
            at=datetime.now(UTC),
        )
        await self.emit(beat.model_dump(mode="json"))
        return beat.at

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                self.lease.renew(await self._heartbeat_once())
            except BrokerUnavailable as e:
                log.warning("heartbeat not sent: %s", e)
            except Exception:
                log.exception("heartbeat failed")
            silent_s = self.lease.silent_s()
            if silent_s > self.lease.fence_s:
                self._fence(silent_s)

    def _fence(self, silent_s: float) -> None:
        """Stop every job: the controller will soon count them lost and run them again elsewhere."""
        for attempt in self.running.values():
            process = attempt.process
            # a job that has ended (its end not reported yet, through the outage) has nothing to stop
            if process is not None and process.stop_reason is None and not process.ended:
                log.error(
                    "no heartbeat got through for %.0f s: stopping job %s attempt %s before it runs twice",
                    silent_s,
                    *attempt.key,
                )
                process.stop("fenced")
