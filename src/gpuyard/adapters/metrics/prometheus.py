"""Prometheus metrics of one controller: counters and histograms fed as things happen (the Telemetry
port), gauges about now collected from a snapshot at scrape time. Base units, `_total` counters, no job ids
as labels. One registry per controller, so several controllers can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuyard.services.observe import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024

# Waits and runs of training jobs span seconds to days.
_LONG_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 259200, 604800)
_DISPATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PASS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class BrokerCounts(Protocol):
    """What the broker adapter counts itself (publish failures, reconnects)."""

    publish_failures: int
    reconnects: int


class PrometheusMetrics:
    def __init__(self, broker: BrokerCounts) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submissions = Counter(
            "gpuyard_job_submissions",
            "Jobs submitted, by outcome (accepted or the error code).",
            ["outcome"],
            registry=r,
        )
        self.finishes = Counter(
            "gpuyard_job_finishes",
            "Jobs that reached a final state, by state and failure class.",
            ["state", "failure_class"],
            registry=r,
        )
        self.wait = Histogram(
            "gpuyard_job_wait_seconds", "Time from submission to start.", buckets=_LONG_BUCKETS_S, registry=r
        )
        self.run = Histogram(
            "gpuyard_job_run_seconds",
            "Time from start to end of the final attempt.",
            buckets=_LONG_BUCKETS_S,
            registry=r,
        )
        self.dispatch = Histogram(
            "gpuyard_dispatch_latency_seconds",
            "Time from the scheduler placing a job to its process running on the node.",
            buckets=_DISPATCH_BUCKETS_S,
            registry=r,
        )
        self.passes = Histogram(
            "gpuyard_scheduler_pass_duration_seconds",
            "Duration of one scheduling pass.",
            ["kind"],
            buckets=_PASS_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter(
            "gpuyard_job_retries",
            "Failed attempts sent back in line by the retry policy, by failure class.",
            ["failure_class"],
            registry=r,
        )
        self.preemptions = Counter(
            "gpuyard_preemptions",
            "Preemptible jobs stopped for a job ahead of them in line and put back in their place.",
            registry=r,
        )
        self.webhooks = Counter(
            "gpuyard_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"], registry=r
        )
        self._now = _NowCollector(broker)
        r.register(self._now)

    # the Telemetry port

    def job_submitted(self, *, outcome: str, count: int = 1) -> None:
        self.submissions.labels(outcome).inc(count)

    def job_started(self, *, wait_s: float, dispatch_latency_s: float | None) -> None:
        self.wait.observe(max(0.0, wait_s))
        if dispatch_latency_s is not None:
            self.dispatch.observe(max(0.0, dispatch_latency_s))

    def job_finished(self, *, state: str, failure_class: str | None, run_s: float | None) -> None:
        self.finishes.labels(state, failure_class or "").inc()
        if run_s is not None:
            self.run.observe(max(0.0, run_s))

    def scheduler_pass(self, *, duration_s: float, estimates: bool) -> None:
        self.passes.labels("estimates" if estimates else "placement").observe(duration_s)

    def job_retried(self, *, failure_class: str) -> None:
        self.retries.labels(failure_class).inc()

    def job_preempted(self) -> None:
        self.preemptions.inc()

    def webhook_delivery(self, *, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    # scraping

    def render(self, snapshot: Snapshot) -> bytes:
        self._now.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._now.snapshot = None


class _NowCollector(Collector):
    def __init__(self, broker: BrokerCounts) -> None:
        self.broker = broker
        self.snapshot: Snapshot | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the snapshot; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "gpuyard_broker_publish_failures",
            "Messages RabbitMQ did not confirm.",
            value=self.broker.publish_failures,
        )
        yield CounterMetricFamily(
            "gpuyard_broker_reconnects",
            "Reconnections to RabbitMQ after a lost connection.",
            value=self.broker.reconnects,
        )
        s = self.snapshot
        if s is None:
            return
        yield _gauge("gpuyard_jobs", "Jobs by state and user.", ["state", "user"], s.jobs.items())
        yield GaugeMetricFamily(
            "gpuyard_queue_length", "Jobs waiting (held ones included).", value=s.queue_length
        )
        yield _optional(
            "gpuyard_queue_oldest_wait_seconds",
            "How long the oldest waiting job has waited.",
            s.oldest_wait_s,
        )
        yield _optional(
            "gpuyard_queue_next_start_seconds",
            "Estimated wait until the job next in line starts (from the last pass).",
            s.next_start_s,
        )
        yield GaugeMetricFamily(
            "gpuyard_jobs_idle_gpu",
            "Running jobs flagged as holding GPUs they do not use.",
            value=s.idle_gpu_jobs,
        )
        yield _gauge(
            "gpuyard_node_up",
            "1 while the node's worker reports in.",
            ["node"],
            (((n,), float(up)) for n, up in s.nodes_up.items()),
        )
        labels = ["node", "gpu", "uuid"]
        yield _per_gpu(
            s,
            "gpuyard_gpu_utilization_ratio",
            "GPU utilization, 0 to 1.",
            labels,
            lambda g: None if g.utilization_pct is None else g.utilization_pct / 100,
        )
        yield _per_gpu(
            s,
            "gpuyard_gpu_memory_used_bytes",
            "GPU memory in use.",
            labels,
            lambda g: g.memory_used_mib * MIB,
        )
        yield _per_gpu(
            s, "gpuyard_gpu_memory_total_bytes", "GPU memory.", labels, lambda g: g.memory_total_mib * MIB
        )
        yield _per_gpu(
            s,
            "gpuyard_gpu_allocated",
            "1 while a gpuyard job holds the GPU.",
            labels,
            lambda g: float(g.allocated),
        )
        yield _per_gpu(
            s,
            "gpuyard_gpu_outside_processes",
            "Processes outside gpuyard holding the GPU.",
            labels,
            lambda g: g.outside_processes,
        )
        yield _gauge(
            "gpuyard_webhook_deliveries_by_state",
            "Webhook deliveries by state.",
            ["state"],
            (((state,), n) for state, n in s.webhook_deliveries.items()),
        )
        yield _gauge(
            "gpuyard_dead_letters",
            "Dead letters not requeued: jobs out of attempts, messages that could not be processed.",
            ["kind"],
            (((kind,), n) for kind, n in s.dead_letters.items()),
        )


def _gauge(name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def _optional(name: str, doc: str, value: float | None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[])
    if value is not None:
        family.add_metric([], value)
    return family


def _per_gpu(
    s: Snapshot, name: str, doc: str, labels: list[str], value_of: Callable[..., float | None]
) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for gpu in s.gpus:
        value = value_of(gpu)
        if value is not None:
            family.add_metric([gpu.node, str(gpu.index), gpu.uuid], value)
    return family
