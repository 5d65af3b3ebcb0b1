"""The API's contract on the real controller: auth, ownership, bad input (clear 4xx, nothing accepted
changes), pagination, logs with offsets and the follow stream, OpenAPI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gpuyard.client import ApiError
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str):  # type: ignore[no-untyped-def]
    with running_stack(tmp_path_factory.mktemp("api"), amqp_url) as s:
        yield s


def raw(stack: Stack, method: str, path: str, token: str | None = None, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, stack.url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_every_route_but_health_needs_a_valid_token(stack: Stack) -> None:
    for method, path in [
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/queue"),
        ("GET", "/api/v1/gpus"),
        ("GET", "/api/v1/jobs/1"),
        ("POST", "/api/v1/jobs/1/cancel"),
        ("GET", "/api/v1/jobs/1/logs"),
        ("POST", "/api/v1/users"),
    ]:
        for token in (None, "gy_wrong"):
            response = raw(stack, method, path, token, json={})
            assert response.status_code == 401, (method, path, response.text)
            body = response.json()
            assert body["error"] == "not_authenticated" and "token" in body["detail"]
    assert raw(stack, "GET", "/healthz").status_code == 200
    assert raw(stack, "GET", "/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}


def test_users_see_and_cancel_only_their_own_jobs(stack: Stack, alice: str, bob: str) -> None:
    with stack.client(alice) as a, stack.client(bob) as b, stack.admin() as admin:
        job = a.submit("sleep 60", gpus=1, name="alices")
        for call in (lambda: b.job(job["id"]), lambda: b.cancel(job["id"]), lambda: b.logs(job["id"])):
            with pytest.raises(ApiError) as info:
                call()
            assert info.value.status == 403 and "belongs to alice" in info.value.detail
        assert job["id"] not in {j["id"] for j in b.jobs()["data"]}
        with pytest.raises(ApiError) as info:
            b.jobs(user="alice")
        assert info.value.status == 403
        with pytest.raises(ApiError) as info:
            b.add_user("mallory", is_admin=True)
        assert info.value.status == 403
        assert job["id"] in {j["id"] for j in admin.jobs(user="alice")["data"]}
        assert (
            any(q["id"] == job["id"] for q in b.queue()["data"]) or stack.job(job["id"])["state"] != "queued"
        )
        assert admin.cancel(job["id"])["id"] == job["id"]
        stack.wait_state(job["id"], "cancelled")
        with pytest.raises(ApiError) as info:
            a.cancel(job["id"])
        assert info.value.status == 409 and "already cancelled" in info.value.detail


BAD_SUBMISSIONS = [
    ({"command": ["true"], "gpus": 0}, "gpus"),
    ({"command": ["true"], "gpus": -2}, "gpus"),
    ({"command": ["true"], "gpus": 5}, "No node has 5 GPUs"),
    ({"command": ["true"], "gpus": 1, "priority": "asap"}, "priority"),
    ({"command": [], "gpus": 1}, "empty"),
    ({"command": "   ", "gpus": 1}, "empty"),
    ({"command": ["true"], "gpus": 1, "workdir": "relative/dir"}, "absolute"),
    ({"command": ["true"], "gpus": 1, "time_limit_s": 0}, "time_limit_s"),
    ({"command": ["true"], "gpus": 1, "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by gpuyard"),
    ({"command": ["true"], "gpus": 1, "env": {"1BAD": "x"}}, "invalid"),
    ({"command": ["x" * 70_000], "gpus": 1}, "longer than"),
    ({"command": ["true"], "gpus": 1, "name": "n" * 500}, "name"),
    ({"command": ["true"], "gpus": "two"}, "gpus"),
    ({"gpus": 1}, "command"),
    ({"command": ["true"], "gpus": 1, "colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("body", "hint"), BAD_SUBMISSIONS)
def test_bad_submissions_get_a_clear_4xx_and_change_nothing(stack: Stack, body: dict, hint: str) -> None:
    with stack.admin() as c:
        before = c.jobs(limit=500)["data"]
    response = raw(stack, "POST", "/api/v1/jobs", stack.admin_token, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] in ("invalid_job_spec", "invalid_request", "no_node_fits")
    assert hint.lower() in error["detail"].lower(), error
    with stack.admin() as c:
        assert c.jobs(limit=500)["data"] == before


def test_malformed_bodies_and_unknown_ids(stack: Stack) -> None:
    token = stack.admin_token
    assert raw(stack, "POST", "/api/v1/jobs", token, content=b"{not json").status_code == 422
    response = raw(stack, "GET", "/api/v1/jobs/999999", token)
    assert response.status_code == 404 and response.json()["error"] == "job_not_found"
    assert raw(stack, "GET", "/api/v1/jobs/abc", token).status_code == 422
    assert raw(stack, "GET", "/api/v1/jobs?state=sleeping", token).status_code == 422
    assert raw(stack, "GET", "/api/v1/jobs?cursor=zz", token).status_code == 422


def test_pagination_walks_every_job_once(stack: Stack, alice: str) -> None:
    with stack.client(alice) as a:
        ids = {a.submit(["true"], gpus=1, name=f"p{i}")["id"] for i in range(7)}
        seen: list[int] = []
        cursor = None
        while True:
            page = a.jobs(limit=3, cursor=cursor)
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert ids <= set(seen) and len(seen) == len(set(seen))
        assert seen == sorted(seen, reverse=True)


def test_logs_by_offset_and_follow_stream(stack: Stack, tmp_path: Path) -> None:
    script = "for i in $(seq 1 200); do echo line $i ünïcødé; done"
    with stack.admin() as c:
        job = c.submit(script, gpus=1, name="chatty")
        followed = "".join(c.follow_logs(job["id"]))
        assert stack.wait_state(job["id"], "succeeded")
        expected = "".join(f"line {i} ünïcødé\n" for i in range(1, 201))
        assert followed == expected
        text, offset = "", 0
        while True:
            page = c.logs(job["id"], offset=offset)
            text += page["data"]
            if page["next_offset"] == offset:
                assert page["complete"] is True
                break
            offset = page["next_offset"]
        assert text == expected
        assert offset == len(expected.encode())


def test_openapi_documents_every_route(stack: Stack) -> None:
    spec = raw(stack, "GET", "/openapi.json").json()
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/logs",
        "/api/v1/jobs/{job_id}/logs/follow",
        "/api/v1/queue",
        "/api/v1/gpus",
        "/api/v1/users",
        "/healthz",
        "/readyz",
    ]:
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]


def test_a_second_controller_on_the_same_data_dir_is_refused(stack: Stack) -> None:
    import subprocess
    import sys

    env = stack.env | {"GPUYARD_PORT": str(stack.port + 1)}
    result = subprocess.run(
        [sys.executable, "-m", "gpuyard", "controller"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Another gpuyard controller" in result.stderr and "--data-dir" in result.stderr
