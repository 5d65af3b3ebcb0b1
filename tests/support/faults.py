"""The pure half of the fault-injection suite: the jobs it submits, the checks of the history it recorded
(from the trainer's ledger and the API), and the table it prints. No processes, no clock: the live test
(tests/integration/test_faults.py) gathers the records, these functions judge them."""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.trainer import FAIL_EXIT, Run

TRAINER = Path(__file__).with_name("trainer.py")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
INFRASTRUCTURE = frozenset({"node_lost", "gpu_unavailable"})


@dataclass(frozen=True)
class JobPlan:
    """What one submitted job does (see tests/support/trainer.py) and what it asks of the retry policy."""

    name: str
    run_s: float
    fail_first: int = 0
    max_attempts: int = 3
    retry_on: bool = False
    ignore_sigterm: bool = False

    def command(self, ledger: Path) -> list[str]:
        argv = [sys.executable, str(TRAINER), "--ledger", str(ledger), "--run-s", f"{self.run_s:g}"]
        argv += ["--fail-first", str(self.fail_first)]
        return argv + (["--ignore-sigterm"] if self.ignore_sigterm else [])

    def submit_args(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_attempts": self.max_attempts,
            "retry_on": ["exit_nonzero"] if self.retry_on else [],
        }


def job_plans(count: int) -> list[JobPlan]:
    """A fixed mix, in a fixed order: mostly short plain jobs; jobs that fail N times with `max_attempts`
    above N (they succeed on retry) and at or below N (dead letters); jobs that ignore SIGTERM; long ones."""
    plans = []
    for i in range(count):
        kind, name = i % 20, f"f{i:04d}"
        if kind in (3, 9, 15):  # fails N times, then succeeds within its attempts
            n = 1 + i % 2
            plans.append(JobPlan(name, 0.3, fail_first=n, max_attempts=n + 1 + (i % 3 == 0), retry_on=True))
        elif kind in (6, 17):  # fails N times, N >= max_attempts: a dead letter
            n = 2 + i % 2
            plans.append(JobPlan(name, 0.3, fail_first=n, max_attempts=2, retry_on=True))
        elif kind == 12:  # fails once and did not ask for retries: failed, not a dead letter
            plans.append(JobPlan(name, 0.3, fail_first=1))
        elif kind in (4, 14):  # ignores SIGTERM: only the SIGKILL after the grace stops it
            plans.append(JobPlan(name, 1.5 + (i % 3) * 0.5, ignore_sigterm=True))
        elif kind == 19:  # long, and half of them ignore SIGTERM
            plans.append(JobPlan(name, 5.0 + (i % 3), ignore_sigterm=i % 40 == 19, max_attempts=5))
        else:
            plans.append(JobPlan(name, 0.2 + (i % 5) * 0.15))
    return plans


def overlaps(runs: list[Run]) -> list[str]:
    """Pairs of processes of one job that were alive at the same time, and attempts started twice.

    A run's end is its `end` record, or (killed) its last heartbeat."""
    found = []
    by_job: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    for job_id, job_runs in sorted(by_job.items()):
        job_runs.sort(key=lambda r: r.started_at)
        attempts = [r.attempt for r in job_runs]
        for attempt in sorted({a for a in attempts if attempts.count(a) > 1}):
            found.append(f"job {job_id}: attempt {attempt} was started {attempts.count(attempt)} times")
        for earlier, later in zip(job_runs, job_runs[1:], strict=False):
            if later.started_at < earlier.last_seen_at:
                found.append(
                    f"job {job_id}: attempt {later.attempt} (pid {later.pid}) started "
                    f"{earlier.last_seen_at - later.started_at:.2f} s before attempt {earlier.attempt} "
                    f"(pid {earlier.pid}) was last seen"
                )
    return found


def policy_problems(plan: JobPlan, job: dict[str, Any], runs: list[Run], dead_job_ids: set[int]) -> list[str]:
    """What in a final job's history disagrees with the retry policy (docs/architecture.md) or with what its
    trainer really did. `runs`: the ledger's runs of this job."""
    problems: list[str] = []
    attempts = sorted(job["attempts"] or [], key=lambda a: int(a["number"]))
    say = f"job {job['id']} ({plan.name}, fail_first={plan.fail_first}, max_attempts={plan.max_attempts})"
    if job["state"] not in FINAL_STATES:
        return [f"{say}: not final but {job['state']}"]
    if [int(a["number"]) for a in attempts] != list(range(1, len(attempts) + 1)) or not attempts:
        return [f"{say}: attempts {[a['number'] for a in attempts]}"]
    if int(job["attempt"]) != len(attempts):
        problems.append(f"{say}: its attempt is {job['attempt']} of {len(attempts)}")
    ends = {r.attempt: r.rc for r in runs if r.rc is not None}
    counted = 0
    for a in attempts:
        number, failure, last = int(a["number"]), a["failure_class"], a is attempts[-1]
        if failure is None or failure == "exit_nonzero":  # the trainer ran to its end: it must say so
            want = FAIL_EXIT if number <= plan.fail_first else 0
            if ends.get(number) != want or (failure is None) != (want == 0):
                problems.append(
                    f"{say}: attempt {number} is {failure or 'a success'} in the API, but its trainer "
                    f"ended with {ends.get(number, 'no end')} (expected {want})"
                )
        if failure != "gpu_unavailable":
            counted += 1
        retryable = failure in INFRASTRUCTURE or (failure == "exit_nonzero" and plan.retry_on)
        budget_left = failure == "gpu_unavailable" or counted < plan.max_attempts
        if not last:
            if not (retryable and budget_left):
                problems.append(f"{say}: attempt {number} ({failure}) was retried, against the policy")
            continue
        if failure is None:
            want_state, want_dead = "succeeded", False
        elif retryable and budget_left:
            problems.append(f"{say}: its last attempt ({failure}) should have been retried")
            continue
        else:
            want_state, want_dead = "failed", retryable
        if job["state"] != want_state or (int(job["id"]) in dead_job_ids) != want_dead:
            problems.append(
                f"{say}: ended {job['state']} (dead letter: {int(job['id']) in dead_job_ids}) after "
                f"{failure or 'success'} on attempt {number}; the policy says {want_state} (dead letter: "
                f"{want_dead})"
            )
    return problems


def undisturbed_outcome_problems(plan: JobPlan, job: dict[str, Any], dead_job_ids: set[int]) -> list[str]:
    """For a job no fault touched (every attempt ran to its end): N < max_attempts failures and retry_on
    means success on attempt N + 1; N >= max_attempts means a dead letter after max_attempts."""
    n, dead = plan.fail_first, int(job["id"]) in dead_job_ids
    if n == 0 or (plan.retry_on and n < plan.max_attempts):
        want = ("succeeded", n + 1, False)
    elif plan.retry_on:
        want = ("failed", plan.max_attempts, True)
    else:
        want = ("failed", 1, False)
    got = (job["state"], int(job["attempt"]), dead)
    if got != want:
        return [f"job {job['id']} ({plan.name}): (state, attempts, dead letter) {got}, expected {want}"]
    return []


def disturbed(job: dict[str, Any]) -> bool:
    """Whether a fault cut one of its attempts short."""
    return any(a["failure_class"] in INFRASTRUCTURE for a in job["attempts"] or [])


@dataclass
class FaultRecord:
    kind: str
    target: str = ""
    at: float = 0.0  # when it was injected (time.time())
    recovered_s: float | None = None  # until what it broke works again (see the test)
    next_start_s: float | None = None  # until the next job started (broker restarts)
    notes: list[str] = field(default_factory=list)


@dataclass
class Summary:
    faults: list[FaultRecord]
    submitted: int
    accepted: int
    unacknowledged: int  # jobs that exist although their submission got no answer
    final: int
    lost: int
    overlapping: int
    attempts: int
    disturbed: int
    succeeded: int
    dead_letters: int
    poison_recorded: int
    poison_sent: int
    wall_s: float
    lease_s: float


TARGETS = {
    "kill -9 worker, restart": "lease + 30 s",
    "kill -9 worker, away > lease": "lease + 30 s",
    "kill -9 broker, restart": "15 s",
}


def table(summary: Summary) -> str:
    """The report the suite prints: per kind of fault, how many and how long until recovered."""
    by_kind: dict[str, list[FaultRecord]] = defaultdict(list)
    for fault in summary.faults:
        by_kind[fault.kind].append(fault)
    lines = [
        f"{'fault':<34} {'count':>5} {'recovery median':>16} {'max':>7}  target",
        "-" * 80,
    ]
    for kind, faults in by_kind.items():
        times = [f.recovered_s for f in faults if f.recovered_s is not None]
        median = f"{statistics.median(times):.1f} s" if times else "-"
        worst = f"{max(times):.1f} s" if times else "-"
        target = TARGETS.get(kind, "")
        if target.startswith("lease"):
            target += f" = {summary.lease_s + 30:.0f} s"
        lines.append(f"{kind:<34} {len(faults):>5} {median:>16} {worst:>7}  {target}")
        starts = [f.next_start_s for f in faults if f.next_start_s is not None]
        if starts:
            lines.append(
                f"{'  ... to the next job start':<34} {'':>5} {statistics.median(starts):>14.1f} s "
                f"{max(starts):>5.1f} s  15 s"
            )
    s = summary
    lines += [
        "-" * 80,
        f"faults injected       {len(s.faults)}",
        f"jobs submitted        {s.submitted} (accepted {s.accepted}; created without an answer "
        f"{s.unacknowledged})",
        f"jobs final            {s.final} (succeeded {s.succeeded}, dead letters {s.dead_letters}; "
        f"{s.disturbed} with an attempt cut short by a fault)",
        f"attempts              {s.attempts}",
        f"jobs lost             {s.lost}",
        f"overlapping attempts  {s.overlapping}",
        f"poison messages       {s.poison_sent} sent, {s.poison_recorded} recorded as dead letters",
        f"wall time             {s.wall_s:.0f} s",
    ]
    return "\n".join(lines)
