"""Prometheus metrics of the server: requests by status, batch sizes, queue and inference time.

They also hold what Triton's statistics extension reports (runtime/serving/triton_stats.py reads
them back), so /metrics and /v2/models/NAME/stats agree and both sum over ``--workers``.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)

__all__ = ["ServerMetrics", "PHASES"]

PHASES = ("input", "infer", "output")  # a batch run: prepare inputs, backend call, split outputs

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_mode() -> bool:
    """True when prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR (chosen at import)."""
    return values.ValueClass is not values.MutexValue


class ServerMetrics:
    """One registry per server (so tests and several apps in one process do not collide).

    Also the batcher's observer: ``on_batch`` is called from its worker thread once per batch.
    Under ``stn-deploy serve --workers N`` each worker process writes its values to
    PROMETHEUS_MULTIPROC_DIR and ``render`` reports the sum over all of them, so a scrape that
    lands on any worker sees the whole server.
    """

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "stn_requests",
            "Inference requests answered, by HTTP status",
            ["model", "code"],
            registry=r,
        )
        self.errors = Counter(
            "stn_errors", "Failed inference requests by kind", ["model", "kind"], registry=r
        )
        self.request_seconds = Histogram(
            "stn_request_seconds",
            "Time from request read to response, seconds, by outcome (success: status 200)",
            ["model", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "stn_batch_size",
            "Samples per backend call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "stn_queue_seconds",
            "Time a request waited in the batcher's queue, seconds",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "stn_inference_seconds",
            "Backend time per batch, seconds",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Successful backend calls, as Triton's statistics count them.
        self.executions = Counter(
            "stn_executions", "Backend calls that succeeded", ["model"], registry=r
        )
        self.inferences = Counter(
            "stn_inferences", "Samples in backend calls that succeeded", ["model"], registry=r
        )
        self.compute_requests = Counter(
            "stn_compute_requests",
            "Requests (batch entries) in backend calls that succeeded",
            ["model"],
            registry=r,
        )
        self.compute_seconds = Counter(
            "stn_compute_seconds",
            "Per-request compute time, seconds: each request is charged its batch's time in each "
            "phase (input: concatenate and check, infer: the backend, output: split per request)",
            ["model", "phase"],
            registry=r,
        )
        self.batch_executions = Counter(
            "stn_batch_executions",
            "Backend calls that succeeded, by batch size",
            ["model", "batch_size"],
            registry=r,
        )
        self.batch_compute_seconds = Counter(
            "stn_batch_compute_seconds",
            "Time of backend calls that succeeded, seconds, by batch size and phase",
            ["model", "batch_size", "phase"],
            registry=r,
        )
        self.last_inference = Gauge(
            "stn_last_inference_timestamp_seconds",
            "When the last successful backend call ended, Unix time",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.queue_depth = Gauge(
            "stn_queue_samples",
            "Samples waiting in the batcher's queue",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # all live workers' queues (ignored in one process)
        )

        # labelled children, looked up once: labels() costs a lock and a dict per call
        self._batch = self.batch_size.labels(model)
        self._queue = self.queue_seconds.labels(model)
        self._infer = self.inference_seconds.labels(model)
        self._request_ok = self.request_seconds.labels(model, "success")
        self._request_failed = self.request_seconds.labels(model, "failure")
        self._executions = self.executions.labels(model)
        self._inferences = self.inferences.labels(model)
        self._compute_requests = self.compute_requests.labels(model)
        self._compute = [self.compute_seconds.labels(model, p) for p in PHASES]
        self._last = self.last_inference.labels(model)
        self._by_size: dict[int, tuple] = {}
        self._depth = self.queue_depth.labels(model)
        self._by_code: dict[int, object] = {}
        # Set by the server to its batcher's queue depth. With several workers a scrape reads
        # the others' gauges from their files, so each refreshes its own once per batch.
        self.queued_samples = None
        self._multiprocess = multiprocess_mode()

    def on_batch(
        self,
        size: int,
        queue_seconds: list[float],
        infer_seconds: float,
        failed: bool,
        phases: tuple[float, float, float],
    ) -> None:
        self._batch.observe(size)
        for q in queue_seconds:
            self._queue.observe(q)
        self._infer.observe(infer_seconds)
        if failed:
            self.errors.labels(self.model, "backend").inc(len(queue_seconds))
        else:
            self._succeeded(size, len(queue_seconds), phases)
        if self._multiprocess and self.queued_samples is not None:
            self._depth.set(self.queued_samples())

    def _succeeded(self, size: int, requests: int, phases: tuple[float, float, float]) -> None:
        self._executions.inc()
        self._inferences.inc(size)
        self._compute_requests.inc(requests)
        children = self._by_size.get(size)
        if children is None:
            label = str(size)
            children = self._by_size[size] = (
                self.batch_executions.labels(self.model, label),
                [self.batch_compute_seconds.labels(self.model, label, p) for p in PHASES],
            )
        children[0].inc()
        for seconds, per_request, per_batch in zip(phases, self._compute, children[1]):
            per_request.inc(seconds * requests)
            per_batch.inc(seconds)
        self._last.set(time.time())

    def on_request(self, code: int, seconds: float, error_kind: str | None = None) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self.requests.labels(self.model, str(code))
        counter.inc()
        (self._request_ok if code == 200 else self._request_failed).observe(seconds)
        if error_kind is not None and error_kind != "backend":  # backend: counted per batch
            self.errors.labels(self.model, error_kind).inc()

    def render(self, queued_samples: int) -> tuple[bytes, str]:
        self._depth.set(queued_samples)
        return generate_latest(self.collected()), CONTENT_TYPE_LATEST

    def collected(self) -> CollectorRegistry:
        """This server's registry; under ``--workers``, one merged over every worker's values."""
        if not self._multiprocess:
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged
