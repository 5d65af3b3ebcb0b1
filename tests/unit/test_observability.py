"""The pure parts of observability: webhook signing, retries and payloads, GPU processes mapped to jobs,
TensorBoard run names, thinning series, and the Prometheus exposition."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuyard.adapters.db.usage_repo import thin
from gpuyard.adapters.gpu.base import GpuInfo, GpuProcess
from gpuyard.adapters.metrics.prometheus import PrometheusMetrics
from gpuyard.domain import webhooks as wh
from gpuyard.domain.errors import InvalidWebhook
from gpuyard.domain.jobs import tensorboard_run
from gpuyard.entrypoints.worker.usage import usage_by_job
from gpuyard.services.observe import GpuGauge, Snapshot
from gpuyard.services.usage import bucket_start


def test_a_signature_is_the_hmac_of_the_exact_body() -> None:
    body = wh.encode({"b": 1, "a": [1, 2]})
    assert body == b'{"a":[1,2],"b":1}'
    signature = wh.sign("k" * 32, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert wh.verify("k" * 32, body, signature)
    assert not wh.verify("k" * 32, body + b" ", signature)
    assert not wh.verify("x" * 32, body, signature)


@pytest.mark.parametrize(
    ("attempts", "delay_s"),
    [(1, 10.0), (2, 20.0), (3, 40.0), (6, 320.0), (9, 2560.0), (10, 3600.0), (40, 3600.0)],
)
def test_retries_back_off_doubling_up_to_an_hour(attempts: int, delay_s: float) -> None:
    assert wh.retry_delay_s(attempts, base_s=10.0) == delay_s


@pytest.mark.parametrize(
    ("status", "again"),
    [
        (None, True),
        (500, True),
        (503, True),
        (429, True),
        (408, True),
        (404, False),
        (400, False),
        (410, False),
    ],
)
def test_server_errors_and_rate_limits_are_retried_other_client_errors_are_final(
    status: int | None, again: bool
) -> None:
    assert wh.retryable(status) is again


@pytest.mark.parametrize(
    ("url", "events", "fmt", "message"),
    [
        ("ftp://host/x", None, "json", "not an http(s) URL"),
        ("https:///nohost", None, "json", "not an http(s) URL"),
        ("https://host/x", ["job.started", "job.bored"], "json", "Unknown webhook events ['job.bored']"),
        ("https://host/x", None, "xml", "Unknown webhook format 'xml'"),
        ("http://[::1/x", None, "json", "is malformed (Invalid IPv6 URL)"),
        ("http://host:99999/x", None, "json", "is malformed (Port out of range"),
        ("http://ho\x00st/x", None, "json", "contains spaces or control characters"),
        ("http://host/a b", None, "json", "contains spaces or control characters"),
        ("http://host/\ud800", None, "json", "contains spaces or control characters"),
    ],
)
def test_bad_webhooks_say_what_to_give(url: str, events: list[str] | None, fmt: str, message: str) -> None:
    with pytest.raises(InvalidWebhook, match=re.escape(message)):
        wh.check_webhook(url, events, fmt)


def test_a_webhook_gets_every_event_unless_told_and_no_duplicates() -> None:
    assert wh.check_webhook("http://h/x", None, "json") == list(wh.EVENTS)
    assert wh.check_webhook("http://h/x", ["job.failed", "job.failed"], "slack") == ["job.failed"]


def test_payloads_carry_the_job_or_just_text_for_slack() -> None:
    job = {
        "id": 7,
        "name": "bert",
        "user": "ana",
        "state": "failed",
        "gpus": 2,
        "exit_code": 1,
        "failure_class": "oom",
        "node": "box",
        "gpu_indices": [0, 1],
    }
    full = wh.payload(
        "job.failed", job, fmt="json", at="2026-01-01T00:00:00+00:00", job_url="http://api/jobs/7"
    )
    assert full["event"] == "job.failed" and full["job"] == job and full["url"] == "http://api/jobs/7"
    assert full["text"] == "gpuyard: job 7 (bert, ana) failed (oom, exit code 1) http://api/jobs/7"
    slack = wh.payload("job.started", job, fmt="slack", at="t", job_url=None)
    assert slack == {"text": "gpuyard: job 7 (bert, ana) started on box GPUs [0, 1]"}
    assert wh.END_EVENTS == {
        "succeeded": "job.finished",
        "failed": "job.failed",
        "timed_out": "job.failed",
        "cancelled": "job.cancelled",
    }


def _gpu(index: int, util: int | None, *processes: GpuProcess, used: int = 0) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index}", "RTX 3090", 24576, used, util, tuple(processes))


def test_gpu_processes_are_mapped_to_jobs_by_process_group() -> None:
    pgid = {100: 100, 101: 100, 200: 200, 999: 999}.get  # 101 is a DataLoader worker of job (1, 1)
    gpus = [
        _gpu(0, 97, GpuProcess(100, 5000), GpuProcess(101, 300), used=5300),
        _gpu(1, 88, GpuProcess(101, 1000), used=1000),
        _gpu(2, 0, GpuProcess(999, 2000), used=2000),  # someone else's notebook
        _gpu(3, 3, used=700),  # the driver lists no process here (a container)
    ]
    jobs = {(1, 1): (100, [0, 1]), (2, 3): (200, [3])}
    usage = {(u.job_id, u.attempt): u for u in usage_by_job(gpus, jobs, pgid_of=pgid)}
    first = [(g.index, g.utilization_pct, g.memory_used_mib) for g in usage[(1, 1)].gpus]
    assert first == [(0, 97, 5300), (1, 88, 1000)]
    second = [(g.index, g.utilization_pct, g.memory_used_mib) for g in usage[(2, 3)].gpus]
    assert second == [(3, 3, 700)]


def test_a_process_on_a_gpu_the_job_was_not_given_still_counts_for_it() -> None:
    gpus = [_gpu(0, 50), _gpu(1, 40, GpuProcess(100, 800), used=800)]
    (usage,) = usage_by_job(gpus, {(5, 1): (100, [0])}, pgid_of=lambda pid: pid)
    assert [(g.index, g.memory_used_mib) for g in usage.gpus] == [(0, 0), (1, 800)]


@pytest.mark.parametrize(
    ("name", "run"),
    [
        ("digits", "job-12-digits/attempt-1"),
        ("bert large / lr=3e-4", "job-12-bert-large-lr-3e-4/attempt-1"),
        ("...", "job-12/attempt-1"),
        ("x" * 80, "job-12-" + "x" * 40 + "/attempt-1"),
    ],
)
def test_tensorboard_runs_are_safe_readable_directories(name: str, run: str) -> None:
    assert tensorboard_run(12, name, 1) == run


def test_buckets_start_on_multiples_of_their_length() -> None:
    at = datetime(2026, 12, 4, 10, 0, 47, 500_000, tzinfo=UTC)
    assert bucket_start(at, 30) == datetime(2026, 12, 4, 10, 0, 30, tzinfo=UTC)
    assert bucket_start(at, 1) == datetime(2026, 12, 4, 10, 0, 47, tzinfo=UTC)


def test_thinning_keeps_at_most_n_points_evenly_and_the_last() -> None:
    rows = [{"i": i} for i in range(1000)]
    kept = thin(rows, 100)
    assert len(kept) <= 100 and kept[0] == {"i": 0} and kept[-1] == {"i": 999}
    assert thin(rows[:5], 100) == rows[:5]


class _Broker:
    publish_failures = 2
    reconnects = 1


def test_the_exposition_follows_prometheus_naming_and_parses() -> None:
    metrics = PrometheusMetrics(_Broker())
    metrics.job_submitted(outcome="accepted", count=3)
    metrics.job_started(wait_s=12.0, dispatch_latency_s=0.02)
    metrics.job_finished(state="failed", failure_class="oom", run_s=3600.0)
    metrics.scheduler_pass(duration_s=0.004, estimates=False)
    snapshot = Snapshot(
        jobs={("running", "ana"): 1, ("queued", "bo"): 2},
        queue_length=2,
        oldest_wait_s=95.0,
        next_start_s=None,
        idle_gpu_jobs=0,
        nodes_up={"box": True},
        gpus=[GpuGauge("box", 0, "GPU-0", 97, 5000, 24576, True, 1)],
    )
    text = metrics.render(snapshot).decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("gpuyard_job_submissions_total", (("outcome", "accepted"),))] == 3
    assert found[("gpuyard_job_finishes_total", (("failure_class", "oom"), ("state", "failed")))] == 1
    assert found[("gpuyard_job_wait_seconds_count", ())] == 1
    assert found[("gpuyard_dispatch_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert found[("gpuyard_jobs", (("state", "queued"), ("user", "bo")))] == 2
    assert found[("gpuyard_queue_oldest_wait_seconds", ())] == 95
    assert ("gpuyard_queue_next_start_seconds", ()) not in found  # unknown: no sample rather than a fake 0
    labels = (("gpu", "0"), ("node", "box"), ("uuid", "GPU-0"))
    assert found[("gpuyard_gpu_utilization_ratio", labels)] == 0.97
    assert found[("gpuyard_gpu_memory_total_bytes", labels)] == 24576 * 1024 * 1024
    assert found[("gpuyard_gpu_allocated", labels)] == 1
    assert found[("gpuyard_gpu_outside_processes", labels)] == 1
    assert found[("gpuyard_broker_publish_failures_total", ())] == 2
    assert ("gpuyard_dead_letters", (("kind", "job"),)) not in found  # none given: no sample
    assert "job_id" not in text
    # Gauges about now only appear in a scrape: without a snapshot the counters stay.


def test_the_dashboard_and_the_runbook_only_query_metrics_that_exist() -> None:
    metrics = PrometheusMetrics(_Broker())
    metrics.job_finished(state="failed", failure_class="oom", run_s=1.0)
    metrics.job_started(wait_s=1.0, dispatch_latency_s=0.1)
    metrics.scheduler_pass(duration_s=0.01, estimates=True)
    metrics.webhook_delivery(outcome="delivered")
    metrics.job_submitted(outcome="accepted")
    snapshot = Snapshot(
        jobs={("running", "ana"): 1},
        queue_length=1,
        oldest_wait_s=1.0,
        next_start_s=2.0,
        idle_gpu_jobs=0,
        nodes_up={"box": True},
        gpus=[GpuGauge("box", 0, "GPU-0", 50, 1, 2, True, 0)],
        webhook_deliveries={"pending": 1},
        dead_letters={"job": 0, "message": 1},
    )
    families = list(text_string_to_metric_families(metrics.render(snapshot).decode()))
    exposed = {f.name for f in families} | {s.name for f in families for s in f.samples}
    docs = Path(__file__).resolve().parents[2] / "docs"
    for source in (docs / "grafana" / "gpuyard.json", docs / "operations.md"):
        used = set(re.findall(r"\bgpuyard_[a-z_]+[a-z]", source.read_text()))
        assert used and used <= exposed, (
            f"{source.name} uses metrics nothing exports: {sorted(used - exposed)}"
        )
