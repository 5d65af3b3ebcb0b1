"""The API's edge, in process: bodies over the cap (413), bodies that are not JSON objects, numbers past the
database's integers, routing errors, user names; and the text helpers behind the refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from gpuyard.domain.errors import InvalidJobSpec, NotAuthenticated
from gpuyard.domain.text import MAX_QUOTE_CHARS, quote, text_problem
from gpuyard.entrypoints.api.app import create_app
from gpuyard.entrypoints.api.deps import MAX_ID, JobId, OffsetQuery
from gpuyard.entrypoints.api.errors import install_error_handlers
from gpuyard.entrypoints.api.limits import MAX_BODY_BYTES, BodySizeLimit, declared_length, too_large
from gpuyard.services.auth import check_user_name
from gpuyard.settings import Settings

LIMIT = 200_000


class Thing(BaseModel):
    name: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)

    @app.post("/things")
    async def add(thing: Thing) -> dict[str, str]:
        return {"name": thing.name}

    @app.get("/things")
    async def things() -> list[str]:
        return []

    @app.get("/things/{job_id}")
    async def one(job_id: JobId, offset: OffsetQuery = 0) -> dict[str, int]:
        return {"id": job_id, "offset": offset}

    @app.get("/private")
    async def private() -> None:
        raise NotAuthenticated("No token given: send one.")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    return response.status_code, body["error"], body["detail"]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_over_the_cap_is_refused_with_413_whether_declared_or_streamed(
    client: httpx.AsyncClient,
) -> None:
    too_big = b'{"name": "' + b"x" * LIMIT + b'"}'
    status, code, detail = error(await client.post("/things", content=too_big))
    assert (status, code) == (413, "request_too_large")
    assert f"larger than {LIMIT} bytes" in detail and "script" in detail
    streamed = await client.post("/things", content=chunks(too_big[:60_000], too_big[60_000:]))
    assert "content-length" not in streamed.request.headers
    assert error(streamed)[:2] == (413, "request_too_large")
    assert (await client.post("/things", json={"name": "x" * (LIMIT - 20)})).status_code == 200


async def test_a_get_with_a_large_body_is_left_alone(client: httpx.AsyncClient) -> None:
    assert (await client.request("GET", "/things", content=b"x" * (LIMIT + 1))).status_code == 200


def test_the_real_cap_says_mib() -> None:
    assert "larger than 16 MiB" in str(too_large(MAX_BODY_BYTES).detail)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("123", 123), ("0007", 7), ("9" * 25, 10**20), ("-1", None), ("1e3", None), ("²", None), (None, None)],
)
def test_the_declared_length_is_read_without_trusting_it(value: str | None, expected: int | None) -> None:
    headers = [] if value is None else [(b"content-length", value.encode())]
    assert declared_length({"type": "http", "headers": headers}) == expected


@pytest.mark.parametrize(
    ("content", "content_type", "hint"),
    [
        (b'{"name": "caf\xe9"}', "application/json", "UTF-8"),
        (b"[" * 50_000 + b"]" * 50_000, "application/json", "nested too deeply"),
        (b'{"name": ' + b"9" * 5000 + b"}", "application/json", "number too long"),
        (b'{"name": "x"', "application/json", "not valid JSON"),
        (b'["x"]', "application/json", "must be a JSON object"),
        (b'{"name": "x"}', "text/plain", "Content-Type: application/json"),
        (b"", "application/json", "missing"),
    ],
)
async def test_a_body_that_is_not_a_json_object_gets_422_saying_what_to_send(
    client: httpx.AsyncClient, content: bytes, content_type: str, hint: str
) -> None:
    response = await client.post("/things", content=content, headers={"Content-Type": content_type})
    status, code, detail = error(response)
    assert (status, code) == (422, "invalid_request") and hint in detail, detail


@pytest.mark.parametrize("job_id", ["0", "-1", str(MAX_ID + 1), str(2**63), str(10**30), "1.5"])
async def test_ids_past_the_database_integer_are_refused_before_any_query(
    client: httpx.AsyncClient, job_id: str
) -> None:
    status, code, detail = error(await client.get(f"/things/{job_id}"))
    assert (status, code) == (422, "invalid_request") and "job_id" in detail


async def test_offsets_stop_at_the_largest_bigint(client: httpx.AsyncClient) -> None:
    assert (await client.get("/things/1", params={"offset": str(2**63 - 1)})).status_code == 200
    assert error(await client.get("/things/1", params={"offset": str(2**63)}))[0] == 422


async def test_routing_errors_say_what_to_do(client: httpx.AsyncClient) -> None:
    response = await client.put("/things")
    status, code, detail = error(response)
    assert (status, code) == (405, "method_not_allowed")
    assert "use GET, POST" in detail and response.headers["Allow"] == "GET, POST"
    assert error(await client.get("/nowhere"))[1:] == (
        "not_found",
        "There is no such path: the API's paths are listed at /docs.",
    )
    assert (await client.get("/private")).headers["WWW-Authenticate"] == "Bearer"


def test_the_openapi_documents_the_errors_each_operation_can_answer(tmp_path: Path) -> None:
    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            if path not in ("/healthz", "/readyz", "/metrics"):
                assert {"401", "422"} <= documented, (method, path)
            assert ("413" in documented) == ("requestBody" in operation), (method, path)


@pytest.mark.parametrize("name", ["alice\n", "alice\x00", "Alice", "", "a" * 65, "\ud800", "al ice"])
def test_user_names_are_checked_whole(name: str) -> None:
    with pytest.raises(InvalidJobSpec, match="User name"):
        check_user_name(name)


def test_text_problems_name_nul_and_lone_surrogates() -> None:
    assert text_problem("plain ünïcødé 🚀 \u200d") is None
    assert "NUL" in (text_problem("a\x00b") or "")
    assert "surrogate" in (text_problem("a\udfffb") or "")


@pytest.mark.parametrize("value", ["x" * 10_000, ["y"] * 10_000, 10**4000, -(10**50), "\ud800" * 100])
def test_quotes_are_brief(value: object) -> None:
    assert len(quote(value)) <= MAX_QUOTE_CHARS
    assert quote("short") == "'short'" and quote(7) == "7"
