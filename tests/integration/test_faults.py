"""Fault injection (issue 4): the real controller, two workers and a private RabbitMQ, reached through a TCP
proxy, run a stream of jobs (tests/support/trainer.py) while processes are killed (-9), frozen (SIGSTOP)
and cut off, and poison messages arrive. Then the whole history is checked: every accepted job reached a
final state, none was lost, no two attempts of a job ran at the same time (the trainers' ledger), and the
retries and dead letters are what the policy says.

It prints a table (pytest -s shows it) and writes it to test-artifacts/faults.txt. Recovery times are
printed against their targets, not asserted: only correctness is.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuyard.adapters.broker.local import LocalRabbitmq, find_rabbitmq_server, free_port
from tests.support.fault_rig import KILL_GRACE_S, Rig, Submitter
from tests.support.faults import (
    FINAL_STATES,
    JobPlan,
    Summary,
    disturbed,
    job_plans,
    overlaps,
    policy_problems,
    table,
    undisturbed_outcome_problems,
)
from tests.support.stack import Stack, wait_for
from tests.support.tcp_proxy import TcpProxy
from tests.support.trainer import Run, read_ledger

pytestmark = pytest.mark.integration

LEASE_S = 6.0  # supervisors fence after max(6 - 1 - 5, 6 / 2) = 3 s without a heartbeat getting through
JOBS = 220
SUBMIT_EVERY_S = 0.7
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ENV = {
    "GPUYARD_NODE_LEASE_S": str(LEASE_S),
    "GPUYARD_KILL_GRACE_S": str(KILL_GRACE_S),
    "GPUYARD_RETRY_BACKOFF_S": "0.2",
    "GPUYARD_HEARTBEAT_INTERVAL_S": "0.5",
    "GPUYARD_SCHEDULER_TICK_S": "1",
    "GPUYARD_STOP_JOBS_ON_EXIT": "false",
}


def schedule(rig: Rig) -> list[Callable[[], None]]:
    """32 faults, each kind spread over the run, on both workers."""
    a, b = "worker", "worker-b"
    short, mid, long = 1.5, 4.5, LEASE_S + 2
    return [
        rig.send_poison,
        rig.drop_connections,
        lambda: rig.kill_worker(a, away_s=0),
        lambda: rig.freeze_worker(b, for_s=short),
        rig.kill_controller,
        lambda: rig.freeze_worker(a, for_s=long),
        rig.kill_broker,
        rig.send_poison,
        rig.drop_connections,
        lambda: rig.kill_worker(b, away_s=0),
        lambda: rig.freeze_worker(a, for_s=mid),
        lambda: rig.kill_worker(a, away_s=LEASE_S + 2),
        lambda: rig.kill_controller(down_s=3),
        rig.drop_connections,
        rig.send_poison,
        lambda: rig.freeze_worker(b, for_s=short),
        lambda: rig.kill_worker(b, away_s=0),
        rig.kill_broker,
        lambda: rig.freeze_worker(b, for_s=long),
        rig.kill_controller,
        rig.drop_connections,
        lambda: rig.kill_worker(b, away_s=LEASE_S + 2),
        rig.send_poison,
        lambda: rig.freeze_worker(a, for_s=mid),
        lambda: rig.kill_worker(a, away_s=0),
        rig.kill_broker,
        rig.drop_connections,
        rig.kill_controller,
        lambda: rig.freeze_worker(a, for_s=short),
        rig.send_poison,
        lambda: rig.kill_worker(a, away_s=0),
        rig.drop_connections,
    ]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    if find_rabbitmq_server() is None:
        pytest.skip("the fault suite kills and restarts a RabbitMQ of its own: install rabbitmq-server")
    with (
        LocalRabbitmq(tmp_path / "rabbitmq", port=free_port()) as rabbit,
        TcpProxy(upstream_port=rabbit.port) as proxy,
    ):
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=1"
        stack = Stack(tmp_path / "stack", url, fake_gpus=4, extra_env=ENV)
        try:
            stack.start()
            rig = Rig(stack, rabbit, proxy, ledger=tmp_path / "ledger.jsonl", lease_s=LEASE_S)
            rig.start_worker("worker-b")
            wait_for(lambda: len(rig.last_seen()) == 2, timeout_s=60, what="both workers' heartbeats")
            yield rig
            rig.api.close()
        except BaseException:
            for name in ("controller", "worker", "worker-b"):
                print(f"--- {name} log ---\n{stack.log(name)}")
            raise
        finally:
            for proc in stack.procs.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
            rabbit.start()  # if a fault left it down
            stack.nodes.add(f"{stack.node}-b")
            stack.stop()


def test_no_job_is_lost_or_run_twice_through_32_faults(rig: Rig) -> None:
    print(f"service logs: {rig.stack.base}")
    started = time.monotonic()
    plans = job_plans(JOBS)
    submitter = Submitter(rig, plans, every_s=SUBMIT_EVERY_S)
    submitter.start()
    for inject in schedule(rig):
        inject()
        time.sleep(0.5)  # a pause between faults, not a wait for anything
    submitter.join(timeout=JOBS * SUBMIT_EVERY_S + 120)
    assert submitter.error is None, f"submitting failed: {submitter.error!r}"
    assert not submitter.is_alive()
    wait_for(
        lambda: all(j["state"] in FINAL_STATES for j in rig.all_jobs()),
        timeout_s=180,
        what="every job to reach a final state",
    )

    jobs = {int(j["id"]): rig.api.job(int(j["id"])) for j in rig.all_jobs()}
    dead_jobs = [int(d["job_id"]) for d in rig.api.dead_letters(limit=1000) if d["kind"] == "job"]
    runs = read_ledger(rig.ledger)
    lost = [i for i in submitter.accepted if i not in jobs or jobs[i]["state"] not in FINAL_STATES]
    found_overlaps = overlaps(runs)
    problems = history_problems({p.name: p for p in plans}, jobs, runs, dead_jobs)
    recorded = rig.dead_messages()
    unrecorded = [m for m in rig.poison if m not in recorded]
    orphans = _still_running(runs)
    for fault in rig.faults:  # the first job start after each broker restart, from the ledger
        if fault.kind.startswith("kill -9 broker"):
            later = [r.started_at for r in runs if r.started_at > fault.at]
            fault.next_start_s = min(later) - fault.at if later else None
    summary = Summary(
        faults=rig.faults,
        submitted=len(plans),
        accepted=len(submitter.accepted),
        unacknowledged=len(set(jobs) - set(submitter.accepted)),
        final=sum(j["state"] in FINAL_STATES for j in jobs.values()),
        lost=len(lost),
        overlapping=len(found_overlaps),
        attempts=sum(len(j["attempts"] or []) for j in jobs.values()),
        disturbed=sum(disturbed(j) for j in jobs.values()),
        succeeded=sum(j["state"] == "succeeded" for j in jobs.values()),
        dead_letters=len(dead_jobs),
        poison_recorded=len(rig.poison) - len(unrecorded),
        poison_sent=len(rig.poison),
        wall_s=time.monotonic() - started,
        lease_s=LEASE_S,
    )
    report(summary)

    assert lost == [], f"jobs lost: {lost}"
    assert found_overlaps == [], "\n".join(found_overlaps)
    assert orphans == [], f"job processes still running after every job ended: {orphans}"
    assert problems == [], "\n".join(problems)
    assert unrecorded == [], f"poison messages not recorded as dead letters: {unrecorded}"
    assert rig.readyz_lied == 0, "/readyz said ok while RabbitMQ was down"
    assert len(rig.faults) >= 30 and len(jobs) >= 200
    again = {int(j["id"]): (j["state"], j["attempt"]) for j in rig.all_jobs()}
    assert again == {i: (j["state"], j["attempt"]) for i, j in jobs.items()}, "a final job changed"


def history_problems(
    plans: dict[str, JobPlan], jobs: dict[int, dict[str, Any]], runs: list[Run], dead_jobs: list[int]
) -> list[str]:
    """What in the jobs' histories breaks the retry policy, or disagrees with what their trainers did."""
    problems: list[str] = []
    dead = set(dead_jobs)
    for job_id, job in jobs.items():
        plan = plans[job["name"]]
        problems += policy_problems(plan, job, [r for r in runs if r.job_id == job_id], dead)
        if not disturbed(job):
            problems += undisturbed_outcome_problems(plan, job, dead)
    if len(dead_jobs) != len(dead):
        problems.append(f"a job was dead-lettered twice: {sorted(dead_jobs)}")
    return problems


def report(summary: Summary) -> None:
    """Print the table and keep it in test-artifacts/faults.txt."""
    text = table(summary)
    notes = [f"  {f.kind} ({f.target}): {', '.join(f.notes)}" for f in summary.faults if f.notes]
    text += "\nnotes:\n" + "\n".join(notes) + "\n"
    print("\n" + text)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.txt").write_text(text)


def _still_running(runs: list[Run]) -> list[int]:
    """Trainer processes of the ledger that are alive (after a grace for those being killed)."""

    def alive() -> list[int]:
        pids = []
        for run in runs:
            try:
                cmdline = Path(f"/proc/{run.pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"trainer.py" in cmdline:
                pids.append(run.pid)
        return pids

    try:
        wait_for(lambda: not alive(), timeout_s=10, what="the last job processes to go")
    except AssertionError:
        return alive()
    return []
