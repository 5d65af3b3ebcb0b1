"""Bad input for the API tests, and the stack they run on.

`HOSTILE` holds what schemathesis does not generate from the schema: bodies too large, not UTF-8, nested too
deeply or of the wrong media type; numbers past the database's integers; NUL characters and lone surrogates;
broken tokens. Each comes with the status it must get and a word its error must contain.

The stack's GPUs are all held by a (simulated) process outside gpuyard, so nothing submitted there runs, and
carol's jobs, accepted before any bad input, are the record that must not change."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.stack import Stack, wait_for

MiB = 1024 * 1024
# What of a job nothing here may change (a finished job's usage summary may still be filled in).
STABLE_FIELDS = (
    "id",
    "user",
    "name",
    "command",
    "gpus",
    "priority",
    "workdir",
    "env",
    "time_limit_s",
    "state",
    "attempt",
    "submitted_at",
    "started_at",
    "finished_at",
    "exit_code",
    "failure_class",
    "cancel_requested",
    "held",
)


# --- the stack ------------------------------------------------------------------------------------------


def block_all_gpus(stack: Stack) -> None:
    """Let a process outside gpuyard hold every GPU of the stack: nothing submitted from now on starts."""
    with stack.admin() as c:
        count = len(c.gpus()["gpus"])
    outside = [{"pid": 4242, "user": "someone", "used_memory_mib": 1000, "command": "python nb.py"}]
    tmp = stack.fake_state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"outside": {str(i): outside for i in range(count)}}))
    os.replace(tmp, stack.fake_state_file)

    def all_blocked() -> bool:
        with stack.admin() as c:
            return all(g["outside_processes"] for g in c.gpus()["gpus"])

    wait_for(all_blocked, what="every GPU to be held outside gpuyard")


def accept_jobs(stack: Stack) -> list[dict[str, Any]]:
    """carol's jobs, accepted before any bad input: one finished, one waiting, one held; then every GPU is
    blocked. Returns their record (see `carols_jobs`)."""
    with stack.admin() as admin:
        carol = admin.add_user("carol")["token"]
    with stack.client(carol) as c:
        done = c.submit(["echo", "hello ünïcødé 🚀"], gpus=1, name="done", env={"LR": "0.1"})
        stack.wait_state(done["id"], "succeeded")
        block_all_gpus(stack)
        c.submit("sleep 60", gpus=2, priority="high", name="waiting", time_limit_s=600)
        c.hold(c.submit(["python", "train.py"], gpus=1, name="held", workdir="/tmp")["id"])
    record = carols_jobs(stack)
    assert [j["state"] for j in record] == ["queued", "queued", "succeeded"]
    return record


def carols_jobs(stack: Stack) -> list[dict[str, Any]]:
    """carol's jobs, newest first: what nothing may change, with the output of each."""
    with stack.admin() as admin:
        jobs = admin.jobs(user="carol", limit=500)["data"]
        return [{k: job[k] for k in STABLE_FIELDS} | {"log": admin.logs(job["id"])["data"]} for job in jobs]


def all_jobs(stack: Stack) -> dict[int, dict[str, Any]]:
    """Every job, as an admin sees it, by id."""
    jobs: dict[int, dict[str, Any]] = {}
    cursor = None
    with stack.admin() as admin:
        while True:
            page = admin.jobs(limit=500, cursor=cursor)
            jobs.update((j["id"], {k: j[k] for k in STABLE_FIELDS}) for j in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return jobs


def assert_error(response: httpx.Response, status: int | tuple[int, ...], hint: str = "") -> dict[str, Any]:
    """The answer is one of the `status`es, with the error body, whose detail contains `hint`."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"].isidentifier(), body
    assert isinstance(body["detail"], str) and len(body["detail"].split()) >= 3, body
    assert hint.lower() in body["detail"].lower(), (hint, body)
    return body


# --- the barrage ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One bad request. In `path`, `{job}` stands for a job of carol's that is waiting."""

    id: str
    method: str
    path: str
    status: int
    hint: str
    json: Any = None
    content: bytes | Callable[[], Iterator[bytes]] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def send(stack: Stack, hostile: Hostile, *, job_id: int, token: str | None = None) -> httpx.Response:
    token = token or stack.admin_token
    headers: dict[str, Any] = {"Authorization": f"Bearer {token}", **hostile.headers}
    if hostile.content is not None and "Content-Type" not in hostile.headers:
        headers["Content-Type"] = "application/json"
    content = hostile.content() if callable(hostile.content) else hostile.content
    return httpx.request(
        hostile.method,
        stack.url + hostile.path.replace("{job}", str(job_id)),
        headers=headers,
        json=hostile.json,
        content=content,
        params=hostile.params,
        timeout=60,
    )


def raw_json(value: Any) -> bytes:
    """JSON text of `value`; a lone surrogate in it is written as the escape "\\ud800", which JSON allows."""
    return json.dumps(value).encode()


def _streamed(size: int) -> Callable[[], Iterator[bytes]]:
    """A body sent in chunks, with no Content-Length: only counting tells its size."""

    def chunks() -> Iterator[bytes]:
        yield b'{"command": "'
        for _ in range(size // MiB):
            yield b"x" * MiB
        yield b'", "gpus": 1}'

    return chunks


def _job(**fields: Any) -> dict[str, Any]:
    return {"command": ["true"], "gpus": 1, **fields}


def _submit(id: str, hint: str, *, status: int = 422, **fields: Any) -> Hostile:
    return Hostile(id, "POST", "/api/v1/jobs", status, hint, json=_job(**fields))


def _submit_raw(id: str, hint: str, content: bytes, **headers: str) -> Hostile:
    return Hostile(id, "POST", "/api/v1/jobs", 422, hint, content=content, headers=headers)


def _get(id: str, path: str, hint: str, **params: str) -> Hostile:
    return Hostile(id, "GET", path, 422, hint, params=params or None)


def _nested(depth: int) -> bytes:
    return b'{"command": ["true"], "gpus": 1, "env": ' + b'{"A": ' * depth + b'"x"' + b"}" * depth + b"}"


SURROGATE = "\ud800"

HOSTILE: list[Hostile] = [
    # too large: refused as it arrives (413), or by the job's limits (422)
    Hostile(
        "body-17mib", "POST", "/api/v1/jobs", 413, "16 MiB", content=raw_json(_job(command="x" * 17 * MiB))
    ),
    Hostile("body-17mib-streamed", "POST", "/api/v1/jobs", 413, "16 MiB", content=_streamed(17 * MiB)),
    Hostile("webhook-17mib", "POST", "/api/v1/webhooks", 413, "16 MiB", content=b" " * 17 * MiB),
    Hostile("user-17mib", "POST", "/api/v1/users", 413, "16 MiB", content=b" " * 17 * MiB),
    Hostile(
        "priority-17mib", "POST", "/api/v1/jobs/{job}/priority", 413, "16 MiB", content=_streamed(17 * MiB)
    ),
    _submit("argv-5000-args", "arguments", command=["x"] * 5000),
    _submit("argv-70kb", "longer than", command=["x" * 1000] * 70),
    _submit("shell-string-1mb", "longer than", command="x" * MiB),
    _submit("env-300-vars", "at most 256", env={f"V{i}": "x" for i in range(300)}),
    _submit("env-value-20kb", "16 KiB", env={"V": "x" * 20_000}),
    _submit("env-name-10kb", "environment variable", env={"V" * 10_000 + "-": "x"}),
    _submit("name-500", "name", name="n" * 500),
    _submit("workdir-5000", "working directory", workdir="/" + "d" * 5000),
    _submit("priority-1mb", "priority", priority="p" * MiB),
    # not readable JSON, or not a JSON object
    _submit_raw("nested-100k", "not readable JSON", b"[" * 100_000 + b"]" * 100_000),
    _submit_raw("nested-env", "env", _nested(200)),
    _submit_raw("latin-1", "UTF-8", b'{"command": ["caf\xe9"], "gpus": 1}'),
    _submit_raw("garbage-bytes", "JSON", bytes(range(256))),
    _submit_raw("truncated", "not valid JSON", b'{"command": ["true"], "gp'),
    _submit_raw(
        "number-5000-digits", "number too long", b'{"command": ["true"], "gpus": ' + b"9" * 5000 + b"}"
    ),
    _submit_raw("infinite-gpus", "finite", b'{"command": ["true"], "gpus": 1e400}'),
    _submit_raw("nan-gpus", "finite", b'{"command": ["true"], "gpus": NaN}'),
    _submit_raw("json-array", "JSON object", b'[{"command": ["true"], "gpus": 1}]'),
    _submit_raw("json-string", "JSON object", b'"true"'),
    _submit_raw("empty-body", "missing", b""),
    _submit_raw("text-plain", "Content-Type", raw_json(_job()), **{"Content-Type": "text/plain"}),
    _submit_raw(
        "form",
        "Content-Type",
        b"command=true&gpus=1",
        **{"Content-Type": "application/x-www-form-urlencoded"},
    ),
    _submit_raw(
        "xml", "Content-Type", b"<job><command>true</command></job>", **{"Content-Type": "application/xml"}
    ),
    # NUL characters and lone surrogates, which no database, file or process takes
    _submit("shell-string-nul", "NUL", command="echo a\x00b"),
    _submit("argv-nul", "NUL", command=["echo", "a\x00b"]),
    _submit("name-nul", "NUL", name="a\x00b"),
    _submit("env-name-nul", "environment variable", env={"A\x00": "x"}),
    _submit("env-value-nul", "NUL", env={"A": "x\x00"}),
    _submit("workdir-nul", "NUL", workdir="/tmp/\x00"),
    _submit("priority-nul", "priority", priority="high\x00"),
    _submit_raw("shell-string-surrogate", "surrogate", raw_json(_job(command="echo " + SURROGATE))),
    _submit_raw("argv-surrogate", "surrogate", raw_json(_job(command=["echo", SURROGATE]))),
    _submit_raw("name-surrogate", "name", raw_json(_job(name=SURROGATE))),
    _submit_raw("env-name-surrogate", "environment variable", raw_json(_job(env={SURROGATE: "x"}))),
    _submit_raw("env-value-surrogate", "surrogate", raw_json(_job(env={"A": SURROGATE}))),
    _submit_raw("workdir-surrogate", "surrogate", raw_json(_job(workdir="/tmp/" + SURROGATE))),
    Hostile(
        "reprioritize-nul", "POST", "/api/v1/jobs/{job}/priority", 422, "priority", json={"priority": "\x00"}
    ),
    Hostile(
        "reprioritize-surrogate",
        "POST",
        "/api/v1/jobs/{job}/priority",
        422,
        "priority",
        content=raw_json({"priority": SURROGATE}),
    ),
    Hostile("user-nul", "POST", "/api/v1/users", 422, "user name", json={"name": "bob\x00"}),
    Hostile("user-newline", "POST", "/api/v1/users", 422, "user name", json={"name": "bob\n"}),
    Hostile("user-surrogate", "POST", "/api/v1/users", 422, "name", content=raw_json({"name": SURROGATE})),
    Hostile("webhook-url-nul", "POST", "/api/v1/webhooks", 422, "control", json={"url": "http://a\x00b/"}),
    Hostile("webhook-url-ipv6", "POST", "/api/v1/webhooks", 422, "malformed", json={"url": "http://[::1/"}),
    Hostile("webhook-url-port", "POST", "/api/v1/webhooks", 422, "port", json={"url": "http://a:99999/"}),
    Hostile(
        "webhook-url-surrogate", "POST", "/api/v1/webhooks", 422, "url", content=raw_json({"url": SURROGATE})
    ),
    Hostile(
        "webhook-secret-nul",
        "POST",
        "/api/v1/webhooks",
        422,
        "secret",
        json={"url": "http://a/", "secret": "\x00" * 20},
    ),
    Hostile(
        "webhook-events-nul",
        "POST",
        "/api/v1/webhooks",
        422,
        "events",
        json={"url": "http://a/", "events": ["job.started\x00"]},
    ),
    _get("filter-user-nul", "/api/v1/jobs", "user name", user="carol\x00"),
    _get("filter-state-nul", "/api/v1/jobs", "state", state="queued\x00"),
    # numbers: negative, past the database's integers, or not integers at all
    _submit("gpus-negative", "gpus", gpus=-1),
    _submit("gpus-2**63", "gpus", gpus=2**63),
    _submit("gpus-10**30", "gpus", gpus=10**30),
    _submit("gpus-float", "gpus", gpus=1.5),
    _submit("time-limit-negative", "time_limit_s", time_limit_s=-1),
    _submit("time-limit-2**64", "time_limit_s", time_limit_s=2**64),
    _get("job-id-0", "/api/v1/jobs/0", "job_id"),
    _get("job-id-negative", "/api/v1/jobs/-1", "job_id"),
    _get("job-id-2**31", f"/api/v1/jobs/{2**31}", "job_id"),
    _get("job-id-2**64", f"/api/v1/jobs/{2**64}", "job_id"),
    _get("job-id-10**30", f"/api/v1/jobs/{10**30}", "job_id"),
    _get("job-id-float", "/api/v1/jobs/1.5", "job_id"),
    Hostile("cancel-id-2**63", "POST", f"/api/v1/jobs/{2**63}/cancel", 422, "job_id"),
    Hostile("hold-id-2**40", "POST", f"/api/v1/jobs/{2**40}/hold", 422, "job_id"),
    _get("limit-negative", "/api/v1/jobs", "limit", limit="-1"),
    _get("limit-10**30", "/api/v1/jobs", "limit", limit=str(10**30)),
    _get("cursor-negative", "/api/v1/jobs", "cursor", cursor="-1"),
    _get("cursor-2**31", "/api/v1/jobs", "cursor", cursor=str(2**31)),
    _get("cursor-30-digits", "/api/v1/jobs", "cursor", cursor="9" * 30),
    _get("cursor-5000-digits", "/api/v1/jobs", "cursor", cursor="9" * 5000),
    _get("cursor-superscript", "/api/v1/jobs", "cursor", cursor="²"),
    _get("cursor-empty", "/api/v1/jobs", "cursor", cursor=""),
    _get("logs-offset-negative", "/api/v1/jobs/{job}/logs", "offset", offset="-1"),
    _get("logs-offset-2**63", "/api/v1/jobs/{job}/logs", "offset", offset=str(2**63)),
    _get("logs-attempt-0", "/api/v1/jobs/{job}/logs", "attempt", attempt="0"),
    _get("logs-attempt-2**31", "/api/v1/jobs/{job}/logs", "attempt", attempt=str(2**31)),
    _get("follow-offset-2**64", "/api/v1/jobs/{job}/logs/follow", "offset", offset=str(2**64)),
    _get("series-attempt-2**31", "/api/v1/jobs/{job}/series", "attempt", attempt=str(2**31)),
    _get("series-points-10**30", "/api/v1/jobs/{job}/series", "max_points", max_points=str(10**30)),
    _get("usage-minutes-negative", "/api/v1/gpus/usage", "minutes", minutes="-5"),
    _get("webhook-id-2**40", f"/api/v1/webhooks/{2**40}/deliveries", "hook_id"),
    Hostile("delete-webhook-id-2**63", "DELETE", f"/api/v1/webhooks/{2**63}", 422, "hook_id"),
    # routing and tokens
    Hostile("put-jobs", "PUT", "/api/v1/jobs", 405, "use GET, POST"),
    Hostile("delete-job", "DELETE", "/api/v1/jobs/{job}", 405, "use GET (see"),
    Hostile("unknown-path", "GET", "/api/v1/nope", 404, "/docs"),
    Hostile("token-missing", "GET", "/api/v1/jobs", 401, "token", headers={"Authorization": "Bearer"}),
    Hostile("token-basic", "GET", "/api/v1/jobs", 401, "token", headers={"Authorization": "Basic YTpi"}),
    Hostile(
        "token-10kb", "GET", "/api/v1/jobs", 401, "token", headers={"Authorization": "Bearer " + "x" * 10_000}
    ),
]

# Odd but valid: kept exactly as sent.
UNICODE_JOBS = [
    _job(name="🚀 נתונים e\u0301 \u200d", command=["echo", "a\u200db", "👩\u200d🔬", "\u202eevil"]),
    _job(command="echo 'ünï' | tr a-z A-Z", env={"MSG": "line 1\nline 2\t✓", "É": "unicode name"}),
    _job(command=["printf", "%s", ""], workdir="/tmp/データ", name=" padded ", time_limit_s=1),
]
