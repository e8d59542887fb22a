"""End to end: a real Alertmanager posts to the relay over HTTP, the relay
creates tickets in the DoiT API emulator. Repeats and resolves create none,
and an HA pair of Alertmanagers sending every group twice opens one ticket
per group."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from relay.config import load_config
from tests.servers import ALERTMANAGER, Alertmanager, RelayHTTP, free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager missing"),
]

TOKEN = "e2e-secret-token"


class Decisions(logging.Handler):
    """Collects the relay's alert.decided events."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "alert.decided":
            self.seen.append(dict(record.__dict__))

    def count(self, decision: str) -> int:
        return sum(1 for d in self.seen if d.get("decision") == decision)


@pytest.fixture
def decisions() -> Iterator[Decisions]:
    handler = Decisions()
    logger = logging.getLogger("relay.dedup")
    logger.addHandler(handler)
    level = logger.level
    # duplicates are logged at debug level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def relay_server(tmp_path: Path, emulator: Any) -> Iterator[RelayHTTP]:
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(
        f"""
doit: {{api_url: "{emulator.url}", api_key: emulator-key}}
store: {{url: "sqlite:///{tmp_path / "relay.db"}"}}
delivery: {{workers: 1, poll_interval: 0.2s, backoff_initial: 0.2s}}
sources:
  alertmanager: {{auth: {{bearer_token: {TOKEN}}}}}
defaults: {{category: containers___kubernetes__google_gke}}
rules:
  - name: heartbeats
    match: {{matchers: ['alertname=~"Watchdog|InfoInhibitor"']}}
    drop: true
"""
    )
    server = RelayHTTP(load_config(config_file, env={}), delivery=True).start()
    yield server
    server.stop()


def tickets(emulator: Any) -> list[dict[str, Any]]:
    answer = requests.get(f"{emulator.url}/_emulator/tickets", timeout=5)
    answer.raise_for_status()
    data = answer.json()
    return list(data["tickets"] if isinstance(data, dict) else data)


def alert(name: str, *, resolved: bool = False, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "labels": {"alertname": name, "severity": "critical", **labels},
        "annotations": {"summary": f"{name} is firing"},
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
        "startsAt": (now - timedelta(minutes=5)).isoformat(),
    }
    if resolved:
        body["endsAt"] = (now - timedelta(seconds=1)).isoformat()
    else:
        body["endsAt"] = (now + timedelta(hours=1)).isoformat()
    return body


def test_alerts_become_tickets_once_and_resolve(
    tmp_path: Path, relay_server: RelayHTTP, emulator: Any, decisions: Decisions
) -> None:
    am = Alertmanager(
        tmp_path / "am", f"{relay_server.url}/webhooks/alertmanager", TOKEN
    ).start()
    try:
        am.post_alerts(
            [
                alert("DiskFull", instance="db-1"),
                alert("DiskFull", instance="db-2"),
                alert("HighLatency", service="api"),
                alert("Watchdog"),
            ]
        )
        created = wait_until(lambda: len(tickets(emulator)) >= 2 and tickets(emulator))
        subjects = sorted(t["subject"] for t in created)
        assert any("DiskFull" in s for s in subjects), subjects
        assert any("HighLatency" in s for s in subjects), subjects

        # Alertmanager re-sends every repeat_interval: duplicates, no ticket
        wait_until(lambda: decisions.count("duplicate") >= 2, timeout=60)
        assert len(tickets(emulator)) == 2
        assert decisions.count("dropped") == 0  # dropped alerts are not keys

        am.post_alerts(
            [
                alert("DiskFull", resolved=True, instance="db-1"),
                alert("DiskFull", resolved=True, instance="db-2"),
                alert("HighLatency", resolved=True, service="api"),
            ]
        )
        wait_until(lambda: decisions.count("resolved") >= 2, timeout=60)
        assert len(tickets(emulator)) == 2
    finally:
        am.stop()


def test_ha_pair_opens_one_ticket_per_group(
    tmp_path: Path, relay_server: RelayHTTP, emulator: Any, decisions: Decisions
) -> None:
    url = f"{relay_server.url}/webhooks/alertmanager"
    first_port, second_port = free_port(), free_port()
    first = Alertmanager(
        tmp_path / "am1", url, TOKEN, cluster_port=first_port, peers=[second_port]
    )
    second = Alertmanager(
        tmp_path / "am2", url, TOKEN, cluster_port=second_port, peers=[first_port]
    )
    first.start()
    second.start()
    try:
        groups = [f"Group{i}" for i in range(5)]
        batch = [alert(name, pod=f"pod-{j}") for name in groups for j in range(2)]
        # both replicas receive every alert, as Prometheus sends to both
        for _ in range(3):
            first.post_alerts(batch)
            second.post_alerts(batch)

        wait_until(lambda: len(tickets(emulator)) >= len(groups))
        # let both replicas flush and repeat a few times
        wait_until(lambda: decisions.count("duplicate") >= 2 * len(groups), timeout=90)
        found = tickets(emulator)
        assert len(found) == len(groups), [t["subject"] for t in found]
    finally:
        first.stop()
        second.stop()
