"""A fake trainer for the fault-injection tests. Standard library only: run it with `sys.executable`.

    python trainer.py --ledger FILE [--run-s S] [--fail-first N] [--ignore-sigterm]

It runs for S seconds, then exits 0, or 3 while `$GPUYARD_ATTEMPT` <= N (so the first N attempts fail).
With --ignore-sigterm it keeps running through SIGTERM (only SIGKILL stops it).

It appends one JSON line per record to the ledger (opened O_APPEND, one write per line, so records of
concurrent trainers never mix): `start`, a `beat` every 0.2 s, and `end` (with `rc`, or `signal` when a
SIGTERM stopped it). A killed attempt has no `end`: its last `beat` says when it was last alive.
`read_ledger` turns the file back into one `Run` per started process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BEAT_S = 0.2
FAIL_EXIT = 3


@dataclass
class Run:
    """One started process of one attempt, as the ledger tells it."""

    job_id: int
    attempt: int
    pid: int
    started_at: float
    last_seen_at: float  # its end, or its last heartbeat when it was killed
    rc: int | None = None  # None: killed (SIGKILL) or stopped by SIGTERM
    signal: int | None = None

    @property
    def ended(self) -> bool:
        return self.rc is not None or self.signal is not None


def read_ledger(path: Path) -> list[Run]:
    runs: dict[tuple[int, int, int], Run] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short when the file was read mid-write
        key = (int(rec["job"]), int(rec["attempt"]), int(rec["pid"]))
        at = float(rec["t"])
        run = runs.get(key)
        if run is None:
            run = runs[key] = Run(key[0], key[1], key[2], started_at=at, last_seen_at=at)
        run.last_seen_at = max(run.last_seen_at, at)
        if rec["ev"] == "start":
            run.started_at = min(run.started_at, at)
        elif rec["ev"] == "end":
            run.rc, run.signal = rec.get("rc"), rec.get("signal")
    return sorted(runs.values(), key=lambda r: (r.job_id, r.started_at))


class Ledger:
    def __init__(self, path: str, *, job_id: int, attempt: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._base = {"job": job_id, "attempt": attempt, "pid": os.getpid()}

    def write(self, event: str, **fields: object) -> None:
        """One write of one short line: appended whole (no lock, so a signal handler may write too)."""
        line = json.dumps({**self._base, "ev": event, "t": time.time(), **fields}) + "\n"
        os.write(self._fd, line.encode())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--run-s", type=float, default=0.5)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args(argv)

    job_id = int(os.environ.get("GPUYARD_JOB_ID", "0"))
    attempt = int(os.environ.get("GPUYARD_ATTEMPT", "1"))
    ledger = Ledger(args.ledger, job_id=job_id, attempt=attempt)
    stopping = threading.Event()

    def on_term(_signum: int, _frame: object) -> None:
        if args.ignore_sigterm:
            ledger.write("sigterm-ignored")
            return
        ledger.write("end", signal=signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    ledger.write("start")
    print(f"job {job_id} attempt {attempt}: start", flush=True)

    def beat() -> None:
        while not stopping.wait(BEAT_S):
            ledger.write("beat")

    threading.Thread(target=beat, daemon=True).start()
    deadline = time.monotonic() + args.run_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, BEAT_S))
    stopping.set()
    rc = FAIL_EXIT if attempt <= args.fail_first else 0
    ledger.write("end", rc=rc)
    print(f"job {job_id} attempt {attempt}: exit {rc}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
