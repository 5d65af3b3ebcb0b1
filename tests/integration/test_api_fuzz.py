"""Bad input against the live API: schemathesis generates requests for every operation of the controller's own
/openapi.json (valid and invalid, as an admin, as a plain user and without a token), and a hand-made barrage
sends what a schema cannot describe (oversized, non-UTF-8, deeply nested, wrong content types, numbers past
the database's integers, NUL bytes, unicode edge cases).

Every answer must be a 2xx that matches the documented schema, or a documented 4xx with the error body
{"error": code, "detail": what to do}; never a 5xx. Jobs accepted before the barrage must not change.

The stack's GPUs are all held by a (simulated) process outside gpuyard, so that no generated command ever
runs: every job submitted here waits in line."""

from __future__ import annotations

import json
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.hostile import (
    HOSTILE,
    UNICODE_JOBS,
    Hostile,
    accept_jobs,
    all_jobs,
    assert_error,
    carols_jobs,
    send,
)
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("fuzz"), amqp_url) as s:
        yield s


@pytest.fixture(scope="module")
def accepted(stack: Stack) -> list[dict[str, Any]]:
    """carol's jobs, accepted before any bad input (then every GPU is blocked). carol's token is never used
    again, and admins only send invalid requests to the routes that change a job."""
    return accept_jobs(stack)


def assert_unchanged(stack: Stack, accepted: list[dict[str, Any]]) -> None:
    assert carols_jobs(stack) == accepted
    assert stack.procs["controller"].poll() is None and stack.procs["worker"].poll() is None


# --- schemathesis ---------------------------------------------------------------------------------------


@schemathesis.check
def error_body_says_what_to_do(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
) -> None:
    """Every error answer is {"error": code, "detail": text}, the text a sentence, not a bare word."""
    if response.status_code < 400 or case.operation.path == "/readyz" or case.method.upper() == "HEAD":
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"the error answer is not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, f"not an error body: {body!r}"
    assert isinstance(body["error"], str) and body["error"].isidentifier(), body
    assert isinstance(body["detail"], str) and len(body["detail"].split()) >= 3, body


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    error_body_says_what_to_do,
]

# Valid requests that would change jobs of others (an admin may): only invalid ones are sent as an admin.
CHANGES_JOBS = ("/cancel", "/hold", "/release", "/priority")
# The follow stream of a valid, waiting job never ends: only invalid requests are sent to it.
ENDLESS = ("/logs/follow",)


def load_schema(stack: Stack, token: str | None) -> BaseSchema:
    """The live schema, with the token sent on every request (and none generated), or without one."""
    config: dict[str, Any] = {
        "generation": {"deterministic": True, "allow-extra-parameters": False},
        "request-timeout": 20,
    }
    if token is not None:
        config["headers"] = {"Authorization": f"Bearer {token}"}
        config["generation"]["with-security-parameters"] = False
    return schemathesis.openapi.from_url(
        stack.url + "/openapi.json", config=schemathesis.Config.from_dict(config)
    )


def modes_for(operation: APIOperation, role: str) -> list[GenerationMode]:
    if operation.path.endswith(ENDLESS) and role != "anonymous":
        return [GenerationMode.NEGATIVE]
    if role == "admin" and operation.path.endswith(CHANGES_JOBS):
        return [GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def fuzz_operation(
    operation: APIOperation, mode: GenerationMode, *, base_url: str, max_examples: int, statuses: Counter[int]
) -> None:
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(base_url=base_url, checks=CHECKS)
        statuses[response.status_code] += 1

    run()


def describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(error))
    for sub in getattr(error, "exceptions", ()):
        text += f"\n  {sub}" if isinstance(sub, Failure) else "".join(traceback.format_exception_only(sub))
    return text + "".join(getattr(error, "__notes__", ()))


# Examples per operation and mode: enough to find what the hand-made barrage below missed, in about 30 s.
ROLES = [("admin", 20), ("user", 12), ("anonymous", 4)]


@pytest.mark.parametrize(("role", "max_examples"), ROLES, ids=[r for r, _ in ROLES])
def test_every_operation_answers_generated_requests_as_documented(
    stack: Stack, accepted: list[dict[str, Any]], alice: str, role: str, max_examples: int
) -> None:
    token = {"admin": stack.admin_token, "user": alice, "anonymous": None}[role]
    schema = load_schema(stack, token)
    failures, tried, statuses = [], 0, Counter[int]()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        for mode in modes_for(operation, role):
            tried += 1
            try:
                fuzz_operation(
                    operation, mode, base_url=stack.url, max_examples=max_examples, statuses=statuses
                )
            except Unsatisfiable:
                continue  # no invalid request exists for an operation without parameters
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - every operation's failures
                failures.append(f"{operation.label} ({mode.value}): {describe(error)}")
    assert not failures, f"{len(failures)} of {tried} runs failed:\n\n" + "\n\n".join(failures)
    if role == "anonymous":  # a body that is not JSON is refused before the token is looked at
        assert statuses[401] > 100 and set(statuses) <= {200, 401, 422}, statuses
    else:  # the generated requests reach the routes: some are answered, some refused
        assert any(200 <= status < 300 for status in statuses) and statuses[422], statuses
    assert_unchanged(stack, accepted)


# --- the hand-made barrage ------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.id for h in HOSTILE])
def test_a_hostile_request_gets_a_clear_4xx_and_changes_nothing(
    stack: Stack, accepted: list[dict[str, Any]], hostile: Hostile
) -> None:
    before = all_jobs(stack)
    response = send(stack, hostile, job_id=waiting_job(accepted))
    assert_error(response, hostile.status, hostile.hint)
    if hostile.status == 405:
        assert response.headers["Allow"]
    assert all_jobs(stack) == before
    assert_unchanged(stack, accepted)


@pytest.mark.parametrize("body", UNICODE_JOBS)
def test_odd_but_valid_text_is_accepted_and_kept_exactly(
    stack: Stack, accepted: list[dict[str, Any]], body: dict[str, Any]
) -> None:
    response = httpx.post(stack.url + "/api/v1/jobs", json=body, headers=admin_headers(stack), timeout=30)
    assert response.status_code == 201, response.text
    job = stack.job(response.json()["id"])
    command = body["command"]
    assert job["command"] == (command if isinstance(command, list) else ["/bin/sh", "-c", command])
    assert job["env"] == body.get("env", {}) and job["workdir"] == body.get("workdir")
    assert job["name"] == body["name"].strip() if "name" in body else job["name"]
    assert job["state"] == "queued"
    assert_unchanged(stack, accepted)


# --- generated by hypothesis ----------------------------------------------------------------------------

TEXT = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)
NUMBERS = (
    st.integers() | st.sampled_from([0, 1, 4, 5, 64, 65, 2**31, 2**63, -(2**63) - 1, 10**30]) | st.floats()
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
SUBMISSIONS = st.fixed_dictionaries(
    {"command": TEXT | st.lists(TEXT, max_size=4) | JSON},
    optional={
        "gpus": NUMBERS | JSON,
        "priority": st.sampled_from(["low", "normal", "high", "urgent"]) | TEXT,
        "name": TEXT | JSON,
        "workdir": TEXT.map(lambda t: "/" + t) | JSON,
        "env": st.dictionaries(TEXT, TEXT, max_size=3) | JSON,
        "time_limit_s": NUMBERS | JSON,
        "colour": JSON,
    },
)
HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_generated_submissions_are_accepted_as_sent_or_refused_clearly(
    stack: Stack, accepted: list[dict[str, Any]]
) -> None:
    before, created = all_jobs(stack), set()
    with httpx.Client(base_url=stack.url, headers=admin_headers(stack), timeout=30) as http:

        @HYPOTHESIS
        @given(body=SUBMISSIONS)
        def submit(body: dict[str, Any]) -> None:
            response = http.post("/api/v1/jobs", content=json.dumps(body), headers=JSON_TYPE)
            if response.status_code != 201:
                assert_error(response, 422)
                return
            job = response.json()
            created.add(job["id"])
            command = body["command"]
            assert job["command"] == (command if isinstance(command, list) else ["/bin/sh", "-c", command])
            assert job["gpus"] == body.get("gpus", 1) and job["env"] == body.get("env", {})
            assert job["workdir"] == body.get("workdir") and job["time_limit_s"] == body.get("time_limit_s")
            if (body.get("name") or "").strip():
                assert job["name"] == body["name"].strip()

        submit()
    after = all_jobs(stack)
    assert set(after) - set(before) == created
    assert {job_id: after[job_id] for job_id in before} == before
    assert_unchanged(stack, accepted)


# Path segments and query values of any bytes, percent-encoded; never only dots, which the client would
# resolve ("/jobs/.." is "/"), leaving a trailing slash that is redirected.
SEGMENT = (
    st.binary(min_size=1, max_size=24).map(lambda raw: quote(raw, safe="")).filter(lambda s: s.strip("."))
)


def test_generated_ids_and_query_strings_are_refused_clearly(
    stack: Stack, accepted: list[dict[str, Any]]
) -> None:
    before = all_jobs(stack)
    with httpx.Client(base_url=stack.url, headers=admin_headers(stack), timeout=30) as http:

        @HYPOTHESIS
        @given(a=SEGMENT | NUMBERS.map(str), b=SEGMENT | NUMBERS.map(str), c=SEGMENT)
        def probe(a: str, b: str, c: str) -> None:
            for method, url in [
                ("GET", f"/api/v1/jobs/{a}"),
                ("GET", f"/api/v1/jobs/{a}/logs?offset={b}&attempt={c}"),
                ("GET", f"/api/v1/jobs/{a}/series?attempt={b}&max_points={c}"),
                ("GET", f"/api/v1/jobs?state={a}&cursor={b}&limit={c}"),
                ("GET", f"/api/v1/jobs?user={a}&cursor={b}"),
                ("GET", f"/api/v1/gpus/usage?minutes={a}"),
                ("GET", f"/api/v1/webhooks/{a}/deliveries?limit={b}"),
            ]:
                response = http.request(method, url)
                if response.status_code >= 300:
                    assert_error(response, (403, 404, 409, 422))

        probe()
    assert all_jobs(stack) == before
    assert_unchanged(stack, accepted)


# --- the same barrage on PostgreSQL, which refuses more than SQLite (NUL in text, ids past 32 bits) -------


def test_the_hostile_requests_get_a_clear_4xx_on_postgresql(
    tmp_path: Path, amqp_url: str, pg_url: str
) -> None:
    with running_stack(tmp_path / "pg", amqp_url, extra_env={"GPUYARD_DATABASE_URL": pg_url}) as pg:
        accepted = accept_jobs(pg)
        before = all_jobs(pg)
        failures = []
        for hostile in HOSTILE:
            try:
                assert_error(send(pg, hostile, job_id=waiting_job(accepted)), hostile.status, hostile.hint)
            except AssertionError as error:
                failures.append(f"{hostile.id}: {error}")
        assert not failures, "\n".join(failures)
        assert all_jobs(pg) == before
        assert_unchanged(pg, accepted)


JSON_TYPE = {"Content-Type": "application/json"}


def admin_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.admin_token}"}


def waiting_job(accepted: list[dict[str, Any]]) -> int:
    return next(job["id"] for job in accepted if job["state"] == "queued" and not job["held"])
