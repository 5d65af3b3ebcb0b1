"""A private PostgreSQL cluster for the tests, plus small asyncpg helpers the fixtures use.

As root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root), so the cluster's
folder is handed to that user and must sit somewhere it can reach (e.g. under /tmp, not /root).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from gpuyard.adapters.broker.local import port_in_use

T = TypeVar("T")

INSTALL_HINT = "Install PostgreSQL: `sudo apt-get install -y postgresql` (Debian/Ubuntu)."
_OS_USER = "postgres"
_INITDB_ARGS = ("-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in a fresh thread with its own loop.

    Sync fixtures use this so they never touch the event loop pytest-asyncio gives the test.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as e:  # handed to the caller's thread below
            error.append(e)

    thread = threading.Thread(target=target, name="gpuyard-test-async")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def sqlalchemy_url(url: str) -> str:
    """`postgres://…` / `postgresql://…` / `postgresql+asyncpg://…` → the SQLAlchemy asyncpg form."""
    return re.sub(r"^(postgres|postgresql)(\+\w+)?://", "postgresql+asyncpg://", url)


def asyncpg_dsn(url: str) -> str:
    """Any of the forms above → the `postgresql://…` DSN asyncpg takes."""
    return re.sub(r"^(postgres|postgresql)(\+\w+)?://", "postgresql://", url)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def postgres_accepts(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a PostgreSQL server at `url` lets us in (and run a query)."""
    import asyncpg  # type: ignore[import-untyped]

    async def probe() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout_s)
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    try:
        return run_async(probe)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


def find_pg_bindir() -> Path | None:
    """The bin folder holding initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else the PATH's."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    for d in dirs:
        if all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


class LocalPostgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:`port` with trust auth, all of it under `base_dir`."""

    def __init__(self, base_dir: Path, port: int) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.port = port
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        self._as_root = os.geteuid() == 0
        self._bindir: Path | None = None

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = 60) -> str:
        """initdb (first time only), start the server, wait until it accepts connections; return its URL."""
        if self._bindir is not None:
            return self.url
        bindir = find_pg_bindir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL's initdb and pg_ctl are not installed. {INSTALL_HINT}")
        if port_in_use(self.port):
            raise RuntimeError(
                f"Port {self.port} on 127.0.0.1 is taken; pick another for a private PostgreSQL."
            )
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(bindir / "initdb", "-D", self.data_dir, *_INITDB_ARGS, timeout_s=timeout_s)
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write("\ninclude_if_exists = 'gpuyard.conf'\n")
        self._write_settings()
        wait = ["-w", "-t", str(int(timeout_s))]
        self._run(
            bindir / "pg_ctl",
            "-D",
            self.data_dir,
            "-l",
            self.log_file,
            *wait,
            "start",
            timeout_s=timeout_s + 10,
        )
        self._bindir = bindir
        return self.url

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, nothing is waited for."""
        bindir, self._bindir = self._bindir, None
        if bindir is not None:
            self._run(
                bindir / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "-t", "60", "stop", timeout_s=70
            )

    def _prepare_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            return
        try:
            shutil.chown(self.base_dir, user=_OS_USER, group=_OS_USER)
        except LookupError as e:
            raise RuntimeError(
                f"As root, PostgreSQL must run as the OS user `{_OS_USER}`: missing. {INSTALL_HINT}"
            ) from e
        for parent in self.base_dir.parents:
            if not os.stat(parent).st_mode & 0o001:
                raise RuntimeError(
                    f"{parent} is not searchable by the OS user `{_OS_USER}`, so a private PostgreSQL "
                    f"cannot live in {self.base_dir}; put it under /tmp instead."
                )

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "max_connections": "200",
            # a test cluster: speed over durability
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        path = self.data_dir / "gpuyard.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self._as_root:
            shutil.chown(path, user=_OS_USER, group=_OS_USER)

    def _run(self, *cmd: str | Path, timeout_s: float) -> None:
        argv = [str(c) for c in cmd]
        if self._as_root:
            argv = ["runuser", "-u", _OS_USER, "--", *argv]
        done = subprocess.run(
            argv,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            tail = "\n".join(log.splitlines()[-30:])
            raise RuntimeError(
                f"`{' '.join(argv)}` failed with status {done.returncode}:\n{done.stdout}{done.stderr}"
                f"Last lines of {self.log_file}:\n{tail}"
            )
