"""Metrics: names, the queue read at scrape time, and counting that never
breaks a webhook's answer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from relay import metrics
from relay.store.redis import RedisStore
from relay.store.sqlite import SQLiteStore
from tests.servers import free_port


def test_a_failed_count_is_logged_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.metrics")
    metrics.count(metrics.WEBHOOKS, "only-one-label")  # two are declared
    assert "metrics.count_failed" in caplog.text


def test_a_scrape_shows_counters_and_the_queue(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "relay.db"))
    try:
        metrics.count(metrics.WEBHOOKS, "alertmanager", "202")
        text = metrics.render(store).decode()
    finally:
        store.close()
    assert 'relay_webhooks_total{code="202",source="alertmanager"}' in text
    assert 'relay_queue_jobs{queue="pending"} 0.0' in text
    assert "relay_queue_oldest_pending_age_seconds 0.0" in text
    assert "relay_store_up 1.0" in text
    assert "relay_webhooks_created" not in text  # no *_created series


def test_a_scrape_with_the_store_down_says_so() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        text = metrics.render(store).decode()
    finally:
        store.close()
    assert "relay_store_up 0.0" in text
    assert "relay_queue_jobs" not in text
