"""Start the Streamlit server of the web UI (`gpuyard ui`), and wait for it to answer (`gpuyard up`)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx

APP = Path(__file__).resolve().parent / "app.py"
SERVER = Path(__file__).resolve().parent / "server.py"  # app.py, plus the route of remember.py


def streamlit_argv(*, host: str, port: int) -> list[str]:
    """The command line of the UI server: headless, no usage statistics, no file watching, and no
    error details in the page (the UI shows errors in words; details go to its log)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SERVER),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--theme.base",
        "light",
        "--logger.hideWelcomeMessage",
        "true",
        "--logger.level",
        "warning",
    ]


def ui_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, *, timeout_s: float, alive: object = None) -> bool:
    """True once the UI server answers its health check; False after `timeout_s` or when `alive()`
    says the process is gone."""
    return wait_answering(f"{url}/_stcore/health", timeout_s=timeout_s, alive=alive)


def wait_answering(url: str, *, timeout_s: float, alive: object = None) -> bool:
    """True once `url` answers 200; False after `timeout_s`, or as soon as `alive()` is false (the server
    process is gone, or nobody waits any longer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False
