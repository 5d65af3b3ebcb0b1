"""Observability on a live stack: per-job GPU usage and series, the idle-GPU flag, webhooks (signed,
retried, Slack format) and /metrics parsed with Prometheus' own parser after real jobs ran."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuyard.adapters.broker.local import free_port
from gpuyard.client import ApiError
from gpuyard.domain.webhooks import SIGNATURE_HEADER, verify
from tests.support.stack import Stack, running_stack, wait_for
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-the-tests-0123456789"
# Busy on the CPU for 3 s (so the fake GPU is busy), reporting progress and a metric twice.
BUSY = (
    'end=$(($(date +%s)+3)); while [ "$(date +%s)" -lt "$end" ]; do :; done; '
    'echo \'{"step": 1, "total": 2, "metrics": {"loss": 0.9}}\' >> "$GPUYARD_METRICS_FILE"; '
    'end=$(($(date +%s)+2)); while [ "$(date +%s)" -lt "$end" ]; do :; done; '
    'echo \'{"step": 2, "total": 2, "metrics": {"loss": 0.4}}\' >> "$GPUYARD_METRICS_FILE"; sleep 1'
)


TB_PORT = free_port()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    env = {
        "GPUYARD_TENSORBOARD_URL": f"http://127.0.0.1:{TB_PORT}",
        "GPUYARD_USAGE_BUCKET_S": "1",
        "GPUYARD_IDLE_GPU_AFTER_S": "2",
        "GPUYARD_WEBHOOK_RETRY_S": "0.2",
        "GPUYARD_PROGRESS_POINT_S": "0",
    }
    with running_stack(tmp_path_factory.mktemp("observe"), amqp_url, extra_env=env) as s:
        yield s


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_a_busy_job_and_an_idle_one_are_measured_notified_and_counted(stack: Stack, tmp_path: Path) -> None:
    with WebhookReceiver() as receiver, stack.admin() as admin:
        me = admin.me()["name"]
        hook = admin.add_webhook(receiver.url + "/", secret=SECRET)
        assert hook["secret"] == SECRET and set(hook["events"]) >= {"job.started", "job.idle_gpu"}
        busy = admin.submit(BUSY, gpus=1, name="busy")
        idle = admin.submit("sleep 5", gpus=2, name="notebook")
        with pytest.raises(ApiError) as rejected:
            admin.submit("true", gpus=64)
        assert rejected.value.code == "no_node_fits"

        # The idle job is flagged while it runs: in its record and as a webhook.
        flagged = wait_for(
            lambda: (job := stack.job(idle["id"]))["gpu_usage"] and job["gpu_usage"]["idle_since"] and job,
            what="the sleeping job to be flagged idle",
        )
        assert flagged["state"] == "running"
        held = [g for g in admin.gpus()["gpus"] if g["job_id"] == idle["id"]]
        assert len(held) == 2 and all(g["job_idle_since"] for g in held)  # everyone sees the flag
        for job_id in (busy["id"], idle["id"]):
            stack.wait_state(job_id, "succeeded")

        busy_job, idle_job = stack.job(busy["id"]), stack.job(idle["id"])
        assert busy_job["gpu_usage"]["utilization_peak_pct"] >= 20  # its share of a core on a busy machine
        assert busy_job["gpu_usage"]["memory_peak_mib"] >= 4096
        assert busy_job["gpu_usage"]["idle_since"] is None
        assert idle_job["gpu_usage"]["utilization_peak_pct"] < 5
        assert idle_job["gpu_usage"]["idle_since"] is None  # a flag of running jobs only
        assert idle_job["gpu_usage"]["memory_peak_mib"] >= 2 * 4096  # summed over its 2 GPUs
        assert busy_job["tensorboard_run"] == f"job-{busy['id']}-busy/attempt-1"

        series = admin.job_series(busy["id"])
        assert series["attempt"] == 1 and len(series["gpu"]) >= 3
        assert max(p["utilization_pct"] for p in series["gpu"]) >= 20
        assert [p["metrics"]["loss"] for p in series["progress"]] == [0.9, 0.4]
        gpu_usage = admin.gpu_usage(minutes=5)["gpus"]
        assert {g["index"] for g in gpu_usage} >= {0, 1, 2}
        assert all(p["utilization_pct"] >= 0 for g in gpu_usage for p in g["points"])

        def all_delivered() -> list[tuple[str, object]] | None:
            events = receiver.events()
            names = [(name, body["job"]["id"]) for name, body in events]
            wanted = {
                ("job.started", busy["id"]),
                ("job.finished", busy["id"]),
                ("job.started", idle["id"]),
                ("job.idle_gpu", idle["id"]),
                ("job.finished", idle["id"]),
            }
            return names if wanted <= set(names) else None

        names = wait_for(all_delivered, what="the webhooks of both jobs")
        assert names.index(("job.started", idle["id"])) < names.index(("job.idle_gpu", idle["id"]))
        for request in receiver.received:
            assert verify(SECRET, request.body, request.headers[SIGNATURE_HEADER])
            assert request.json["job"]["user"] == me and request.json["text"].startswith("gpuyard: job")
        deliveries = admin.webhook_deliveries(hook["id"])
        assert {d["state"] for d in deliveries} == {"delivered"}
        assert all(d["attempts"] == 1 and d["last_status"] == 200 for d in deliveries)

        found = samples(admin.metrics_text())
        assert value(found, "gpuyard_jobs", state="succeeded", user=me) >= 2
        assert value(found, "gpuyard_job_finishes_total", state="succeeded", failure_class="") >= 2
        assert value(found, "gpuyard_job_submissions_total", outcome="accepted") >= 2
        assert value(found, "gpuyard_job_submissions_total", outcome="no_node_fits") == 1
        assert value(found, "gpuyard_job_wait_seconds_count") >= 2
        assert value(found, "gpuyard_job_run_seconds_count") >= 2
        assert value(found, "gpuyard_dispatch_latency_seconds_count") >= 2
        assert value(found, "gpuyard_scheduler_pass_duration_seconds_count", kind="placement") >= 1
        assert value(found, "gpuyard_node_up", node=stack.node) == 1
        assert value(found, "gpuyard_queue_length") == 0
        gpus = {dict(labels)["gpu"] for name, labels in found if name == "gpuyard_gpu_memory_total_bytes"}
        assert gpus == {"0", "1", "2", "3"}
        uuid = stack.admin().gpus()["gpus"][0]["uuid"]
        total = value(found, "gpuyard_gpu_memory_total_bytes", node=stack.node, gpu="0", uuid=uuid)
        assert total == 24576 * 1024 * 1024
        assert value(found, "gpuyard_webhook_deliveries_total", outcome="delivered") >= 5
        assert value(found, "gpuyard_dead_letters", kind="job") == 0
        assert ("gpuyard_broker_reconnects_total", frozenset()) in found
        admin.remove_webhook(hook["id"])


def test_a_failing_endpoint_is_retried_and_a_slack_hook_gets_text(stack: Stack) -> None:
    with WebhookReceiver(fail_first=2) as receiver, stack.admin() as admin, stack.client(None) as anon:
        hook = admin.add_webhook(receiver.url + "/hook", events=["job.cancelled"])
        slack = admin.add_webhook(receiver.url + "/slack", events=["job.cancelled"], format="slack")
        job = admin.submit("sleep 60", gpus=1, name="never")
        admin.cancel(job["id"])  # waiting or already running: either way a job.cancelled event
        stack.wait_state(job["id"], "cancelled")

        wait_for(lambda: receiver.events("/hook") and receiver.events("/slack"), what="both deliveries")
        ((name, body),) = receiver.events("/hook")
        assert (
            name == "job.cancelled" and body["job"]["id"] == job["id"] and body["job"]["state"] == "cancelled"
        )
        ((_, text),) = receiver.events("/slack")
        assert set(text) == {"text"} and f"job {job['id']} (never" in text["text"]
        delivered = wait_for(
            lambda: (
                [
                    d
                    for h in (hook, slack)
                    for d in admin.webhook_deliveries(h["id"])
                    if d["state"] == "delivered"
                ]
                if len(receiver.received) == 2
                else None
            ),
            what="the deliveries to be recorded",
        )
        assert sorted(d["attempts"] for d in delivered) in ([1, 3], [2, 2], [3, 1])  # 2 failures shared

        with pytest.raises(ApiError) as bad:
            admin.add_webhook("ftp://example.org/hook")
        assert bad.value.status == 422 and "http(s)" in bad.value.detail
        with pytest.raises(ApiError) as unknown:
            admin.add_webhook(receiver.url, events=["job.exploded"])
        assert unknown.value.status == 422 and "job.started" in unknown.value.detail
        with pytest.raises(ApiError) as nobody:
            anon.webhooks()
        assert nobody.value.status == 401


def test_only_admins_add_webhooks_for_everyone_and_users_only_see_their_own(
    stack: Stack, alice: str, bob: str
) -> None:
    with stack.client(alice) as a, stack.client(bob) as b:
        with pytest.raises(ApiError) as denied:
            a.add_webhook("http://127.0.0.1:9/x", all_jobs=True)
        assert denied.value.status == 403
        mine = a.add_webhook("http://127.0.0.1:9/alice")
        assert "secret" in mine and len(mine["secret"]) == 64
        assert all("secret" not in h for h in a.webhooks())
        assert mine["id"] not in {h["id"] for h in b.webhooks()}
        with pytest.raises(ApiError) as not_yours:
            b.remove_webhook(mine["id"])
        assert not_yours.value.status == 403
        with pytest.raises(ApiError) as missing:
            b.webhook_deliveries(999_999)
        assert missing.value.status == 404
        a.remove_webhook(mine["id"])


def test_the_example_job_s_curves_are_served_by_gpuyard_tensorboard(stack: Stack) -> None:
    with stack.admin() as admin:
        job = admin.submit([sys.executable, str(EXAMPLE), "--epochs", "3"], gpus=1, name="digits")
    done = stack.wait_state(job["id"], "succeeded", timeout_s=120)
    run = f"job-{job['id']}-digits/attempt-1"
    assert done["tensorboard_run"] == run
    assert done["tensorboard_url"] == f"http://127.0.0.1:{TB_PORT}/?runFilter=%5E{run}#timeseries"
    with stack.admin() as admin:
        losses = [p["metrics"]["loss"] for p in admin.job_series(job["id"])["progress"]]
    assert len(losses) >= 1

    env = {**stack.env, "GPUYARD_TENSORBOARD_PORT": str(TB_PORT)}
    log = open(stack.base / "tensorboard.log", "ab")  # noqa: SIM115 - kept open for the child
    tensorboard = subprocess.Popen(
        [sys.executable, "-m", "gpuyard", "tensorboard"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def runs() -> list[str] | None:
            assert tensorboard.poll() is None, (stack.base / "tensorboard.log").read_text()
            try:
                listed: list[str] = httpx.get(f"http://127.0.0.1:{TB_PORT}/data/runs", timeout=2).json()
            except (httpx.TransportError, ValueError):
                return None
            return listed if run in listed else None

        wait_for(runs, timeout_s=60, what="TensorBoard to list the example job's run")
        tags = httpx.get(f"http://127.0.0.1:{TB_PORT}/data/plugin/scalars/tags", timeout=5).json()
        assert {"loss/train", "accuracy/test"} <= set(tags[run])
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=20)
        log.close()


def test_the_cli_manages_webhooks_and_shows_a_job_s_gpu_use(stack: Stack) -> None:
    env = {**stack.env, "GPUYARD_URL": stack.url, "GPUYARD_TOKEN": stack.admin_token}

    def gpuyard(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gpuyard", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    added = gpuyard("webhook", "add", "http://127.0.0.1:9/cli", "-e", "job.failed", "--slack")
    hook_id = added.split()[1]
    assert "job.failed" in added and "Secret (shown once" in added
    assert "http://127.0.0.1:9/cli" in gpuyard("webhook", "list")
    assert "STATE" in gpuyard("webhook", "deliveries", hook_id)
    assert f"Webhook {hook_id} removed." in gpuyard("webhook", "rm", hook_id)
    with stack.admin() as admin:
        busy = [j for j in admin.jobs(states=["succeeded"])["data"] if j["name"] == "busy"]
    if busy:  # the first test of this module ran it
        shown = gpuyard("show", str(busy[0]["id"]))
        assert "GPU use:" in shown and "% peak" in shown and "TensorBoard: http://127.0.0.1:" in shown
