"""The supervisor of one job attempt: a small process that outlives the worker.

    python -I -S .../gpuyard/adapters/runner/supervisor.py STATE_DIR

It starts the job in a session (and process group) of its own, with its output appended to a file, enforces
the time limit, stops the job when asked (SIGTERM to the supervisor, the reason in STATE_DIR/stop), and
writes how the job ended to STATE_DIR/status.json, atomically. It also fences: the worker touches a lease
file each time a heartbeat got through; when that file is older than `fence_s` (the worker is dead, stopped
or cut off), the supervisor stops the job, before the controller's lease runs out and the job runs again
elsewhere. The worker talks to it through these files
only, so a worker that restarts finds the job running, or finds how it ended while the worker was away.

Files in STATE_DIR: spec.json (written by the worker: argv, env, workdir, output, time_limit_s,
kill_grace_s, lease_file, fence_s), supervisor.json and job.json (pid and start time of each, to tell a
live process from a reused pid), stop (the reason) and stop_grace_s (its own grace period, optional: a
preemption's), status.json. Standard library only, run by its path without
site-packages: it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

POLL_S = 0.1


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if there is no such process. A pid that was
    reused by another process after a restart has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(record: dict[str, Any] | None) -> bool:
    """Whether the process in a `{"pid", "start_ticks"}` record still runs (a zombie counts as ended)."""
    if not record:
        return False
    pid = int(record["pid"])
    if process_start_ticks(pid) != record.get("start_ticks"):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file, or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Supervisor:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        spec = read_json(state_dir / "spec.json")
        if spec is None:
            raise SystemExit(f"supervisor: no readable spec.json in {state_dir}")
        self.spec = spec
        self.stop_requested = False
        self.stop_reason: str | None = None
        self.kill_at: float | None = None

    def request_stop(self, *_: object) -> None:
        self.stop_requested = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the worker's terminal
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        me = os.getpid()
        write_json(self.dir / "supervisor.json", {"pid": me, "start_ticks": process_start_ticks(me)})
        spec = self.spec
        output = os.open(spec["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            job = subprocess.Popen(
                spec["argv"],
                cwd=spec["workdir"],
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except OSError as e:
            write_json(
                self.dir / "status.json", {"launch_error": _launch_error(spec, e), "ended_at": time.time()}
            )
            return 0
        finally:
            os.close(output)
        write_json(self.dir / "job.json", {"pid": job.pid, "start_ticks": process_start_ticks(job.pid)})
        returncode = self._watch(job)
        with contextlib.suppress(OSError):  # what the job left behind in its group dies with it
            os.killpg(job.pid, signal.SIGKILL)
        status = {
            "exit_code": returncode if returncode >= 0 else None,
            "signal": -returncode if returncode < 0 else None,
            "stop_reason": self.stop_reason,
            "ended_at": time.time(),
        }
        write_json(self.dir / "status.json", status)
        return 0

    def _watch(self, job: subprocess.Popen[bytes]) -> int:
        """Wait for the job (blocking, so its end is seen at once) while a thread enforces the rest."""
        done = threading.Event()
        watcher = threading.Thread(target=self._enforce, args=(job, done), daemon=True)
        watcher.start()
        try:
            return job.wait()
        finally:
            done.set()
            watcher.join()

    def _enforce(self, job: subprocess.Popen[bytes], done: threading.Event) -> None:
        """Stop requests, the time limit, the lease, and SIGKILL after the grace period."""
        limit_s = self.spec.get("time_limit_s")
        deadline = time.monotonic() + limit_s if limit_s else None
        while not done.wait(POLL_S):
            now = time.monotonic()
            if self.stop_requested:
                self.stop_requested = False
                self._stop(job, self._requested_reason(), grace_s=self._requested_grace_s())
            elif self.stop_reason is None:
                if deadline is not None and now >= deadline:
                    self._stop(job, "timed_out")
                elif self._lease_expired():
                    self._stop(job, "fenced")
            elif self.kill_at is not None and now >= self.kill_at:
                with contextlib.suppress(OSError):
                    os.killpg(job.pid, signal.SIGKILL)
                self.kill_at = None

    def _lease_expired(self) -> bool:
        lease, fence_s = self.spec.get("lease_file"), self.spec.get("fence_s")
        if not lease or not fence_s:
            return False
        try:
            renewed = os.stat(lease).st_mtime
        except OSError:
            return False  # never written: nothing to go by
        return time.time() - renewed > float(fence_s)

    def _requested_reason(self) -> str:
        try:
            return (self.dir / "stop").read_text().strip() or "cancelled"
        except OSError:
            return "cancelled"

    def _requested_grace_s(self) -> float | None:
        """The grace period the worker gave this stop (a preemption's), if any."""
        try:
            return max(0.0, float((self.dir / "stop_grace_s").read_text()))
        except (OSError, ValueError):
            return None

    def _stop(self, job: subprocess.Popen[bytes], reason: str, *, grace_s: float | None = None) -> None:
        """SIGTERM now, SIGKILL after the grace period. A second stop does not signal again: a cancel takes
        over from a preemption (it ends cancelled), and it can bring the SIGKILL closer, never later."""
        grace_s = float(self.spec.get("kill_grace_s", 10.0)) if grace_s is None else grace_s
        kill_at = time.monotonic() + grace_s
        if self.stop_reason is not None:
            if (self.stop_reason, reason) == ("preempted", "cancelled"):
                self.stop_reason = reason
            if self.kill_at is not None:
                self.kill_at = min(self.kill_at, kill_at)
            return
        self.stop_reason = reason
        with contextlib.suppress(OSError):
            os.killpg(job.pid, signal.SIGTERM)
        self.kill_at = kill_at


def _launch_error(spec: dict[str, Any], e: OSError) -> str:
    program = spec["argv"][0]
    if isinstance(e, FileNotFoundError) and not os.path.isdir(spec["workdir"]):
        return f"working directory {spec['workdir']} does not exist on this node"
    if isinstance(e, FileNotFoundError):
        return f"program {program!r} not found on this node ({e.strerror})"
    if isinstance(e, PermissionError):
        return f"program {program!r} cannot be executed: {e.strerror}"
    return f"cannot start {program!r}: {e}"


def main(argv: list[str]) -> int:
    """`supervisor.py STATE_DIR`, or `supervisor.py --spare`: started ahead of need, it waits for its state
    directory on stdin (one line), so a job starts without waiting for an interpreter to start; EOF (the
    worker went away) ends it."""
    if argv[1:] == ["--spare"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        line = sys.stdin.readline().strip()
        if not line:
            return 0
        state_dir = Path(line)
        log = os.open(state_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
    else:
        state_dir = Path(argv[1])
    return Supervisor(state_dir).run()


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stderr.flush()
    os._exit(code)  # at once: the worker takes this exit as the sign that the job's status is written
