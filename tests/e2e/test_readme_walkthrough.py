"""The README, as a user would follow it: `scripts/run.sh` starts everything (controller, worker with
fake GPUs, the broker), and the `gpuyard` CLI drives the scenario, the example training job included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuyard.adapters.broker.local import free_port
from tests.support.stack import delete_broker_objects, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class Cli:
    def __init__(self, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")}
        self.env.update(GPUYARD_DATA_DIR=str(data_dir), PATH=f"{VENV_BIN}:{os.environ['PATH']}")

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["gpuyard", *args], env=self.env, capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        if ok:
            assert result.returncode == 0, f"gpuyard {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(args[0], "--json", *args[1:]).stdout)  # before any `--`

    def state(self, job_id: int) -> str:
        return str(self.json("show", str(job_id))["state"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("readme") / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUYARD_")}
    env.update(GPUYARD_KILL_GRACE_S="2", GPUYARD_HEARTBEAT_INTERVAL_S="0.5", PYTHONUNBUFFERED="1")
    log_path = data_dir.parent / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh", "--data-dir", str(data_dir), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return "gpuyard is up." in log_path.read_text()

        wait_for(up, timeout_s=240, what="`scripts/run.sh` to print 'gpuyard is up.'")
        cli = Cli(data_dir)
        wait_for(lambda: cli.json("gpus")["gpus"], what="the worker's GPUs")
        yield cli, proc, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        sys.stderr.write(log_path.read_text()[-5000:])
        import asyncio

        instance = (data_dir / "instance").read_text().strip()
        asyncio.run(
            delete_broker_objects("amqp://guest:guest@127.0.0.1:5672/", instance, [os.uname().nodename])
        )


def test_run_command_announces_everything(service) -> None:  # type: ignore[no-untyped-def]
    _, _, log_path = service
    text = log_path.read_text()
    shown = ("web UI:", "API:", "FAKE GPU BACKEND", "GPU backend: fake (4 virtual GPUs", "admin token:")
    for expected in shown:
        assert expected in text
    ui_url = text.split("web UI:")[1].split()[0]
    assert httpx.get(f"{ui_url}/_stcore/health", timeout=10).status_code == 200, "the web UI answers"
    token_file = Path(text.split("admin token: ")[1].split(" ")[0])
    assert token_file.stat().st_mode & 0o077 == 0, "the admin token is readable by its owner only"


def test_six_jobs_four_gpus_then_a_four_gpu_job(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli, _, _ = service
    hold = f'echo "CVD=$CUDA_VISIBLE_DEVICES"; while [ ! -e {tmp_path}/$GPUYARD_JOB_ID ]; do sleep 0.05; done'
    submitted = [cli.json("submit", "--gpus", "1", "--name", f"job{i}", "--", hold) for i in range(6)]
    ids = [j["id"] for j in submitted]
    assert "position" in submitted[5] and submitted[5]["estimated_start_at"]
    text = cli.run("submit", "--gpus", "1", "--name", "seventh", "--", hold).stdout
    assert "queued: position 3" in text and "estimated start" in text
    ids.append(int(text.split()[1]))

    wait_for(lambda: len([j for j in cli.json("ps") if j["state"] == "running"]) == 4, what="4 running jobs")
    ps = cli.json("ps")
    running = [j for j in ps if j["state"] == "running"]
    assert sorted(j["id"] for j in running) == ids[:4]
    assert sorted(i for j in running for i in j["gpu_indices"]) == [0, 1, 2, 3], "one job per GPU"
    assert [q["id"] for q in cli.json("queue")["data"]] == ids[4:]
    assert "Queue" in cli.run("queue").stdout and "waiting for 1 GPU" in cli.run("queue").stdout
    held = {g["index"]: g["job_id"] for g in cli.json("gpus")["gpus"]}
    assert sorted(held.values()) == ids[:4]

    (tmp_path / str(ids[0])).touch()
    wait_for(lambda: cli.state(ids[4]) == "running", what="the 5th job to start when a GPU frees")
    assert cli.state(ids[5]) == "queued"
    assert cli.run("cancel", str(ids[6])).stdout.strip() == f"Job {ids[6]}: cancelled."
    for job_id in ids:
        (tmp_path / str(job_id)).touch()
    for job_id in ids[:6]:
        wait_for(lambda j=job_id: cli.state(j) == "succeeded", what=f"job {job_id} to succeed")

    big = cli.json("submit", "--gpus", "4", "--name", "big", "--", hold)
    wait_for(lambda: cli.state(big["id"]) == "running", what="the 4-GPU job to start")
    (tmp_path / str(big["id"])).touch()
    wait_for(lambda: cli.state(big["id"]) == "succeeded", what="the 4-GPU job to end")
    assert "CVD=0,1,2,3" in cli.run("logs", str(big["id"])).stdout
    history = cli.json("history", "--limit", "50")
    assert {j["id"]: j["state"] for j in history}[ids[6]] == "cancelled"
    assert "History" in cli.run("history").stdout


def test_example_training_job_reports_progress(service) -> None:  # type: ignore[no-untyped-def]
    cli, _, _ = service
    job = cli.json(
        "submit",
        "--gpus",
        "1",
        "--name",
        "digits",
        "--",
        "python",
        "examples/train_digits.py",
        "--epochs",
        "8",
        "--epoch-sleep",
        "0.5",
    )

    def progress() -> float | None:
        mine = [j for j in cli.json("ps") if j["id"] == job["id"]]
        return mine[0]["progress"] if mine and mine[0]["progress"] else None

    assert 0 < wait_for(progress, timeout_s=120, what="the example job's progress in `gpuyard ps`") <= 1
    assert "█" in cli.run("ps").stdout
    followed = cli.run("logs", "-f", str(job["id"])).stdout
    assert "epoch 8/8" in followed and "accuracy=" in followed and "loss=" in followed
    assert "CUDA_VISIBLE_DEVICES=" in followed
    final = cli.json("show", str(job["id"]))
    assert final["state"] == "succeeded", followed
    assert final["progress"] == 1.0 and final["metrics"]["accuracy"] > 0.8


def test_bad_input_from_the_cli(service) -> None:  # type: ignore[no-untyped-def]
    cli, _, _ = service
    for args, hint in [
        (["submit", "--gpus", "0", "--", "true"], "at least 1"),
        (["submit", "--gpus", "9", "--", "true"], "No node has 9 GPUs"),
        (["submit", "--priority", "asap", "--", "true"], "Unknown priority"),
        (["submit", "--time-limit", "soon", "--", "true"], "Cannot read the duration"),
        (["submit", "-C", "/no/such/dir", "--", "true"], "does not exist"),
        (["cancel", "987654"], "No job 987654"),
    ]:
        result = cli.run(*args, ok=False)
        assert result.returncode != 0 and hint in result.stderr, (args, result.stderr)
    bad_token = cli.env | {"GPUYARD_TOKEN": "gy_nope"}
    result = subprocess.run(["gpuyard", "ps"], env=bad_token, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "token is not valid" in result.stderr


def test_ctrl_c_stops_everything(service) -> None:  # type: ignore[no-untyped-def]
    _, proc, log_path = service
    children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    deadline = time.monotonic() + 10
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"processes left after Ctrl-C: {alive}"
