"""A private RabbitMQ node for `gpuyard up` and the tests.

The node runs `rabbitmq-server` in the foreground as our child, in its own process group, with every
directory (data, logs, generated config, Erlang cookie) under one base folder, so it never touches the
system's node on 5672 and `stop()` can take the whole Erlang VM down with it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from gpuyard.domain.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install RabbitMQ: `sudo apt-get install -y rabbitmq-server` (Debian/Ubuntu), "
    "`sudo dnf install rabbitmq-server` (Fedora) or `brew install rabbitmq` (macOS)."
)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_METHOD_FRAME_CHANNEL_0 = b"\x01\x00\x00"
_CONNECTION_START = b"\x00\x0a\x00\x0a"
_POLL_S = 0.2
_STOP_GRACE_S = 15.0
_KILL_WAIT_S = 5.0
_LOG_TAIL_LINES = 30
_SEARCH_DIRS = ("/usr/sbin", "/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/opt/homebrew/sbin")
# Variables that would make the node read another node's settings; the rest of the environment is kept.
_FOREIGN_ENV = ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS", "ERL_LIBS")


def amqp_reachable(url: str, timeout_s: float = 2.0) -> bool:
    """Whether an AMQP 0-9-1 server answers at the URL's host and port (a Connection.Start comes back)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "amqps"
    port = parts.port or (5671 if tls else 5672)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            raw.settimeout(timeout_s)
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if tls else raw
            sock.sendall(_AMQP_HEADER)
            head = _recv_exactly(sock, 11)
    except (OSError, ValueError):
        return False
    # frame type 1 (method), channel 0, 4 bytes of size, then class 10 (connection) method 10 (start)
    return head[:3] == _METHOD_FRAME_CHANNEL_0 and head[7:11] == _CONNECTION_START


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Whether a server could not bind 127.0.0.1:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like servers: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def find_rabbitmq_server() -> Path | None:
    """The real `rabbitmq-server` start script, or None when RabbitMQ is not installed.

    Debian's /usr/sbin/rabbitmq-server is a wrapper that `su`s to the `rabbitmq` user when run as root (and
    refuses everyone else); the script it wraps, in /usr/lib/rabbitmq/bin, runs as any user, so we use that.
    """
    candidates = [shutil.which("rabbitmq-server"), *(f"{d}/rabbitmq-server" for d in _SEARCH_DIRS)]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        script = Path(candidate).resolve()
        if script.name == "rabbitmq-script-wrapper":
            script = (script.parent / "rabbitmq-server").resolve()
            if script.name == "rabbitmq-script-wrapper" or not os.access(script, os.X_OK):
                continue
        return script
    return None


class LocalRabbitmq:
    """A private RabbitMQ node on 127.0.0.1:`port`, all its state under `base_dir`.

    Use `start()` / `stop()`, or `with LocalRabbitmq(...) as rabbit:` (starts it; `rabbit.url` is the URL).
    """

    def __init__(self, base_dir: Path, *, port: int, dist_port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        self.dist_port = dist_port if dist_port is not None else _default_dist_port(port)
        self.nodename = f"gpuyard-{port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.log_dir = self.base_dir / "log"
        self.console_log = self.log_dir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalRabbitmq:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 60) -> str:
        """Start the node and wait until it answers AMQP; return its URL. Raises BrokerUnavailable."""
        if self.running:
            return self.url
        script = find_rabbitmq_server()
        if script is None:
            raise BrokerUnavailable(
                f"RabbitMQ is not installed, so gpuyard cannot start a broker. {INSTALL_HINT}"
            )
        for port in (self.port, self.dist_port):
            if port_in_use(port):
                raise BrokerUnavailable(
                    f"Port {port} on 127.0.0.1 is already in use, so a private RabbitMQ cannot start there. "
                    "Choose other ports, or stop what holds it (see `ss -ltnp`)."
                )
        env = self._prepare_files()
        logger.info(
            "starting private RabbitMQ %s on port %d (logs in %s)", self.nodename, self.port, self.log_dir
        )
        started = time.monotonic()
        with open(self.console_log, "ab") as console:
            self._proc = subprocess.Popen(
                [str(script)], cwd=self.base_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready(started + timeout_s, timeout_s)
        except BaseException:  # a timeout, or Ctrl-C while waiting: never leave a half-started node
            self.stop()
            raise
        logger.info("private RabbitMQ %s ready after %.1f s", self.nodename, time.monotonic() - started)
        return self.url

    def stop(self) -> None:
        """Stop the node and everything in its process group: SIGTERM, then SIGKILL after 15 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # start_new_session=True made the child the leader of its own group
        logger.info("stopping private RabbitMQ %s", self.nodename)
        _signal_group(group, signal.SIGTERM)
        if not _wait_group_gone(proc, group, _STOP_GRACE_S):
            logger.warning(
                "private RabbitMQ %s still up %.0f s after SIGTERM; killing it", self.nodename, _STOP_GRACE_S
            )
            _signal_group(group, signal.SIGKILL)
            _wait_group_gone(proc, group, _KILL_WAIT_S)

    def kill(self) -> None:
        """Kill the node at once, as a crash would (SIGKILL to its process group). `start()` brings it back
        on the same port, with its durable queues and persistent messages."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        logger.info("killing private RabbitMQ %s", self.nodename)
        _signal_group(proc.pid, signal.SIGKILL)
        _wait_group_gone(proc, proc.pid, _KILL_WAIT_S)

    def _prepare_files(self) -> dict[str, str]:
        for sub in ("log", "mnesia", "schema", "config", "plugins-expand"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("# keeps /etc/rabbitmq/rabbitmq-env.conf out\n")
        cookie = self.base_dir / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(20))
        os.chmod(cookie, 0o400)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_") and k not in _FOREIGN_ENV}
        base = str(self.base_dir)
        env.update(
            HOME=base,  # the node and its CLI tools read $HOME/.erlang.cookie
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=f"{base}/mnesia",
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_LOGS=str(self.log_dir / "rabbit.log"),
            RABBITMQ_SCHEMA_DIR=f"{base}/schema",
            RABBITMQ_GENERATED_CONFIG_DIR=f"{base}/config",
            RABBITMQ_PLUGINS_EXPAND_DIR=f"{base}/plugins-expand",
            RABBITMQ_ENABLED_PLUGINS_FILE=f"{base}/enabled_plugins",
            RABBITMQ_CONFIG_FILE=f"{base}/rabbitmq.conf",
            RABBITMQ_ADVANCED_CONFIG_FILE=f"{base}/advanced.config",
            RABBITMQ_CONF_ENV_FILE=f"{base}/rabbitmq-env.conf",
            RABBITMQ_PID_FILE=f"{base}/rabbitmq.pid",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        env["ERL_CRASH_DUMP"] = str(self.log_dir / "erl_crash.dump")
        env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")  # only used if this node has to start epmd itself
        return env

    def _wait_ready(self, deadline: float, timeout_s: float) -> None:
        assert self._proc is not None
        while not amqp_reachable(self.url, timeout_s=1.0):
            code = self._proc.poll()
            if code is not None:
                raise self._failure(f"exited with status {code} while starting")
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer AMQP within {timeout_s:.0f} s")
            time.sleep(_POLL_S)

    def _failure(self, what: str) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"The private RabbitMQ {self.nodename} on 127.0.0.1:{self.port} {what}.\n"
            f"Last lines of {self.console_log}:\n{_tail(self.console_log, _LOG_TAIL_LINES)}\n"
            f"What to do: read {self.log_dir} for the cause; check that ports {self.port} and "
            f"{self.dist_port} are free and that epmd (port 4369) can run; or run RabbitMQ yourself "
            "(`sudo systemctl start rabbitmq-server`) and point gpuyard at it."
        )


def _default_dist_port(port: int) -> int:
    """RabbitMQ's own rule (AMQP port + 20000) when that port exists and is free, else any free port."""
    candidate = port + 20000
    if candidate <= 65535 and not port_in_use(candidate):
        return candidate
    return free_port()


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(proc: subprocess.Popen[bytes], group: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()
        try:  # also reap members that were re-parented to us (when we are PID 1 or a subreaper)
            os.waitpid(-group, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read it: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"
