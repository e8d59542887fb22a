"""The webhook answers, over real HTTP: what a sender is told, in every case.

The relay runs from the shipped ``config/relay.yaml`` on a SQLite file of
the test's own (a Redis on a dead port stands for a store that is down),
served by a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Config, load_config
from relay.delivery import Delivery, make_client
from relay.emulator import EmulatorServer
from relay.errors import StoreUnavailable
from relay.store.base import Observation, Outcome, Store
from relay.store.redis import RedisStore
from relay.store.sqlite import SQLiteStore
from tests.servers import RelayHTTP, free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
TOKEN = "am-bearer-secret-31337"
TIMEOUT = 15


# -- building blocks ---------------------------------------------------------


def shipped_config(store_path: Path, **env: str) -> Config:
    """The shipped configuration, as the container would read it."""
    variables = {
        "DOIT_API_KEY": "test-key",
        "RELAY_DEFAULT_CATEGORY": "containers___kubernetes__google_gke",
        "RELAY_STORE": f"sqlite:///{store_path}",
        **env,
    }
    return load_config(ROOT / "config" / "relay.yaml", env=variables)


Serve = Callable[..., RelayHTTP]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start the relay over HTTP: ``serve(store=..., config=..., **env)``;
    every server is stopped and every store closed afterwards."""
    running: list[tuple[RelayHTTP, Store]] = []

    def start(
        store: Store | None = None, config: Config | None = None, **env: str
    ) -> RelayHTTP:
        path = tmp_path / f"relay-{len(running)}.db"
        config = config or shipped_config(path, **env)
        store = store or SQLiteStore(str(path))
        server = RelayHTTP(config, store)
        # a short poll makes stop() quick, which adds up over this file
        server.thread = threading.Thread(
            target=server.server.serve_forever,
            kwargs={"poll_interval": 0.02},
            daemon=True,
        )
        server.start()
        running.append((server, store))
        return server

    yield start
    for server, store in running:
        server.stop()
        store.close()


def post(
    server: RelayHTTP, source: str, body: bytes | Any, **kwargs: Any
) -> requests.Response:
    """POST to a webhook; every answer is JSON without a stack trace."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = requests.post(
        f"{server.url}/webhooks/{source}", data=data, timeout=TIMEOUT, **kwargs
    )
    assert "Traceback" not in answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    return answer


def am_alert(name: str, *, fingerprint: str, status: str = "firing") -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "instance": "db-1", "severity": "critical"},
        "annotations": {"summary": f"{name} on db-1"},
        "startsAt": "2024-05-01T12:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }


def am_notification(*alerts: dict[str, Any], group: str = "db") -> dict[str, Any]:
    return {
        "version": "4",
        "receiver": "doit",
        "groupKey": f'{{}}:{{group="{group}"}}',
        "status": "firing",
        "truncatedAlerts": 0,
        "groupLabels": {"group": group},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def pubsub_push(message_id: str, incident_id: str = "0.cpu-incident") -> bytes:
    """A Cloud Monitoring incident in a Pub/Sub push envelope, which
    carries a message id that Pub/Sub keeps on redelivery."""
    incident = {
        "incident_id": incident_id,
        "state": "open",
        "policy_name": "Checkout CPU high",
        "started_at": 1714564800,
        "summary": "CPU above 80%",
    }
    data = json.dumps({"version": "1.2", "incident": incident}).encode()
    envelope = {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": "2024-05-01T12:00:00Z",
        },
        "subscription": "projects/shop/subscriptions/relay",
    }
    return json.dumps(envelope).encode()


def decisions(answer: requests.Response) -> list[tuple[str, str, str]]:
    return [(d["alert"], d["action"], d["rule"]) for d in answer.json()["decisions"]]


# -- accepted ----------------------------------------------------------------


def test_a_notification_is_answered_202_with_one_decision_per_alert(
    serve: Serve,
) -> None:
    server = serve()
    body = am_notification(
        am_alert("DiskFull", fingerprint="1"),
        am_alert("Watchdog", fingerprint="w"),
        am_alert("DiskFull", fingerprint="2"),
    )

    answer = post(server, "alertmanager", body)

    assert answer.status_code == 202
    assert answer.json()["status"] == "accepted"
    assert decisions(answer) == [
        ("DiskFull", "queued", "prometheus"),
        ("Watchdog", "dropped", "heartbeats"),
        ("DiskFull", "queued", "prometheus"),
    ]
    first, dropped, last = answer.json()["decisions"]
    assert first["key"] == last["key"]
    assert first["key"].startswith("alertmanager:")
    assert "key" not in dropped
    assert "ticket_id" not in first  # nothing delivered yet


def test_after_delivery_a_duplicate_carries_the_ticket(
    serve: Serve, emulator: EmulatorServer, tmp_path: Path
) -> None:
    config = shipped_config(tmp_path / "relay.db", DOIT_API_URL=emulator.url)
    server = serve(config=config)
    body = am_notification(am_alert("DiskFull", fingerprint="1"))
    post(server, "alertmanager", body)
    client = make_client(server.relay)
    assert client is not None
    try:
        assert Delivery(server.relay, client).drain() == 1
    finally:
        client.close()
    [ticket] = emulator.tickets()

    answer = post(server, "alertmanager", body)

    assert answer.status_code == 202
    [decision] = answer.json()["decisions"]
    assert decision["action"] == "duplicate"
    assert decision["ticket_id"] == str(ticket["id"])
    assert decision["ticket_url"] == ticket["url"]


# -- the captured payloads -----------------------------------------------------

QUEUED, IGNORED = "queued", "ignored"
# (source, status, actions) per captured payload; the shipped rules route
# Alertmanager to "prometheus" and Cloud Monitoring to "cloud-monitoring"
EXPECTED: dict[str, tuple[str, int, list[str]]] = {
    "am_firing_1.json": ("alertmanager", 202, [QUEUED]),
    "am_firing_endsat_future_legacy_1.json": ("alertmanager", 202, [QUEUED]),
    "am_firing_endsat_future_legacy_1.raw.json": ("alertmanager", 202, [QUEUED]),
    "am_firing_minimal_fields_1.json": ("alertmanager", 202, [QUEUED]),
    "am_firing_multi_1.json": ("alertmanager", 202, [QUEUED, QUEUED]),
    "am_firing_multi_2.json": ("alertmanager", 202, [QUEUED, QUEUED, QUEUED]),
    "am_legacy_v3_numeric_groupkey_1.json": ("alertmanager", 202, [QUEUED]),
    # two of three alerts resolved, one firing: the group's ticket is wanted
    "am_mixed_firing_resolved_grafana_1.json": (
        "alertmanager",
        202,
        [QUEUED, QUEUED, QUEUED],
    ),
    "am_resolved_1.json": ("alertmanager", 202, [IGNORED]),
    "am_resolved_1.raw.json": ("alertmanager", 202, [IGNORED]),
    "am_resolved_2.json": ("alertmanager", 202, [IGNORED]),
    # the only alert sent is resolved, 123 were cut: never taken as resolved
    "am_truncated_1.json": ("alertmanager", 202, [IGNORED]),
    "am_unicode_labels_1.json": ("alertmanager", 202, [QUEUED, QUEUED]),
    "gcm_incident_closed_1.json": ("cloud-monitoring", 202, [IGNORED]),
    "gcm_incident_closed_2.json": ("cloud-monitoring", 202, [IGNORED]),
    "gcm_incident_open_1.json": ("cloud-monitoring", 202, [QUEUED]),
    "gcm_legacy_stackdriver_v1_1_closed_1.json": ("cloud-monitoring", 202, [IGNORED]),
    "gcm_legacy_stackdriver_v1_1_open_1.json": ("cloud-monitoring", 202, [QUEUED]),
    "gcm_log_based_open_1.json": ("cloud-monitoring", 202, [QUEUED]),
    "gcm_promql_open_with_subject_1.json": ("cloud-monitoring", 202, [QUEUED]),
    # the Test button: acknowledged, nothing to decide
    "gcm_test_notification_1.json": ("cloud-monitoring", 200, []),
}


def _samples() -> list[Any]:
    if not SAMPLES.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no {SAMPLES}"))]
    files = sorted([*SAMPLES.glob("am_*.json"), *SAMPLES.glob("gcm_*.json")])
    return [pytest.param(path, id=path.name) for path in files]


@pytest.mark.parametrize("path", _samples())
def test_every_captured_payload_gets_its_answer(path: Path, serve: Serve) -> None:
    assert path.name in EXPECTED, f"add the expected answer for {path.name}"
    source, status, expected = EXPECTED[path.name]
    rule = "prometheus" if source == "alertmanager" else "cloud-monitoring"
    server = serve()

    first = post(server, source, path.read_bytes())
    again = post(server, source, path.read_bytes())

    assert first.status_code == status, first.text
    assert again.status_code == status, again.text
    if not expected:
        assert first.json()["status"] == "acknowledged"
        return
    assert [d["action"] for d in first.json()["decisions"]] == expected
    assert {d["rule"] for d in first.json()["decisions"]} == {rule}
    # sent again (a retry, an HA peer): what was queued is now a duplicate
    duplicated = ["duplicate" if action == QUEUED else action for action in expected]
    assert [d["action"] for d in again.json()["decisions"]] == duplicated


# -- bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=utf-8",
    ],
)
def test_the_body_is_json_whatever_the_content_type(
    content_type: str | None, serve: Serve
) -> None:
    server = serve()
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(am_notification(am_alert("DiskFull", fingerprint="1")))

    answer = post(server, "alertmanager", body.encode(), headers=headers)

    assert answer.status_code == 202, answer.text
    assert decisions(answer) == [("DiskFull", "queued", "prometheus")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "got malformed JSON (Expecting property name"),
        (b'{"alerts": [}', "line 1 column 13"),
        (b"", "got an empty body"),
        (b'{"a": "\xff"}', "got undecodable bytes"),
        (b"[1, 2]", "got a JSON list"),
        (b'{"hello": "world"}', "alerts: expected a list of alerts"),
        (b'{"alerts": [42]}', "alerts[0]: expected an alert object"),
        (b'{"alerts": [{"status": "firing"}]}', "alerts[0].labels"),
    ],
)
def test_a_body_that_is_not_a_notification_is_a_400_saying_why(
    body: bytes, message: str, serve: Serve
) -> None:
    server = serve()

    answer = post(server, "alertmanager", body)

    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_a_cloud_monitoring_body_that_is_not_an_incident_is_a_400(
    serve: Serve,
) -> None:
    answer = post(serve(), "cloud-monitoring", b'{"version": "1.2"}')

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("incident: expected a JSON object")


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "credentials required"),
        ("Bearer not-the-token", "invalid credentials"),
        ("Basic YWRtaW46YWRtaW4=", "invalid credentials"),
        (f"Token {TOKEN}", "invalid credentials"),
    ],
)
def test_bad_or_missing_credentials_are_a_401(
    authorization: str | None, message: str, serve: Serve
) -> None:
    server = serve(RELAY_ALERTMANAGER_TOKEN=TOKEN)
    headers = {"Authorization": authorization} if authorization else {}
    body = am_notification(am_alert("DiskFull", fingerprint="1"))

    answer = post(server, "alertmanager", body, headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"error": message}
    assert TOKEN not in answer.text
    right = post(
        server, "alertmanager", body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert right.status_code == 202


def limited(serve: Serve, tmp_path: Path) -> RelayHTTP:
    """A relay that takes bodies of at most 1024 bytes."""
    config = shipped_config(tmp_path / "limited.db", RELAY_MAX_BODY_BYTES="1024")
    return serve(config=config)


def padded(size: int) -> bytes:
    """A valid notification of exactly ``size`` bytes (JSON allows the
    trailing blanks)."""
    body = json.dumps(am_notification(am_alert("DiskFull", fingerprint="1")))
    assert len(body) <= size
    return body.encode() + b" " * (size - len(body))


def chunks(body: bytes, size: int = 300) -> Iterator[bytes]:
    """The body sent with chunked transfer encoding and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_body_over_the_limit_is_a_413(serve: Serve, tmp_path: Path) -> None:
    server = limited(serve, tmp_path)

    answer = post(server, "alertmanager", padded(4000))

    assert answer.status_code == 413
    assert answer.json() == {"error": "request body exceeds the limit of 1024 bytes"}
    assert post(server, "alertmanager", padded(1024)).status_code == 202


def test_a_chunked_body_over_the_limit_is_a_413_not_a_short_read(
    serve: Serve, tmp_path: Path
) -> None:
    server = limited(serve, tmp_path)
    url = f"{server.url}/webhooks/alertmanager"

    # whitespace after the notification would parse if the body were cut
    too_long = requests.post(url, data=chunks(padded(3000)), timeout=TIMEOUT)
    exact = requests.post(url, data=chunks(padded(1024)), timeout=TIMEOUT)

    assert too_long.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in too_long.request.headers
    assert too_long.status_code == 413
    assert "1024 bytes" in too_long.json()["error"]
    assert exact.status_code == 202, exact.text


# -- routes ------------------------------------------------------------------


def test_an_unknown_source_is_a_404(serve: Serve) -> None:
    answer = post(serve(), "pagerduty", b"{}")

    assert answer.status_code == 404
    assert answer.json() == {"error": "no enabled source called 'pagerduty'"}


def test_a_get_on_a_webhook_is_a_405(serve: Serve) -> None:
    server = serve()

    answer = requests.get(f"{server.url}/webhooks/alertmanager", timeout=TIMEOUT)

    assert answer.status_code == 405
    assert "not allowed" in answer.json()["error"]
    assert "POST" in answer.headers["Allow"]


def test_health_and_readiness_with_a_working_store(serve: Serve) -> None:
    server = serve()

    health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT)
    ready = requests.get(f"{server.url}/readyz", timeout=TIMEOUT)

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


# -- the store ---------------------------------------------------------------


@pytest.fixture
def dead_store() -> Iterator[Store]:
    """A Redis store on a port where nothing listens."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/15", prefix="relay-dead")
    yield store
    store.close()


def test_a_store_that_is_down_is_a_503_with_retry_after(
    serve: Serve, dead_store: Store
) -> None:
    server = serve(store=dead_store)
    body = am_notification(am_alert("DiskFull", fingerprint="1"))

    answer = post(server, "alertmanager", body)
    ready = requests.get(f"{server.url}/readyz", timeout=TIMEOUT)
    health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT)
    scrape = requests.get(f"{server.url}/metrics", timeout=TIMEOUT)

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert "nothing was recorded" in answer.json()["error"]
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert health.status_code == 200
    assert scrape.status_code == 200
    assert "relay_store_up 0.0" in scrape.text


class FailingStore(SQLiteStore):
    """A real SQLite store whose ``method`` fails on its ``nth`` call with
    ``error``, until ``healed``: a store that fails in the middle of a
    notification."""

    def __init__(self, path: str, method: str, nth: int, error: Exception) -> None:
        super().__init__(path)
        self.method = method
        self.nth = nth
        self.error = error
        self.calls = 0
        self.healed = False

    def _maybe_fail(self, method: str) -> None:
        if method != self.method or self.healed:
            return
        self.calls += 1
        if self.calls == self.nth:
            raise self.error

    def observe(self, obs: Observation, now: float) -> Outcome:
        self._maybe_fail("observe")
        return super().observe(obs, now)

    def message_seen(self, message_id: str, now: float) -> bool:
        self._maybe_fail("message_seen")
        return super().message_seen(message_id, now)

    def remember_message(self, message_id: str, ttl: float, now: float) -> None:
        self._maybe_fail("remember_message")
        super().remember_message(message_id, ttl, now)


@pytest.mark.parametrize(
    ("source", "method", "nth"),
    [
        ("alertmanager", "observe", 1),
        ("alertmanager", "observe", 2),
        ("alertmanager", "observe", 3),
        ("cloud-monitoring", "message_seen", 1),
        ("cloud-monitoring", "observe", 1),
        ("cloud-monitoring", "remember_message", 1),
    ],
)
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StoreUnavailable("the disk went away"), 503),
        (RuntimeError("a bug in the store"), 500),
    ],
    ids=["unavailable", "unexpected"],
)
def test_a_store_failing_midway_never_answers_2xx(
    source: str,
    method: str,
    nth: int,
    error: Exception,
    status: int,
    serve: Serve,
    tmp_path: Path,
) -> None:
    config = shipped_config(tmp_path / "relay.db")
    config.sources.alertmanager.ticket_per = "alert"  # one key per alert
    store = FailingStore(str(tmp_path / "relay.db"), method, nth, error)
    server = serve(store=store, config=config)
    body = (
        am_notification(*(am_alert(f"A{i}", fingerprint=str(i)) for i in range(3)))
        if source == "alertmanager"
        else pubsub_push("5001")
    )

    answer = post(server, source, body)

    assert answer.status_code == status
    assert "Traceback" not in answer.text and "a bug" not in answer.text
    if status == 503:
        assert answer.headers["Retry-After"] == "5"
    # the sender retries once the store is back: every alert is recorded
    # once, whatever part the failed call had recorded
    store.healed = True
    retried = post(server, source, body)
    assert retried.status_code == 202
    assert {d["action"] for d in retried.json()["decisions"]} <= {"queued", "duplicate"}
    alerts = 3 if source == "alertmanager" else 1
    assert len(store.jobs("pending")) == alerts


def test_a_replayed_message_id_is_answered_without_effect(serve: Serve) -> None:
    server = serve()

    first = post(server, "cloud-monitoring", pubsub_push("7001"))
    replay = post(server, "cloud-monitoring", pubsub_push("7001"))
    redelivered = post(server, "cloud-monitoring", pubsub_push("7002"))

    assert first.status_code == 202
    [decision] = first.json()["decisions"]
    assert decision["action"] == "queued"
    assert replay.status_code == 200
    assert replay.json() == {"status": "replay", "message_id": "7001"}
    # another delivery of the same incident is a duplicate, as usual
    assert redelivered.status_code == 202
    assert redelivered.json()["decisions"][0]["action"] == "duplicate"
    store = server.relay.store
    state = store.get(decision["key"], time.time())
    assert state is not None and state.count == 2
    assert len(store.jobs("pending")) == 1


# -- metrics -----------------------------------------------------------------


def scrape(server: RelayHTTP) -> dict[str, list[Any]]:
    text = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    return {
        family.name: family.samples for family in text_string_to_metric_families(text)
    }


def test_metrics_expose_webhooks_decisions_and_the_queue(serve: Serve) -> None:
    server = serve()
    body = am_notification(
        am_alert("DiskFull", fingerprint="1"), am_alert("Watchdog", fingerprint="w")
    )
    post(server, "alertmanager", body)
    post(server, "alertmanager", body)

    families = scrape(server)

    webhooks = families["relay_webhooks"]
    assert any(
        s.name == "relay_webhooks_total"
        and s.labels == {"source": "alertmanager", "code": "202"}
        and s.value >= 2
        for s in webhooks
    )
    alerts = {
        (s.labels["decision"], s.labels["rule"])
        for s in families["relay_alerts"]
        if s.labels["source"] == "alertmanager"
    }
    assert {
        ("queued", "prometheus"),
        ("duplicate", "prometheus"),
        ("dropped", "heartbeats"),
    } <= alerts
    queue = {s.labels["queue"]: s.value for s in families["relay_queue_jobs"]}
    assert queue == {"pending": 1, "scheduled": 0, "leased": 0, "dead": 0}
    [age] = families["relay_queue_oldest_pending_age_seconds"]
    assert age.value >= 0
