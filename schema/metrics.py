"""Prometheus metrics of the HTTP API (module level: one registry per process). Open
subscriptions are the event hub's gauge, checkmate_event_subscribers."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "checkmate_http_requests_total", "HTTP requests served.", ["method", "path", "status"]
)
LATENCY = Histogram(
    "checkmate_http_request_seconds",
    "Time to serve an HTTP request, until the last byte of its response.",
    ["method", "path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
