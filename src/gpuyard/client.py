"""The typed HTTP client of the gpuyard API, used by the CLI, the UI and the tests.

from gpuyard.client import Client
with Client("http://127.0.0.1:8765", token) as gy:
    job = gy.submit(["python", "train.py"], gpus=2, name="mnist")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from gpuyard.settings import DEFAULT_DATA_DIR


class ApiError(Exception):
    """The API answered with an error: `status`, `code` and a `detail` that says what to do."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} ({status} {code})")
        self.status = status
        self.code = code
        self.detail = detail


class ApiUnreachable(ApiError):
    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(
            0,
            "unreachable",
            f"Cannot reach the gpuyard API at {url} ({error.__class__.__name__}). "
            "Is it running? Start it with `gpuyard up`, or set GPUYARD_URL.",
        )


def discover(data_dir: Path | None = None) -> tuple[str, str | None]:
    """URL and token: GPUYARD_URL / GPUYARD_TOKEN, else what `gpuyard up` wrote in the data dir."""
    data_dir = data_dir or Path(os.environ.get("GPUYARD_DATA_DIR", DEFAULT_DATA_DIR)).expanduser()
    url = os.environ.get("GPUYARD_URL")
    if not url and (data_dir / "api_url").exists():
        url = (data_dir / "api_url").read_text().strip()
    token = os.environ.get("GPUYARD_TOKEN")
    token_file = os.environ.get("GPUYARD_TOKEN_FILE")
    path = Path(token_file) if token_file else data_dir / "admin.token"
    if not token and path.exists():
        token = path.read_text().strip()
    return url or "http://127.0.0.1:8765", token


class Client:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ApiUnreachable(self.url, e) from e
        if response.status_code >= 400:
            raise _error(response)
        return None if response.status_code == 204 else response.json()

    # jobs

    def submit(
        self,
        command: str | Sequence[str],
        *,
        gpus: int = 1,
        priority: str = "normal",
        name: str | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        time_limit_s: int | None = None,
        max_attempts: int | None = None,
        retry_on: Sequence[str] = (),
        preemptible: bool = False,
    ) -> dict[str, Any]:
        body = {
            "command": command if isinstance(command, str) else list(command),
            "gpus": gpus,
            "priority": priority,
            "name": name,
            "workdir": workdir,
            "env": env or {},
            "time_limit_s": time_limit_s,
            "max_attempts": max_attempts,
            "retry_on": list(retry_on),
            "preemptible": preemptible,
        }
        result: dict[str, Any] = self._request("POST", "/api/v1/jobs", json=body)
        return result

    def job(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/jobs/{job_id}")
        return result

    def jobs(
        self,
        *,
        states: Sequence[str] = (),
        user: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        name: str | None = None,
        submitted_after: datetime | None = None,
        submitted_before: datetime | None = None,
    ) -> dict[str, Any]:
        """A page of jobs, newest first; `name` matches part of the name. Pass `next_cursor` as `cursor`."""
        params: dict[str, Any] = {"limit": limit}
        if states:
            params["state"] = ",".join(states)
        if user:
            params["user"] = user
        if cursor:
            params["cursor"] = cursor
        if name:
            params["name"] = name
        if submitted_after is not None:
            params["submitted_after"] = submitted_after.isoformat()
        if submitted_before is not None:
            params["submitted_before"] = submitted_before.isoformat()
        result: dict[str, Any] = self._request("GET", "/api/v1/jobs", params=params)
        return result

    def cancel(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", f"/api/v1/jobs/{job_id}/cancel")
        return result

    def hold(self, job_id: int) -> dict[str, Any]:
        """Hold a waiting job: it keeps its place in line but does not start until released."""
        result: dict[str, Any] = self._request("POST", f"/api/v1/jobs/{job_id}/hold")
        return result

    def release(self, job_id: int) -> dict[str, Any]:
        """Release a held job: it starts when its turn comes."""
        result: dict[str, Any] = self._request("POST", f"/api/v1/jobs/{job_id}/release")
        return result

    def set_priority(self, job_id: int, priority: str) -> dict[str, Any]:
        """Give a waiting job another priority: low | normal | high | urgent."""
        result: dict[str, Any] = self._request(
            "POST", f"/api/v1/jobs/{job_id}/priority", json={"priority": priority}
        )
        return result

    def wait(self, job_id: int) -> dict[str, Any]:
        """Where a waiting job stands: place in line, estimated start and its band, and why it waits."""
        result: dict[str, Any] = self._request("GET", f"/api/v1/jobs/{job_id}/wait")
        return result

    def logs(self, job_id: int, *, offset: int = 0, attempt: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        result: dict[str, Any] = self._request("GET", f"/api/v1/jobs/{job_id}/logs", params=params)
        return result

    def follow_logs(self, job_id: int, *, offset: int = 0) -> Iterator[str]:
        """The job's output as it comes, until the job ends."""
        try:
            with self._http.stream(
                "GET",
                f"/api/v1/jobs/{job_id}/logs/follow",
                params={"offset": offset},
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                yield from response.iter_text()
        except httpx.TransportError as e:
            raise ApiUnreachable(self.url, e) from e

    def queue(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/v1/queue")
        return result

    def gpus(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/v1/gpus")
        return result

    # retries and dead letters

    def requeue(self, job_id: int) -> dict[str, Any]:
        """Send a failed or timed-out job back in line."""
        result: dict[str, Any] = self._request("POST", f"/api/v1/jobs/{job_id}/requeue")
        return result

    def dead_letters(self, *, include_requeued: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        params = {"include_requeued": include_requeued, "limit": limit}
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/dead", params=params)
        return result

    def requeue_dead(self, dead_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", f"/api/v1/dead/{dead_id}/requeue")
        return result

    # observability

    def job_series(
        self, job_id: int, *, attempt: int | None = None, max_points: int = 1000
    ) -> dict[str, Any]:
        """A job's GPU usage and reported metrics over time."""
        params: dict[str, Any] = {"max_points": max_points}
        if attempt is not None:
            params["attempt"] = attempt
        result: dict[str, Any] = self._request("GET", f"/api/v1/jobs/{job_id}/series", params=params)
        return result

    def gpu_usage(self, *, minutes: int = 60) -> dict[str, Any]:
        """Every GPU's utilization and memory over the last `minutes`."""
        result: dict[str, Any] = self._request("GET", "/api/v1/gpus/usage", params={"minutes": minutes})
        return result

    def metrics_text(self) -> str:
        """The Prometheus exposition of /metrics."""
        try:
            response = self._http.get("/metrics")
        except httpx.TransportError as e:
            raise ApiUnreachable(self.url, e) from e
        if response.status_code != 200:
            raise _error(response)
        return response.text

    def add_webhook(
        self,
        url: str,
        *,
        events: list[str] | None = None,
        format: str = "json",
        all_jobs: bool = False,
        secret: str | None = None,
    ) -> dict[str, Any]:
        body = {"url": url, "events": events, "format": format, "all_jobs": all_jobs, "secret": secret}
        result: dict[str, Any] = self._request("POST", "/api/v1/webhooks", json=body)
        return result

    def webhooks(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/api/v1/webhooks")
        return result

    def remove_webhook(self, hook_id: int) -> None:
        self._request("DELETE", f"/api/v1/webhooks/{hook_id}")

    def webhook_deliveries(self, hook_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request(
            "GET", f"/api/v1/webhooks/{hook_id}/deliveries", params={"limit": limit}
        )
        return result

    # users and health

    def add_user(self, name: str, *, is_admin: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "POST", "/api/v1/users", json={"name": name, "is_admin": is_admin}
        )
        return result

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/api/v1/me")
        return result

    def ready(self) -> dict[str, Any]:
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError as e:
            raise ApiUnreachable(self.url, e) from e
        result: dict[str, Any] = response.json()
        return result


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        return ApiError(response.status_code, str(body.get("error", "error")), str(body.get("detail", body)))
    except ValueError:
        return ApiError(response.status_code, "error", response.text[:500] or response.reason_phrase)
