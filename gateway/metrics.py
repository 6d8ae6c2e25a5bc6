"""Prometheus metrics of one gateway process, with bounded label sets (no key ids, no request ids)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The values other objects own (queue depths, upstream health) are read at scrape time by the collector in
# gateway/state_metrics.py, registered when the app is ready: this module imports nothing of the gateway's, so
# the recorder and the pipeline can import it without a circle.
registry = CollectorRegistry()

# Label values come from closed sets: the route label, the configured aliases (staff-controlled),
# the HTTP status code. A customer can never mint a new series.
REQUESTS = Counter("gateway_requests_total", "Completed /v1 requests", ["route", "alias", "status"], registry=registry)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_latency_seconds",
    "Upstream call duration, first attempt to last byte",
    ["alias"],
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFB = Histogram(
    "gateway_upstream_ttfb_seconds",
    "Time from the customer's request to the upstream's first byte",
    ["alias"],
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time the gateway itself adds to a request (everything but the upstream wait)",
    ["route"],
    registry=registry,
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
INFLIGHT_STREAMS = Gauge("gateway_inflight_streams", "SSE streams being relayed now", registry=registry)
INFLIGHT_REQUESTS = Gauge("gateway_inflight_requests", "HTTP requests being served now, streams included", registry=registry)
# Refused by the HTTP server before any application ran (gateway/edge.py): reason is body_too_large or read_timeout.
EDGE_REFUSALS = Counter(
    "gateway_edge_refusals_total", "Requests refused by the HTTP server before the application", ["reason"], registry=registry
)
USAGE_WRITE_FAILURES = Counter("gateway_usage_write_failures_total", "Usage batches the database refused", registry=registry)
# Requests refused before anyone was authenticated (bad keys, unknown routes): counted here instead of a row each.
ANONYMOUS_REFUSALS = Counter(
    "gateway_anonymous_refusals_total",
    "Requests refused without an authenticated principal",
    ["route", "status"],
    registry=registry,
)
REQUEST_LOGS_DROPPED = Counter(
    "gateway_request_logs_dropped_total", "Request log rows dropped, oldest first, over the in-memory bound", registry=registry
)

# The route label of a path a client chose: one of these, or "other"; never the path itself.
_ROUTE_LABELS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/models": "models",
    "/v1/responses": "responses",
}


def route_label(path: str) -> str:
    label = _ROUTE_LABELS.get(path)
    if label is not None:
        return label
    if path.startswith("/v1/responses/"):
        return "responses"
    return "models" if path.startswith("/v1/models/") else "other"


def inflight_requests() -> int:
    return int(registry.get_sample_value("gateway_inflight_requests") or 0)


def exposition() -> bytes:
    return generate_latest(registry)
