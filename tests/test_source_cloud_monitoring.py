"""The Google Cloud Monitoring webhook source: auth, parsing, templates."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from jinja2 import ChainableUndefined, FileSystemLoader, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from relay.alert import Alert, Notification
from relay.config import Config
from relay.errors import AuthError, InputError
from relay.sources.base import Inbound
from relay.sources.cloud_monitoring import TEST_NOTE, CloudMonitoringSource

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "cloud_monitoring"
TEMPLATES = ROOT / "templates"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"

TOKEN = "tok-7f3a9c1e5b2d4f60"
USER, PASSWORD = "monitoring", "s3cret-basic-pw-91"


def source(**section: Any) -> CloudMonitoringSource:
    config = Config.model_validate({"sources": {"cloud_monitoring": section}})
    return CloudMonitoringSource(config)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text("utf-8"))
    return data


def parse(payload: dict[str, Any] | bytes) -> Notification:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return source().parse(Inbound(body=body))


def only_alert(payload: dict[str, Any] | bytes) -> Alert:
    notification = parse(payload)
    assert len(notification.alerts) == 1
    return notification.alerts[0]


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {pair}"}


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# authentication


def test_basic_auth_challenges_first_then_accepts_the_retry() -> None:
    src = source(auth={"basic": {"username": USER, "password": PASSWORD}})

    with pytest.raises(AuthError, match="credentials required") as refused:
        src.authenticate(Inbound(body=b"{}"))
    assert refused.value.challenge == 'Basic realm="relay"'

    src.authenticate(Inbound(body=b"{}", headers=basic(USER, PASSWORD)))


@pytest.mark.parametrize(
    "headers",
    [
        basic(USER, "wrong"),
        basic("someone", PASSWORD),
        {"authorization": "Basic !!not-base64!!"},
        {"authorization": f"Bearer {PASSWORD}"},
    ],
)
def test_wrong_basic_credentials_are_refused_with_a_challenge(
    headers: dict[str, str],
) -> None:
    src = source(
        auth={"basic": {"username": USER, "password": PASSWORD}, "realm": "ops"}
    )

    with pytest.raises(AuthError) as refused:
        src.authenticate(Inbound(body=b"{}", headers=headers))

    assert refused.value.challenge == 'Basic realm="ops"'
    assert PASSWORD not in str(refused.value)


def test_a_quote_in_the_realm_cannot_break_the_challenge() -> None:
    src = source(
        auth={"basic": {"username": USER, "password": PASSWORD}, "realm": 'a"b'}
    )

    with pytest.raises(AuthError) as refused:
        src.authenticate(Inbound(body=b"{}"))

    assert refused.value.challenge == 'Basic realm="ab"'


def test_the_right_url_token_is_accepted() -> None:
    source(token=TOKEN).authenticate(Inbound(body=b"{}", args={"auth_token": TOKEN}))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "credentials required"),
        ({"auth_token": ""}, "credentials required"),
        ({"auth_token": "tok-guessed-wrong-value"}, "does not match"),
        ({"auth_token": TOKEN[:-1]}, "does not match"),
        ({"token": TOKEN}, "credentials required"),
    ],
)
def test_missing_or_wrong_url_tokens_are_refused_without_echoing_them(
    args: dict[str, str], message: str
) -> None:
    with pytest.raises(AuthError, match=message) as refused:
        source(token=TOKEN).authenticate(Inbound(body=b"{}", args=args))

    assert refused.value.challenge is None
    assert TOKEN not in str(refused.value)
    assert TOKEN[:-1] not in str(refused.value)
    assert "tok-guessed" not in str(refused.value)


def test_with_token_and_basic_configured_either_suffices() -> None:
    src = source(token=TOKEN, auth={"basic": {"username": USER, "password": PASSWORD}})

    src.authenticate(Inbound(body=b"{}", args={"auth_token": TOKEN}))
    src.authenticate(Inbound(body=b"{}", headers=basic(USER, PASSWORD)))
    src.authenticate(
        Inbound(body=b"{}", args={"auth_token": "x"}, headers=basic(USER, PASSWORD))
    )
    with pytest.raises(AuthError, match="invalid credentials") as refused:
        src.authenticate(Inbound(body=b"{}", args={"auth_token": "x"}))
    assert refused.value.challenge == 'Basic realm="relay"'


def test_without_credentials_configured_everything_is_accepted() -> None:
    src = source()

    assert src.auth_enabled is False
    src.authenticate(Inbound(body=b"{}"))
    assert source(token=TOKEN).auth_enabled is True
    assert source(auth={"basic": {"username": "u", "password": "p"}}).auth_enabled


def test_the_token_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    src = source(token=TOKEN)
    body = (FIXTURES / "open_v1_2.json").read_bytes()

    with caplog.at_level(logging.DEBUG):
        src.authenticate(Inbound(body=body, args={"auth_token": TOKEN}))
        src.parse(Inbound(body=body, args={"auth_token": TOKEN}))
        with pytest.raises(AuthError):
            src.authenticate(Inbound(body=body, args={"auth_token": TOKEN + "x"}))
        with pytest.raises(InputError):
            src.parse(Inbound(body=b"{", args={"auth_token": TOKEN}))

    everything = " ".join(
        f"{record.getMessage()} {record.__dict__}" for record in caplog.records
    )
    assert TOKEN not in everything


# parsing: every shape of notification


@pytest.mark.parametrize(
    ("name", "status", "identity", "alertname", "severity", "starts", "ends"),
    [
        (
            "open_v1_2.json",
            "firing",
            "0.nq4k2v7x1abc",
            "Checkout CPU high",
            None,
            1714564800,
            None,
        ),
        (
            "closed_with_severity.json",
            "resolved",
            "0.nq4k2v7x1abc",
            "Checkout CPU high",
            "critical",
            1714564800,
            1714568400,
        ),
        (
            "closed_older.json",
            "resolved",
            "0.older1closed",
            "Batch disk writes",
            None,
            1704067200,
            1704070800,
        ),
        (
            "log_based.json",
            "firing",
            "0.logmatch42",
            "API errors in logs",
            None,
            1714570000,
            None,
        ),
        (
            "promql.json",
            "firing",
            "0.promql7",
            "KubePodCrashLooping",
            "error",
            1714580000,
            None,
        ),
        (
            "legacy_v1_1_open.json",
            "firing",
            "a1b2c3d4e5f60718293a4b5c6d7e8f90",
            "Legacy web health",
            None,
            1500000000,
            None,
        ),
        (
            "legacy_v1_1_closed.json",
            "resolved",
            "a1b2c3d4e5f60718293a4b5c6d7e8f90",
            "Legacy web health",
            None,
            1500000000,
            1500000900,
        ),
        (
            "acknowledged.json",
            "firing",
            "b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
            "Legacy database health",
            None,
            1500001000,
            None,
        ),
        (
            "ended_at_string_null.json",
            "firing",
            "0.stringnull9",
            "Frontend latency",
            None,
            1714590000,
            None,
        ),
    ],
)
def test_each_notification_shape_becomes_one_alert(
    name: str,
    status: str,
    identity: str,
    alertname: str,
    severity: str | None,
    starts: int,
    ends: int | None,
) -> None:
    payload = fixture(name)

    notification = parse(payload)
    alert = notification.alerts[0]

    assert len(notification.alerts) == 1
    assert notification.source == "cloud-monitoring"
    assert notification.note is None
    assert alert.source == "cloud-monitoring"
    assert alert.status == status
    assert alert.identity == identity
    assert alert.name == alertname
    assert alert.labels["alertname"] == alertname
    assert alert.labels["policy_name"] == alertname
    assert alert.severity_hint == severity
    assert alert.starts_at == at(starts)
    assert alert.ends_at == (at(ends) if ends else None)
    assert alert.links["console"] == payload["incident"]["url"]
    assert alert.raw == payload["incident"]
    assert notification.common_labels == alert.labels


def test_an_open_incident_carries_its_fields_as_labels_annotations_and_links() -> None:
    alert = only_alert(fixture("open_v1_2.json"))

    assert alert.labels == {
        "alertname": "Checkout CPU high",
        "policy_name": "Checkout CPU high",
        "condition_name": "VM Instance - CPU utilization",
        "condition_type": "threshold",
        "project": "shop-prod",
        "project_number": "402817365512",
        "incident_state": "open",
        "resource_type": "gce_instance",
        "resource_name": (
            "shop-prod VM Instance labels {project_id=shop-prod, instance_id=8812734}"
        ),
        "metric_type": "compute.googleapis.com/instance/cpu/utilization",
        "resource_project_id": "shop-prod",
        "resource_instance_id": "8812734",
        "resource_zone": "europe-west1-b",
        "metric_instance_name": "checkout-7",
        "system_state": "ACTIVE",
        "user_role": "checkout",
        "policy_team": "payments",
        "policy_env": "prod",
        "team": "payments",
        "env": "prod",
    }
    assert alert.annotations == {
        "summary": fixture("open_v1_2.json")["incident"]["summary"],
        "documentation": "Checkout nodes are saturated; scale the pool.",
        "observed_value": "0.934",
        "threshold_value": "0.8",
        "condition": (
            'resource.type = "gce_instance" AND '
            'metric.type = "compute.googleapis.com/instance/cpu/utilization"'
        ),
    }
    assert alert.links == {
        "console": (
            "https://console.cloud.google.com/monitoring/alerting/incidents/"
            "0.nq4k2v7x1abc?project=shop-prod"
        )
    }


def test_a_closed_incident_keeps_its_subject_links_and_severity() -> None:
    alert = only_alert(fixture("closed_with_severity.json"))

    assert alert.annotations["documentation_subject"] == "Checkout CPU above 80%"
    assert alert.annotations["observed_value"] == "0.412"
    assert alert.labels["severity"] == "critical"
    assert alert.labels["resource_display_name"] == "checkout-7"
    assert alert.labels["resource_id"] == "8812734"
    assert alert.links["Runbook"] == "https://wiki.example.com/runbooks/checkout-cpu"
    assert alert.links["runbook"] == "https://wiki.example.com/runbooks/checkout-cpu"
    assert alert.links["Dashboard"].endswith("/dashboards/checkout")


def test_a_policy_user_label_never_shadows_a_label_of_the_incident() -> None:
    alert = only_alert(fixture("closed_with_severity.json"))

    assert alert.labels["project"] == "shop-prod"
    assert alert.labels["policy_project"] == "not-the-project"
    assert alert.labels["team"] == "payments"


def test_an_older_payload_takes_the_project_from_the_resource() -> None:
    alert = only_alert(fixture("closed_older.json"))

    assert alert.labels["project"] == "batch-prod"
    assert "project_number" not in alert.labels
    assert "severity" not in alert.labels
    assert not any(
        name.startswith("metric_") and name != "metric_type" for name in alert.labels
    )


def test_a_log_match_incident_has_no_metric_labels_and_no_values() -> None:
    alert = only_alert(fixture("log_based.json"))

    assert alert.labels["condition_type"] == "log_match"
    assert alert.labels["resource_type"] == "k8s_container"
    assert alert.labels["resource_namespace_name"] == "shop"
    assert not [name for name in alert.labels if name.startswith("metric_")]
    assert "observed_value" not in alert.annotations
    assert "threshold_value" not in alert.annotations
    assert alert.annotations["condition"].startswith("severity>=ERROR")


def test_a_promql_incident_drops_missing_metric_fields() -> None:
    alert = only_alert(fixture("promql.json"))

    assert "metric_type" not in alert.labels
    assert "metric_container" not in alert.labels
    assert alert.labels["metric_pod"] == "api-6d9f-abcde"
    assert alert.labels["condition_type"] == "promql"
    assert alert.annotations["condition"].startswith("increase(")
    assert alert.annotations["documentation_subject"].startswith("[ALERT - Error]")
    assert "threshold_value" not in alert.annotations


def test_open_and_closed_notifications_share_one_identity() -> None:
    opened = only_alert(fixture("open_v1_2.json"))
    closed = only_alert(fixture("closed_with_severity.json"))
    legacy_open = only_alert(fixture("legacy_v1_1_open.json"))
    legacy_closed = only_alert(fixture("legacy_v1_1_closed.json"))

    assert (opened.status, closed.status) == ("firing", "resolved")
    assert opened.identity == closed.identity
    assert legacy_open.identity == legacy_closed.identity


def test_an_acknowledged_incident_still_fires() -> None:
    alert = only_alert(fixture("acknowledged.json"))

    assert alert.status == "firing"
    assert alert.labels["incident_state"] == "acknowledged"


def test_the_test_button_is_acknowledged_without_an_alert() -> None:
    notification = parse(fixture("test_button.json"))

    assert notification.alerts == []
    assert notification.note == TEST_NOTE == "test notification acknowledged"


@pytest.mark.parametrize("state", ["OPEN", "Open", "open", " open "])
def test_state_is_compared_case_insensitively(state: str) -> None:
    payload = fixture("open_v1_2.json")
    payload["incident"]["state"] = state

    assert only_alert(payload).status == "firing"


@pytest.mark.parametrize(
    ("severity", "user_labels", "expected"),
    [
        ("Critical", {}, "critical"),
        ("Error", {"severity": "warning"}, "error"),
        ("Warning", {}, "warning"),
        ("no severity", {}, None),
        ("no severity", {"severity": "P1"}, "p1"),
        (None, {"severity": "Critical"}, "critical"),
        (None, {}, None),
    ],
)
def test_severity_comes_from_the_policy_else_from_its_user_label(
    severity: str | None, user_labels: dict[str, str], expected: str | None
) -> None:
    payload = fixture("open_v1_2.json")
    incident = payload["incident"]
    incident["policy_user_labels"] = user_labels
    if severity is not None:
        incident["severity"] = severity

    alert = only_alert(payload)

    assert alert.severity_hint == expected
    assert alert.labels.get("severity") == expected


def test_label_names_are_sanitised() -> None:
    payload = fixture("open_v1_2.json")
    incident = payload["incident"]
    incident["policy_user_labels"] = {"cost-center": "42"}
    incident["resource"]["labels"] = {"k8s.io/name": "web", "nested": {"a": 1}}

    alert = only_alert(payload)

    assert alert.labels["policy_cost_center"] == "42"
    assert alert.labels["cost_center"] == "42"
    assert alert.labels["resource_k8s_io_name"] == "web"
    assert "resource_nested" not in alert.labels
    assert all(name.replace("_", "").isalnum() for name in alert.labels)


def test_documentation_given_as_a_string_is_the_content() -> None:
    payload = fixture("legacy_v1_1_open.json")
    payload["incident"]["documentation"] = "Plain text help"

    assert only_alert(payload).annotations["documentation"] == "Plain text help"


def test_a_missing_version_is_read_as_1_2() -> None:
    payload = fixture("open_v1_2.json")
    del payload["version"]

    assert only_alert(payload).identity == "0.nq4k2v7x1abc"


def test_an_unknown_version_is_read_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = fixture("open_v1_2.json")
    payload["version"] = "1.3"

    with caplog.at_level(logging.WARNING):
        alert = only_alert(payload)

    assert alert.identity == "0.nq4k2v7x1abc"
    assert [r.getMessage() for r in caplog.records] == [
        "cloud_monitoring.unknown_version"
    ]


def test_zero_and_string_times_are_understood() -> None:
    payload = fixture("closed_older.json")
    payload["incident"]["started_at"] = 0
    payload["incident"]["ended_at"] = "1704070800"

    alert = only_alert(payload)

    assert alert.starts_at is None
    assert alert.ends_at == at(1704070800)


def test_a_pubsub_push_envelope_is_unwrapped() -> None:
    inner = (FIXTURES / "open_v1_2.json").read_bytes()
    envelope = {
        "message": {
            "data": base64.b64encode(inner).decode(),
            "messageId": "1234567890",
            "publishTime": "2024-05-01T12:00:00Z",
        },
        "subscription": "projects/shop-prod/subscriptions/relay-push",
    }

    notification = parse(envelope)

    assert notification.message_id == "1234567890"
    assert notification.alerts[0].identity == "0.nq4k2v7x1abc"
    assert notification.alerts[0] == only_alert(inner)


def test_a_pubsub_test_notification_is_acknowledged() -> None:
    inner = (FIXTURES / "test_button.json").read_bytes()
    envelope = {"message": {"data": base64.b64encode(inner).decode()}}

    notification = parse(envelope)

    assert notification.alerts == []
    assert notification.note == TEST_NOTE


def _with(field: str, value: Any) -> bytes:
    payload = fixture("open_v1_2.json")
    if value is _DELETE:
        del payload["incident"][field]
    else:
        payload["incident"][field] = value
    return json.dumps(payload).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty body"),
        (b"not json", "malformed JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"version": "1.2"}', "incident: expected a JSON object"),
        (b'{"version": "1.2", "incident": "x"}', "incident: expected a JSON object"),
        (b'{"incident": []}', "incident: expected a JSON object"),
        (_with("incident_id", _DELETE), "incident.incident_id: expected"),
        (_with("incident_id", ""), "incident.incident_id: expected"),
        (_with("incident_id", {"a": 1}), "incident.incident_id: expected"),
        (_with("state", _DELETE), "incident.state: expected"),
        (_with("state", "pending"), "incident.state: expected open, closed or ack"),
        (_with("state", 1), "incident.state: expected"),
        (_with("started_at", "yesterday"), "incident.started_at: expected epoch"),
        (_with("started_at", [1]), "incident.started_at: expected epoch"),
        (_with("started_at", -5), "incident.started_at: expected epoch"),
        (_with("ended_at", True), "incident.ended_at: expected epoch"),
        (_with("ended_at", 1e300), "incident.ended_at: expected epoch"),
        (b'{"message": {"data": 5}}', "message.data: expected"),
        (b'{"message": {"data": "%%%"}}', "message.data: expected base64"),
        (
            b'{"message": {"data": "bm90IGpzb24="}}',
            "notification in message.data; got malformed JSON",
        ),
    ],
)
def test_malformed_payloads_are_refused_naming_the_field(
    body: bytes, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        parse(body)


# the captured samples beside the project

SAMPLE_OUTCOMES: dict[str, tuple[str, str | None]] = {
    "gcm_incident_open_1.json": ("firing", "0.mtdi83m6w8ao"),
    "gcm_incident_closed_1.json": ("resolved", "0.opqiw61fsv7p"),
    "gcm_incident_closed_2.json": ("resolved", "0.opqiw61fsv7p"),
    "gcm_test_notification_1.json": ("test", None),
    "gcm_log_based_open_1.json": ("firing", "0.mybdstmr76pg"),
    "gcm_promql_open_with_subject_1.json": ("firing", "0.abc123def456"),
    "gcm_legacy_stackdriver_v1_1_open_1.json": (
        "firing",
        "f2e08c333dc64cb09f75eaab355393bz",
    ),
    "gcm_legacy_stackdriver_v1_1_closed_1.json": (
        "resolved",
        "f2e08c333dc64cb09f75eaab355393bz",
    ),
}


def _samples() -> list[Path]:
    return sorted(SAMPLES.glob("gcm_*.json")) if SAMPLES.is_dir() else []


@pytest.mark.parametrize("name", sorted(SAMPLE_OUTCOMES))
def test_each_captured_sample_has_its_expected_outcome(name: str) -> None:
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared samples are not beside the tree)")
    expected_status, expected_identity = SAMPLE_OUTCOMES[name]

    notification = parse(path.read_bytes())

    if expected_status == "test":
        assert notification.alerts == []
        assert notification.note == TEST_NOTE
        return
    assert [a.status for a in notification.alerts] == [expected_status]
    assert notification.alerts[0].identity == expected_identity


def test_every_captured_sample_is_known_and_parses() -> None:
    samples = _samples()
    if not samples:
        pytest.skip(f"{SAMPLES} is absent or holds no gcm_*.json")

    unknown = [p.name for p in samples if p.name not in SAMPLE_OUTCOMES]
    for path in samples:
        parse(path.read_bytes())

    assert unknown == [], "add the new samples to SAMPLE_OUTCOMES"


# templates


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def render(
    notification: Notification, undefined: type[Undefined] = StrictUndefined
) -> tuple[str, str]:
    """Subject and body as the relay renders them: an immutable sandbox
    with trimmed blocks, the subject on one line, the body's lines without
    trailing blanks."""
    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=undefined,
    )
    env.filters["ts"] = _ts
    subject = env.get_template("cloud-monitoring.subject.j2").render(
        _context(notification)
    )
    body = env.get_template("cloud-monitoring.body.j2").render(_context(notification))
    tidy = "\n".join(line.rstrip() for line in body.splitlines()).strip("\n")
    return " ".join(subject.split()), tidy


def _context(notification: Notification) -> dict[str, Any]:
    alerts = notification.alerts
    return {
        "source": "cloud-monitoring",
        "alert": next((a for a in alerts if a.firing), alerts[0]),
        "alerts": alerts,
        "firing": [a for a in alerts if a.status == "firing"],
        "resolved": [a for a in alerts if a.status == "resolved"],
        "group": notification.to_dict(),
        "ticket": {
            "platform": "google_cloud_platform",
            "category": "",
            "severity": "normal",
            "requester": "",
            "rule": "default",
            "dedup_key": "k",
        },
    }


def test_the_subject_names_policy_condition_resource_and_project() -> None:
    subject, _ = render(parse(fixture("open_v1_2.json")))

    assert subject == (
        "Checkout CPU high: VM Instance - CPU utilization on gce_instance (shop-prod)"
    )


def test_the_subject_prefers_the_policy_documentation_subject() -> None:
    subject, _ = render(parse(fixture("promql.json")))

    assert subject == "[ALERT - Error] KubePodCrashLooping in shop"


def test_the_body_shows_what_fired_where_and_how_far() -> None:
    _, body = render(parse(fixture("open_v1_2.json")))

    assert body.startswith("Google Cloud Monitoring incident 0.nq4k2v7x1abc is open.\n")
    assert "Policy:     Checkout CPU high\n" in body
    assert "Condition:  VM Instance - CPU utilization (threshold)\n" in body
    assert "Resource:   shop-prod VM Instance labels" in body
    assert "Project:    shop-prod\n" in body
    assert (
        "Metric:     CPU utilization "
        "(compute.googleapis.com/instance/cpu/utilization)\n"
    ) in body
    assert "Observed:   0.934 against threshold 0.8\n" in body
    assert "Started:    2024-05-01 12:00:00 UTC\n" in body
    assert "Ended:" not in body
    assert "is above the threshold of 0.800 with a value of 0.934." in body
    assert "Documentation:\nCheckout nodes are saturated; scale the pool.\n" in body
    assert (
        "- Incident: https://console.cloud.google.com/monitoring/alerting/"
        "incidents/0.nq4k2v7x1abc?project=shop-prod\n"
    ) in body
    assert "  team=payments\n" in body
    assert "\n\n\n" not in body


def test_the_body_shows_documentation_subject_links_and_end() -> None:
    subject, body = render(parse(fixture("closed_with_severity.json")))

    assert subject == "[resolved] Checkout CPU above 80%"
    assert "Documentation: Checkout CPU above 80%\n" in body
    assert "Severity:   critical\n" in body
    assert "Ended:      2024-05-01 13:00:00 UTC\n" in body
    assert "- Runbook: https://wiki.example.com/runbooks/checkout-cpu\n" in body
    assert body.count("runbooks/checkout-cpu") == 1
    assert "Resource:   checkout-7 [gce_instance]\n" in body


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in FIXTURES.glob("*.json") if p.name != "test_button.json"),
)
def test_the_templates_render_every_shape_strictly(name: str) -> None:
    subject, body = render(parse(fixture(name)))

    alert = parse(fixture(name)).alerts[0]
    assert alert.name in subject or alert.annotations["documentation_subject"] in (
        subject
    )
    assert alert.identity in body
    assert alert.links["console"] in body
    assert "\n\n\n" not in body
    assert ("Observed:" in body) == ("observed_value" in alert.annotations)


def test_the_templates_render_a_bare_alert() -> None:
    bare = Alert(
        source="cloud-monitoring", status="firing", identity="0.x", name="Policy"
    )
    notification = Notification(source="cloud-monitoring", alerts=[bare])

    for undefined in (StrictUndefined, ChainableUndefined):
        subject, body = render(notification, undefined)
        assert subject == "Policy"
        assert body.startswith("Google Cloud Monitoring incident 0.x is open.\n")
        assert "Policy:     Policy\n" in body


def test_the_relay_renderer_uses_these_templates_without_fallback() -> None:
    from relay.render import Renderer

    notification = parse(fixture("closed_with_severity.json"))
    renderer = Renderer(TEMPLATES, strict=True)
    context = renderer.build_context(
        notification.alerts, notification.to_dict(), _context(notification)["ticket"]
    )

    ticket = renderer.render_ticket(
        "cloud-monitoring", None, None, context, "cloud-monitoring"
    )

    assert renderer.check_templates(["cloud-monitoring"]) == []
    assert ticket.fallback is False
    assert (ticket.subject, ticket.body) == render(notification)


# over HTTP, through the relay's web layer and a real Redis


@pytest.fixture
def relay_http(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    from tests.servers import RelayHTTP

    config = Config.model_validate(
        {
            "dry_run": True,
            "store": {"url": redis_url, "prefix": redis_prefix},
            "delivery": {"workers": 0},
            "templates_dir": str(TEMPLATES),
            "sources": {
                "cloud_monitoring": {
                    "token": TOKEN,
                    "auth": {"basic": {"username": USER, "password": PASSWORD}},
                }
            },
        }
    )
    server = RelayHTTP(config).start()
    yield server
    server.stop()


def _post(
    server: Any, name: str, **kwargs: Any
) -> tuple[int, dict[str, Any], requests.structures.CaseInsensitiveDict[str]]:
    answer = requests.post(
        f"{server.url}/webhooks/cloud-monitoring",
        data=(FIXTURES / name).read_bytes(),
        headers={"Content-Type": "application/json"},
        timeout=30,
        **kwargs,
    )
    return answer.status_code, answer.json(), answer.headers


def test_over_http_a_challenge_then_the_incident_lifecycle(relay_http: Any) -> None:
    # Cloud Monitoring sends no credentials until it is challenged
    status, answer, headers = _post(relay_http, "open_v1_2.json")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="relay"'
    assert PASSWORD not in json.dumps(answer)

    status, answer, _ = _post(relay_http, "open_v1_2.json", auth=(USER, PASSWORD))
    assert (status, [d["action"] for d in answer["decisions"]]) == (202, ["queued"])

    # a re-notification repeats the incident id: a duplicate of the same key
    status, again, _ = _post(relay_http, "open_v1_2.json", params={"auth_token": TOKEN})
    assert [d["action"] for d in again["decisions"]] == ["duplicate"]
    assert again["decisions"][0]["key"] == answer["decisions"][0]["key"]

    status, closed, _ = _post(
        relay_http, "closed_with_severity.json", auth=(USER, PASSWORD)
    )
    assert [d["action"] for d in closed["decisions"]] == ["resolved"]
    assert closed["decisions"][0]["key"] == answer["decisions"][0]["key"]


def test_over_http_the_test_button_and_bad_input(relay_http: Any) -> None:
    status, answer, _ = _post(relay_http, "test_button.json", auth=(USER, PASSWORD))
    assert status in (200, 202)
    assert answer["note"] == TEST_NOTE

    answer_bad = requests.post(
        f"{relay_http.url}/webhooks/cloud-monitoring",
        params={"auth_token": TOKEN},
        data=b'{"version": "1.2", "incident": {"state": "open"}}',
        timeout=30,
    )
    assert answer_bad.status_code == 400
    assert "incident.incident_id" in answer_bad.json()["error"]

    refused = requests.post(
        f"{relay_http.url}/webhooks/cloud-monitoring",
        params={"auth_token": "not-the-token"},
        data=(FIXTURES / "open_v1_2.json").read_bytes(),
        timeout=30,
    )
    assert refused.status_code == 401
    assert "not-the-token" not in refused.text
