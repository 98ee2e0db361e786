"""Triton's statistics extension (``GET /v2/models/NAME/stats``) from the server's own metrics.

The figures are read back from the Prometheus registry
(:mod:`stn_deploy.runtime.serving.metrics`), so they agree with /metrics and sum over
``--workers``. What each field counts here:

- ``success`` / ``fail``: requests answered 200 / anything else, and their time in the server
  (from reading the request to the response);
- ``queue``: batch entries (a request, or a chunk of one larger than ``--max-batch``) and their
  wait in the batcher's queue;
- ``compute_input`` / ``compute_infer`` / ``compute_output``: batch entries of successful backend
  calls, each charged its call's time to prepare the inputs, run the backend and split the
  outputs (as Triton charges every request of a batch);
- ``inference_count``: samples in successful backend calls; ``execution_count``: those calls;
- ``batch_stats``: the same three phases per batch size, once per call;
- ``last_inference``: milliseconds since the epoch when the last successful call ended (0: none).

There is no response cache, so ``cache_hit`` and ``cache_miss`` stay zero.
"""

from __future__ import annotations

from collections import defaultdict

from stn_deploy.runtime.serving.metrics import PHASES, ServerMetrics

__all__ = ["model_statistics"]


def _totals(metrics: ServerMetrics) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels other than model) -> value, for this model's samples."""
    out: dict[tuple[str, tuple], float] = defaultdict(float)
    for family in metrics.collected().collect():
        for sample in family.samples:
            labels = dict(sample.labels)
            if labels.pop("model", None) != metrics.model:
                continue
            out[(sample.name, tuple(sorted(labels.items())))] += sample.value
    return out


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(round(seconds * 1e9))}


def model_statistics(metrics: ServerMetrics, version: str) -> dict:
    """One ``$model_stat`` object of the statistics extension for the served model."""
    t = _totals(metrics)

    def get(name: str, **labels: str) -> float:
        return t.get((name, tuple(sorted(labels.items()))), 0.0)

    entries = get("stn_compute_requests_total")
    stats = {
        "success": _duration(
            get("stn_request_seconds_count", outcome="success"),
            get("stn_request_seconds_sum", outcome="success"),
        ),
        "fail": _duration(
            get("stn_request_seconds_count", outcome="failure"),
            get("stn_request_seconds_sum", outcome="failure"),
        ),
        "queue": _duration(get("stn_queue_seconds_count"), get("stn_queue_seconds_sum")),
        **{
            f"compute_{phase}": _duration(entries, get("stn_compute_seconds_total", phase=phase))
            for phase in PHASES
        },
        "cache_hit": _duration(0, 0.0),
        "cache_miss": _duration(0, 0.0),
    }
    sizes = sorted(
        int(dict(labels)["batch_size"])
        for name, labels in t
        if name == "stn_batch_executions_total"
    )
    batch_stats = []
    for size in sizes:
        calls = get("stn_batch_executions_total", batch_size=str(size))
        batch_stats.append({
            "batch_size": size,
            **{
                f"compute_{phase}": _duration(
                    calls,
                    get("stn_batch_compute_seconds_total", batch_size=str(size), phase=phase),
                )
                for phase in PHASES
            },
        })  # fmt: skip
    return {
        "name": metrics.model,
        "version": version,
        "last_inference": int(get("stn_last_inference_timestamp_seconds") * 1000),
        "inference_count": int(get("stn_inferences_total")),
        "execution_count": int(get("stn_executions_total")),
        "inference_stats": stats,
        "batch_stats": batch_stats,
    }
