"""The process's state as Prometheus gauges, read at scrape time from the objects that own it.

Above gateway.metrics (which the recorder and the pipeline import) and the objects it reads, so neither side
imports the other; `register` runs once, from the app's ready().
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from gateway import dbstats
from gateway.metrics import registry
from gateway.recorder import recorder
from gateway.state import state
from gateway.upstream import upstreams

_registered = False


class _StateCollector:
    """Values read at scrape time from the objects that own them."""

    def describe(self) -> list:  # noqa: ANN401 - nothing to pre-declare; keeps registration import-free
        return []

    def collect(self):  # noqa: ANN201 - the prometheus_client collector protocol
        depth = GaugeMetricFamily("gateway_usage_queue_depth", "Usage and log rows not yet written")
        depth.add_metric([], recorder.depth)
        yield depth
        for name, what, rows, bound in (
            ("usage", "Usage rows", recorder.usage_backlog, recorder.usage_max),
            ("request_log", "Request log rows", recorder.depth - recorder.usage_backlog, recorder.log_max),
        ):
            yield GaugeMetricFamily(f"gateway_{name}_backlog_rows", f"{what} waiting in memory for the database", value=rows)
            yield GaugeMetricFamily(f"gateway_{name}_backlog_limit", f"{what} that may wait in memory", value=bound)
        backlog = GaugeMetricFamily(
            "gateway_usage_backlog_state",
            "0 ok; 1 usage backlog over 80% of its bound; 2 at the bound, billable requests refused",
        )
        backlog.add_metric([], recorder.backlog_state)
        yield backlog
        queries = GaugeMetricFamily("gateway_db_queries", "Database statements run by this process so far")
        queries.add_metric([], dbstats.queries_executed())
        yield queries
        yield GaugeMetricFamily(
            "gateway_db_queries_v1",
            "Database statements run while serving /v1 requests",
            value=dbstats.queries_executed_on_v1_path(),
        )
        yield GaugeMetricFamily(
            "gateway_cache_pubsub_connected",
            "1 while cache changes arrive over Redis pub/sub; 0: the poll alone",
            value=int(state.pubsub_connected),
        )
        yield GaugeMetricFamily(
            "gateway_cache_position", "The newest cache change this process has applied", value=state.position or 0
        )
        healthy = GaugeMetricFamily(
            "gateway_upstreams_healthy", "Healthy upstreams (endpoint x session) per alias", labels=["alias"]
        )
        total = GaugeMetricFamily("gateway_upstreams", "Configured upstreams (endpoint x session) per alias", labels=["alias"])
        for route in state.snapshot.routes.values():
            healthy.add_metric([route.alias], upstreams.healthy_count(route))
            total.add_metric([route.alias], len(route.upstreams))
        yield healthy
        yield total


def register() -> None:
    global _registered
    if not _registered:  # ready() can run twice (tests that reload apps); a second registration would raise
        registry.register(_StateCollector())
        _registered = True
