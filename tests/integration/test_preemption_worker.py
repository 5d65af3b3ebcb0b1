"""Preemption on a worker: the stop a preemption sends (reason `preempted`, a grace period of its own)
reaches the job as SIGTERM, with SIGKILL only after that grace; a cancel that follows wins, at the cancel's
grace; a preemption that overtakes its dispatch keeps the job from starting; what the job sees
(GPUYARD_PREEMPTIBLE, GPUYARD_CHECKPOINT_DIR). Then the example job: it saves a checkpoint on SIGTERM and
resumes from it.

The worker runs in-process with fake GPUs (its kill grace is 1 s) and real supervised job processes; what
it would publish is recorded (as in test_worker_dispatch.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gpuyard.adapters.broker.messages import Cancel, Dispatch
from gpuyard.entrypoints.worker.agent import Worker
from tests.integration.test_worker_dispatch import Events, until, worker

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_digits.py"


def dispatch(job_id: int, script: str, *, preemptible: bool = False) -> dict[str, Any]:
    body = Dispatch(
        job_id=job_id,
        attempt=1,
        name=f"job-{job_id}",
        user="alice",
        argv=["sh", "-c", script],
        gpu_indices=[0],
        gpu_uuids=["GPU-0"],
        node_beat_at=datetime.now(UTC),
        preemptible=preemptible,
    )
    return body.model_dump(mode="json")


def stop(job_id: int, reason: str, grace_s: float | None = None) -> dict[str, Any]:
    return Cancel(job_id=job_id, attempt=1, reason=reason, grace_s=grace_s).model_dump(mode="json")


def output(agent: Worker, job_id: int) -> str:
    path = agent.settings.jobs_dir / str(job_id) / "attempt-1" / "output.log"
    return path.read_text() if path.exists() else ""


async def test_a_preempted_job_gets_the_preemption_s_grace_to_save_its_checkpoint(tmp_path: Path) -> None:
    events = Events()
    agent = worker(tmp_path, events)
    script = (
        'echo "preemptible=$GPUYARD_PREEMPTIBLE"; cd "$GPUYARD_CHECKPOINT_DIR"; '
        'trap "sleep 2; echo epoch-7 > ckpt; echo saved; exit 0" TERM; while true; do sleep 0.1; done'
    )
    await agent.handle(dispatch(5, script, preemptible=True))
    await until(lambda: "preemptible=1" in output(agent, 5))
    # Saving takes 2 s, longer than the worker's kill grace (1 s): the preemption's own grace covers it.
    await agent.handle(stop(5, "preempted", grace_s=10))
    await until(lambda: events.of("finished"), timeout_s=20)

    (end,) = events.of("finished")
    assert (end["outcome"], end["failure_class"], end["exit_code"], end["signal"]) == (
        "failed",
        "preempted",
        0,
        None,
    ), "it exited by itself, after saving, and still counts as preempted"
    assert "back to its place" in end["detail"]
    assert "saved" in output(agent, 5)
    assert (agent.settings.jobs_dir / "5" / "checkpoints" / "ckpt").read_text() == "epoch-7\n"
    await agent.shutdown()


async def test_a_cancel_after_a_preemption_wins_and_does_not_wait_out_its_grace(tmp_path: Path) -> None:
    events = Events()
    agent = worker(tmp_path, events)
    await agent.handle(dispatch(6, 'trap "" TERM; echo "plain=$GPUYARD_PREEMPTIBLE."; sleep 600'))
    await until(lambda: "plain=." in output(agent, 6))  # not preemptible: no GPUYARD_PREEMPTIBLE
    await agent.handle(stop(6, "preempted", grace_s=600))  # it ignores SIGTERM: only SIGKILL stops it
    began = time.monotonic()
    await agent.handle(stop(6, "cancelled"))
    await until(lambda: events.of("finished"), timeout_s=20)

    (end,) = events.of("finished")
    assert (end["outcome"], end["failure_class"], end["signal"]) == ("cancelled", "cancelled", 9)
    assert time.monotonic() - began < 15, "killed after the cancel's grace (1 s), not the preemption's"
    await agent.shutdown()


async def test_a_preemption_that_overtakes_its_dispatch_keeps_the_job_from_starting(tmp_path: Path) -> None:
    events = Events()
    agent = worker(tmp_path, events)
    await agent.handle(stop(7, "preempted", grace_s=5))
    (end,) = events.of("finished")
    assert (end["outcome"], end["failure_class"]) == ("failed", "preempted")
    assert end["detail"] == "preempted before it started"

    await agent.handle(dispatch(7, "echo never", preemptible=True))
    await until(lambda: len(events.of("finished")) == 2)
    assert events.of("started") == [] and output(agent, 7) == ""
    await agent.shutdown()


def test_the_example_saves_a_checkpoint_on_sigterm_and_resumes_from_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")}
    env["GPUYARD_CHECKPOINT_DIR"] = str(tmp_path)
    command = [sys.executable, str(EXAMPLE), "--epoch-sleep", "0.05", "--checkpoint-every", "1000"]
    first = subprocess.Popen(
        [*command, "--epochs", "500"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert first.stdout is not None
    lines = []
    for line in first.stdout:  # it prints a line per epoch: stop it once it is training
        lines.append(line)
        if line.startswith("epoch 3/"):
            first.send_signal(signal.SIGTERM)
            break
    rest, _ = first.communicate(timeout=60)
    text = "".join(lines) + rest
    assert first.returncode == 143, text
    assert "checkpoint saved after epoch" in text and "stopped by SIGTERM" in text
    saved = int(text.split("checkpoint saved after epoch ")[1].split()[0])
    assert saved >= 3 and (tmp_path / "digits.pt").exists()

    second = subprocess.run(
        [*command, "--epochs", str(saved + 2)], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"after epoch {saved}" in second.stdout and f"epoch {saved + 1}/{saved + 2}" in second.stdout
    assert "epoch 1/" not in second.stdout, "it resumed rather than starting over"
