"""Prometheus metrics, correct under gunicorn's several worker processes.

Counters and histograms are recorded with ``prometheus_client``; when
``PROMETHEUS_MULTIPROC_DIR`` is set (``relay serve`` sets it up) every worker
process writes its own files there and a scrape adds them up. Queue depths
are not counted by anyone: they are read from the store at scrape time, so
every replica reports the same truth.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.errors import StoreUnavailable

if TYPE_CHECKING:
    from prometheus_client import Metric

    from relay.store.base import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST
log = logging.getLogger(__name__)

# the *_created series double every counter for little use to an operator
disable_created_metrics()  # type: ignore[no-untyped-call]

WEBHOOKS = Counter(
    "relay_webhooks_total",
    "Webhook requests answered, by source and HTTP status.",
    ["source", "code"],
)
ALERTS = Counter(
    "relay_alerts_total",
    "Alerts decided, by source, decision and rule.",
    ["source", "decision", "rule"],
)
TICKETS = Counter(
    "relay_tickets_created_total",
    "Tickets created (or adopted after an ambiguous create), by source.",
    ["source"],
)
DELIVERIES = Counter(
    "relay_delivery_attempts_total",
    "Delivery attempts by outcome: created, adopted, retry, dead, skipped.",
    ["outcome"],
)
API_CALLS = Counter(
    "relay_api_requests_total",
    "Calls to the DoiT API, by method and HTTP status (or 'error').",
    ["method", "status"],
)
API_LATENCY = Histogram(
    "relay_api_request_duration_seconds",
    "Latency of calls to the DoiT API.",
    ["method"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORE_ERRORS = Counter(
    "relay_store_errors_total",
    "Store operations that failed because the store was unavailable.",
    ["operation"],
)


def count(counter: Counter, *labels: str) -> None:
    """Count one event; never raises. A webhook's alerts are stored before
    it is counted, so a failure here must not turn its answer into a 500."""
    try:
        counter.labels(*labels).inc()
    except Exception:
        log.warning("metrics.count_failed", exc_info=True)


class QueueCollector(Collector):
    """Queue depths and the age of the oldest due job, read at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "relay_store_up", "Whether the store answered the scrape."
        )
        try:
            stats = self.store.stats(time.time())
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "relay_queue_jobs", "Delivery jobs by queue.", labels=["queue"]
        )
        depth.add_metric(["pending"], stats.pending)
        depth.add_metric(["scheduled"], stats.scheduled)
        depth.add_metric(["leased"], stats.leased)
        depth.add_metric(["dead"], stats.dead)
        yield depth
        yield GaugeMetricFamily(
            "relay_queue_oldest_pending_age_seconds",
            "Age of the oldest job waiting for delivery.",
            value=stats.oldest_pending_age,
        )
        yield GaugeMetricFamily(
            "relay_dead_letters",
            "Jobs given up on, waiting for an operator.",
            value=stats.dead,
        )


def use_multiprocess_values() -> None:
    """Record the values of metrics created from now on in the files of
    ``PROMETHEUS_MULTIPROC_DIR`` (or in memory when it is unset).

    prometheus_client chooses where values live once, when it is first
    imported, and ``relay serve`` has imported it (through the application,
    to check the rules) before it names the directory: without choosing
    again, every worker would count in its own memory and a scrape would
    show none of it. Every relay metric has labels, so no value exists
    until a worker process first records one.
    """
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def render(store: Store | None) -> bytes:
    """The text of a scrape: every process's counters plus the queue."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for collector in (
            WEBHOOKS,
            ALERTS,
            TICKETS,
            DELIVERIES,
            API_CALLS,
            API_LATENCY,
            STORE_ERRORS,
        ):
            registry.register(collector)
    if store is not None:
        registry.register(QueueCollector(store))
    return generate_latest(registry)
