from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jinja2 import ChainableUndefined, FileSystemLoader, StrictUndefined, Undefined
from jinja2.sandbox import SandboxedEnvironment

from relay.alert import Alert, Notification
from relay.config import Config
from relay.errors import AuthError, InputError
from relay.sources.alertmanager import (
    AlertmanagerSource,
    label_fingerprint,
    unquote_meta,
)
from relay.sources.base import Inbound

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def make_source(auth: dict[str, Any] | None = None) -> AlertmanagerSource:
    config = Config.model_validate({"sources": {"alertmanager": {"auth": auth or {}}}})
    return AlertmanagerSource(config, clock=lambda: NOW)


def parse_bytes(body: bytes, content_type: str = "application/json") -> Notification:
    return make_source().parse(
        Inbound(body=body, headers={"content-type": content_type})
    )


def parse_fixture(name: str) -> Notification:
    return parse_bytes((FIXTURES / name).read_bytes())


def assert_fields(actual: object, expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        assert getattr(actual, key) == value, f"{key} of {actual!r}"


# payload shapes: (fixture, notification fields, per-alert fields)
SHAPES = [
    pytest.param(
        "v4_firing_group.json",
        {
            "receiver": "doit-tickets",
            "group": (
                "doit-tickets\x00"
                '{}/{severity="critical"}:{alertname="HighLatency", cluster="prod"}'
            ),
            "group_labels": {"alertname": "HighLatency", "cluster": "prod"},
            "common_annotations": {
                "summary": "p99 latency of api above 2s",
                "runbook_url": "https://runbooks.example.com/api/high-latency",
            },
            "external_url": "http://alertmanager.example.com:9093",
            "truncated": 0,
            "note": None,
        },
        [
            {
                "source": "alertmanager",
                "status": "firing",
                "identity": "5b1f0e6d2c4a9f37",
                "name": "HighLatency",
                "starts_at": utc(2024, 5, 1, 11, 58, 3, 104522),
                "ends_at": None,
                "severity_hint": "critical",
                "links": {
                    "generator": "http://prometheus.example.com:9090/graph?g0.expr="
                    "histogram_quantile%280.99%2C+rate%28http_request_duration"
                    "_seconds_bucket%5B5m%5D%29%29+%3E+2&g0.tab=1",
                    "runbook": "https://runbooks.example.com/api/high-latency",
                    "console": "http://alertmanager.example.com:9093",
                },
            },
            {
                "status": "firing",
                "identity": "e20c77a1d93b5a04",
                "starts_at": utc(2024, 5, 1, 12, 0, 33, 900000),
                "ends_at": None,
            },
        ],
        id="v4-group-zero-endsat",
    ),
    pytest.param(
        "v3_numeric_groupkey.json",
        {"group": "legacy\x008391201774460155213", "truncated": 0},
        [
            {
                "status": "firing",
                # no fingerprint: computed from the labels as Alertmanager does
                "identity": "c033838610d954ef",
                "name": "DiskAlmostFull",
                "labels": {
                    "__name__": "node_filesystem_avail_bytes",
                    "alertname": "DiskAlmostFull",
                    "instance": "db-2",
                    "mountpoint": "/var",
                    "severity": "warning",
                },
                "starts_at": utc(2017, 2, 14, 6, 30, 12, 451000),
                "severity_hint": "warning",
            }
        ],
        id="v3-numeric-groupkey",
    ),
    pytest.param(
        "grafana_v1_mixed.json",
        {
            "receiver": "DoiT tickets",
            "group": 'DoiT tickets\x00{}/{team="payments"}:{queue="orders"}',
            "common_annotations": {},
        },
        [
            {
                # the top-level status says firing; this alert is resolved
                "status": "resolved",
                "identity": "0c2b7e91aa4d3f18",
                "name": "QueueBacklog",
                "starts_at": utc(2023, 9, 12, 7, 41, 10, 283641),
                "ends_at": utc(2023, 9, 12, 7, 49, 40, 1928),
                "severity_hint": None,
                "links": {
                    "generator": "https://grafana.example.com/alerting/grafana/"
                    "q7Bl9xVSk/view",
                    "runbook": "https://wiki.example.com/runbooks/queue-backlog",
                    "silence": "https://grafana.example.com/alerting/silence/new"
                    "?alertmanager=grafana&matcher=alertname%3DQueueBacklog"
                    "&matcher=queue%3Dorders",
                    "console": "https://grafana.example.com/",
                },
            },
            {
                "status": "firing",
                "identity": "9e14c3b05d7a2261",
                "name": "QueueConsumersDown",
                "ends_at": None,
                "links": {
                    "generator": "https://grafana.example.com/alerting/grafana/"
                    "Lm2PqxVIz/view",
                    "silence": "https://grafana.example.com/alerting/silence/new"
                    "?alertmanager=grafana&matcher=alertname%3DQueueConsumersDown"
                    "&matcher=queue%3Dorders",
                    "dashboard": "https://grafana.example.com/d/rmq01",
                    "panel": "https://grafana.example.com/d/rmq01?viewPanel=4",
                    "console": "https://grafana.example.com/",
                },
            },
        ],
        id="grafana-v1-mixed-under-firing",
    ),
    pytest.param(
        "escaped_receiver_resolved.json",
        {
            "receiver": "ops.db+pager",
            "group": 'ops.db+pager\x00{}:{alertname="ReplicationLag"}',
            "truncated": 0,
        },
        [
            {
                "status": "resolved",
                "identity": "73d0a6c1be52f9e8",
                "starts_at": utc(2022, 11, 3, 16, 20, 45, 500000),
                "ends_at": utc(2022, 11, 3, 16, 31, 15, 500000),
                "severity_hint": "Warning",
                "links": {
                    # relative: kept as the sender wrote it
                    "generator": "/prometheus/graph?g0.expr="
                    "pg_replication_lag_seconds+%3E+120&g0.tab=1",
                    "console": "http://alertmanager.db.example.com:9093",
                },
            }
        ],
        id="escaped-receiver-relative-generator",
    ),
    pytest.param(
        "legacy_future_endsat.json",
        {"truncated": 0},
        [
            {
                "status": "firing",
                "identity": "390cc09f890b6434",
                "starts_at": utc(2018, 6, 21, 7, 2, 11, 738201),
                # a firing alert has not ended, whatever endsAt guessed
                "ends_at": None,
                "severity_hint": "page",
            }
        ],
        id="legacy-future-endsat-no-fingerprint-no-truncated",
    ),
    pytest.param(
        "missing_status.json",
        {"receiver": "teams-bridge"},
        [
            {
                "status": "firing",
                "identity": "e64249a805b1b2e4",
                "ends_at": None,
                "starts_at": utc(2024, 5, 1, 3, 10, 0, 125000),
                "links": {
                    "runbook": "https://wiki.example.com/memory",
                    "console": "http://alertmanager.local:9093",
                },
            },
            {
                "status": "resolved",
                "identity": "4c5be7c125e0df45",
                "ends_at": utc(2024, 5, 1, 2, 45),
            },
            {"status": "firing", "identity": "2999e58f97883e9a", "ends_at": None},
            {"status": "firing", "identity": "a00cae4db751659b", "ends_at": None},
        ],
        id="missing-status-derived-from-endsat",
    ),
    pytest.param(
        "truncated.json",
        {"truncated": 41},
        [
            {"status": "firing", "identity": "1f2e3d4c5b6a7980"},
            {
                "status": "resolved",
                "identity": "a0b1c2d3e4f50617",
                "starts_at": None,
                "ends_at": utc(2024, 2, 2, 3, 10),
            },
        ],
        id="truncated-alerts",
    ),
    pytest.param(
        "null_maps.json",
        {
            "group": "proxy\x00{}:{}",
            "group_labels": {},
            "common_labels": {},
            "common_annotations": {},
            "external_url": "",
            "truncated": 0,
        },
        [
            {
                "status": "firing",
                "identity": "cbf29ce484222325",
                "name": "unnamed alert",
                "labels": {},
                "annotations": {},
                "severity_hint": None,
                "links": {},
            },
            {
                "status": "firing",
                "identity": "0ce65edf43010228",
                "name": "JobFailed",
                "labels": {
                    "alertname": "JobFailed",
                    "attempt": "3",
                    "retrying": "false",
                    "owner": "",
                },
                "ends_at": None,
                "links": {},
            },
        ],
        id="null-maps-and-non-string-labels",
    ),
    pytest.param(
        "offsets_nanoseconds.json",
        {"external_url": "http://:9093"},
        [
            {
                "status": "firing",
                "identity": "00000000000000a1",
                "starts_at": utc(2024, 3, 10, 6, 59, 59, 999999),
            },
            {
                "status": "resolved",
                "starts_at": utc(2024, 3, 10, 6, 59, 7),
                "ends_at": utc(2024, 3, 10, 7, 30, 0, 500000),
            },
            {
                "status": "resolved",
                "starts_at": utc(2024, 3, 10, 6, 59, 59),
                "ends_at": utc(2024, 3, 10, 7, 30),
            },
        ],
        id="nanoseconds-and-offsets",
    ),
    pytest.param(
        "unicode.json",
        {
            "receiver": "运维.告警",
            "group": '运维.告警\x00{}/{service="支付网关"}:{alertname="接口超时"}',
        },
        [
            {
                "status": "firing",
                "identity": "6a8d2b0e4f1c3957",
                "name": "接口超时",
                "labels": {
                    "alertname": "接口超时",
                    "service": "支付网关",
                    "région": "Île-de-France",
                    "severity": "critical",
                },
                "annotations": {
                    "summary": "支付网关 响应超时",
                    "description": "Der Dienst antwortet nicht \u2013 ÷ 🚨",
                },
            }
        ],
        id="unicode-labels-and-groupkey",
    ),
    pytest.param(
        "unknown_fields.json",
        {"receiver": "doit", "truncated": 0},
        [
            {
                "status": "firing",
                "identity": "c0ffee00c0ffee00",
                "severity_hint": "info",
                "links": {
                    "generator": "http://prometheus:9090/graph?g0.expr="
                    "probe_ssl_earliest_cert_expiry",
                    "console": "http://alertmanager:9093",
                },
            }
        ],
        id="unknown-fields-ignored",
    ),
    pytest.param(
        "go_escaped.json",
        {"receiver": "web.hook"},
        [
            {
                "status": "firing",
                "identity": "d15ea5e0b0a7f00d",
                "labels": {
                    "alertname": "ErrorBudgetBurn",
                    "slo": "checkout < 99.9%",
                    "severity": "critical",
                },
                "annotations": {
                    "summary": "error budget for checkout & cart burning fast",
                    "description": "burn rate > 14.4 over 1h & 5m",
                },
                "starts_at": utc(2021, 10, 5, 14, 0, 0),
                "links": {
                    "generator": "http://prometheus:9090/graph?g0.expr=slo_burn_rate"
                    "%7Bslo%3D%22checkout%22%7D+%3E+14.4&g0.tab=1",
                    "console": "http://alertmanager:9093",
                },
            }
        ],
        id="go-escaped-html-characters",
    ),
]


@pytest.mark.parametrize(("fixture", "notification", "alerts"), SHAPES)
def test_parse_payload_shapes(
    fixture: str, notification: dict[str, Any], alerts: list[dict[str, Any]]
) -> None:
    parsed = parse_fixture(fixture)

    assert parsed.source == "alertmanager"
    assert_fields(parsed, notification)
    assert len(parsed.alerts) == len(alerts)
    for alert, expected in zip(parsed.alerts, alerts, strict=True):
        assert_fields(alert, expected)


def test_every_fixture_is_in_the_shape_table() -> None:
    covered = {param.values[0] for param in SHAPES}
    assert covered == {path.name for path in FIXTURES.glob("*.json")}


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_alert_raw_is_the_alerts_own_json(fixture: str) -> None:
    payload = json.loads((FIXTURES / fixture).read_bytes())
    parsed = parse_fixture(fixture)

    assert parsed.raw == payload
    assert [alert.raw for alert in parsed.alerts] == payload["alerts"]
    for alert in parsed.alerts:
        assert alert.starts_at is None or alert.starts_at.tzinfo is not None
        assert alert.ends_at is None or alert.status == "resolved"
        assert all(isinstance(v, str) for v in alert.labels.values())


def test_grafana_extras_stay_in_raw_only() -> None:
    parsed = parse_fixture("grafana_v1_mixed.json")

    assert parsed.alerts[0].raw["valueString"].startswith("[ var='B'")
    assert "valueString" not in parsed.alerts[0].labels
    assert "orgId" not in parsed.common_labels


def test_body_is_json_whatever_the_content_type() -> None:
    body = (FIXTURES / "v4_firing_group.json").read_bytes()

    as_json = parse_bytes(body)
    as_text = parse_bytes(body, content_type="text/plain; charset=utf-8")
    as_nothing = make_source().parse(Inbound(body=body))

    assert as_json.alerts == as_text.alerts == as_nothing.alerts


def test_escaped_and_plain_receiver_give_the_same_group() -> None:
    escaped = make_source().parse_payload(minimal(receiver="web\\.hook"))
    plain = make_source().parse_payload(minimal(receiver="web.hook"))

    assert escaped.receiver == plain.receiver == "web.hook"
    assert escaped.group == plain.group == 'web.hook\x00{}:{alertname="A"}'


def test_missing_group_key_falls_back_to_sorted_group_labels() -> None:
    one = minimal(groupLabels={"b": "2", "a": "1"})
    other = minimal(groupLabels={"a": "1", "b": "2"})
    del one["groupKey"], other["groupKey"]

    first = make_source().parse_payload(one)
    second = make_source().parse_payload(other)

    assert first.group == second.group == "r\x00{a='1', b='2'}"


def test_status_is_read_case_insensitively() -> None:
    parsed = make_source().parse_payload(minimal(status="RESOLVED"))

    assert parsed.alerts[0].status == "resolved"


def test_missing_status_uses_the_clock() -> None:
    payload = minimal(endsAt="2024-05-01T12:00:01Z")
    del payload["alerts"][0]["status"]
    config = Config()

    before = AlertmanagerSource(config, clock=lambda: NOW).parse_payload(payload)
    after = AlertmanagerSource(
        config, clock=lambda: utc(2024, 5, 1, 12, 0, 1)
    ).parse_payload(payload)

    assert before.alerts[0].status == "firing"
    assert after.alerts[0].status == "resolved"
    assert after.alerts[0].ends_at == utc(2024, 5, 1, 12, 0, 1)


def test_notification_without_alerts_is_accepted_with_a_note() -> None:
    parsed = make_source().parse_payload({"alerts": [], "groupKey": "{}:{}"})

    assert parsed.alerts == []
    assert parsed.note == "notification without alerts"


def test_unknown_version_is_parsed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.sources.alertmanager")

    parsed = make_source().parse_payload(minimal(version="5"))

    assert [alert.name for alert in parsed.alerts] == ["A"]
    [record] = caplog.records
    assert record.getMessage() == "alertmanager.unknown_version"
    assert record.__dict__["version"] == "5"


@pytest.mark.parametrize("version", ["4", "3", "1", 4, None])
def test_known_versions_log_nothing(
    version: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.sources.alertmanager")
    payload = minimal(version=version)
    if version is None:
        del payload["version"]

    make_source().parse_payload(payload)

    assert caplog.records == []


@pytest.mark.parametrize(
    ("labels", "fingerprint"),
    [
        # what Alertmanager sent for this label set
        (
            {
                "job": "node",
                "group": "production",
                "instance": "localhost:8081",
                "severity": "critical",
                "alertname": "InstanceDown",
            },
            "f404ecabc8dd5cd7",
        ),
        (
            {
                "alertname": "服务异常告警",
                "app": "nginx",
                "hostname": "nginx-1",
                "instance": "172.18.68.209:58888",
                "level": "4",
                "name": "172.18.163.177:8085",
                "severity": "critical",
                "upstream": "cashier_api",
            },
            "3407d122c7e8c961",
        ),
        ({}, "cbf29ce484222325"),
    ],
)
def test_label_fingerprint_matches_alertmanager(
    labels: dict[str, str], fingerprint: str
) -> None:
    assert label_fingerprint(labels) == fingerprint
    assert label_fingerprint(dict(reversed(labels.items()))) == fingerprint


@pytest.mark.parametrize(
    ("quoted", "plain"),
    [
        ("web\\.hook", "web.hook"),
        ("web.hook", "web.hook"),
        ("a\\+b\\*c\\?\\(d\\)\\|\\[e\\]\\{f\\}\\^g\\$", "a+b*c?(d)|[e]{f}^g$"),
        ("back\\\\slash", "back\\slash"),
        ("not\\-meta", "not\\-meta"),
        ("运维\\.告警", "运维.告警"),
    ],
)
def test_unquote_meta_undoes_go_quote_meta(quoted: str, plain: str) -> None:
    assert unquote_meta(quoted) == plain


# bad inputs


def minimal(**top: Any) -> dict[str, Any]:
    """A valid one-alert notification; keyword arguments naming alert fields
    (status, labels, startsAt, …) change the alert, others the top level."""
    alert: dict[str, Any] = {
        "status": "firing",
        "labels": {"alertname": "A"},
        "annotations": {},
        "startsAt": "2024-05-01T11:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
    }
    alert_fields = {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "generatorURL",
        "silenceURL",
    }
    payload: dict[str, Any] = {
        "receiver": "r",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "",
        "version": "4",
        "groupKey": '{}:{alertname="A"}',
        "truncatedAlerts": 0,
    }
    for key, value in top.items():
        (alert if key in alert_fields else payload)[key] = value
    return payload


def without(key: str) -> dict[str, Any]:
    payload = minimal()
    payload["alerts"][0].pop(key)
    return payload


def third_alert(**fields: Any) -> dict[str, Any]:
    payload = minimal()
    payload["alerts"] += [dict(payload["alerts"][0]), dict(payload["alerts"][0])]
    payload["alerts"][2].update(fields)
    return payload


BAD_BODIES = [
    pytest.param(b"", r"got an empty body", id="empty"),
    pytest.param(b"[]", r"got a JSON list", id="array"),
    pytest.param(b"{not json", r"got malformed JSON", id="malformed"),
    pytest.param(b'{"a": "\xff"}', r"got undecodable bytes", id="not-utf8"),
]

BAD_PAYLOADS = [
    pytest.param(
        {"status": "firing"},
        r"^alerts: expected a list of alerts \(is this an Alertmanager webhook "
        r"notification\?\); got nothing$",
        id="no-alerts",
    ),
    pytest.param({"alerts": None}, r"^alerts: .*; got null$", id="alerts-null"),
    pytest.param({"alerts": {}}, r"^alerts: .*; got an object$", id="alerts-object"),
    pytest.param(
        minimal(alerts=[minimal()["alerts"][0], "x"]),
        r"^alerts\[1\]: expected an alert object; got 'x'$",
        id="alert-not-object",
    ),
    pytest.param(
        without("labels"),
        r"^alerts\[0\]\.labels: expected the alert's labels; got nothing$",
        id="labels-missing",
    ),
    pytest.param(
        minimal(labels=["alertname"]),
        r"^alerts\[0\]\.labels: expected an object of names to strings; got a list$",
        id="labels-list",
    ),
    pytest.param(
        minimal(labels="alertname=A"),
        r"^alerts\[0\]\.labels: .*; got 'alertname=A'$",
        id="labels-string",
    ),
    pytest.param(
        minimal(annotations=[]),
        r"^alerts\[0\]\.annotations: expected an object .*; got a list$",
        id="annotations-list",
    ),
    pytest.param(
        minimal(status="pending"),
        r"^alerts\[0\]\.status: expected 'firing' or 'resolved'; got 'pending'$",
        id="status-pending",
    ),
    pytest.param(
        minimal(status=1),
        r"^alerts\[0\]\.status: expected 'firing' or 'resolved'; got 1$",
        id="status-number",
    ),
    pytest.param(
        third_alert(startsAt="yesterday"),
        r"^alerts\[2\]\.startsAt: expected an RFC 3339 time; got 'yesterday'$",
        id="startsat-words",
    ),
    pytest.param(
        minimal(endsAt=1714564800),
        r"^alerts\[0\]\.endsAt: expected an RFC 3339 time; got 1714564800$",
        id="endsat-epoch",
    ),
    pytest.param(
        minimal(startsAt="2024-05-01T12:00:00"),
        r"^alerts\[0\]\.startsAt: expected an RFC 3339 time; "
        r"got '2024-05-01T12:00:00'$",
        id="startsat-no-offset",
    ),
    pytest.param(
        minimal(startsAt="2024-02-30T12:00:00Z"),
        r"^alerts\[0\]\.startsAt: .*\(day is out of range for month\)$",
        id="startsat-no-such-day",
    ),
    pytest.param(
        minimal(fingerprint=12),
        r"^alerts\[0\]\.fingerprint: expected a string; got 12$",
        id="fingerprint-number",
    ),
    pytest.param(
        minimal(generatorURL={}),
        r"^alerts\[0\]\.generatorURL: expected a string; got an object$",
        id="generator-object",
    ),
    pytest.param(
        minimal(silenceURL=5),
        r"^alerts\[0\]\.silenceURL: expected a string; got 5$",
        id="silence-number",
    ),
    pytest.param(
        minimal(groupKey={"a": 1}),
        r"^groupKey: expected a string \(or a number from version 3\); "
        r"got an object$",
        id="groupkey-object",
    ),
    pytest.param(
        minimal(groupKey=True), r"^groupKey: .*; got true$", id="groupkey-bool"
    ),
    pytest.param(
        minimal(truncatedAlerts=-1),
        r"^truncatedAlerts: expected a count of zero or more; got -1$",
        id="truncated-negative",
    ),
    pytest.param(
        minimal(truncatedAlerts="3"),
        r"^truncatedAlerts: .*; got '3'$",
        id="truncated-str",
    ),
    pytest.param(
        minimal(truncatedAlerts=2.5),
        r"^truncatedAlerts: .*; got 2.5$",
        id="truncated-float",
    ),
    pytest.param(
        minimal(receiver=7),
        r"^receiver: expected a string; got 7$",
        id="receiver-number",
    ),
    pytest.param(
        minimal(externalURL=[]),
        r"^externalURL: expected a string; got a list$",
        id="external-url-list",
    ),
    pytest.param(
        minimal(commonLabels=[]),
        r"^commonLabels: expected an object of names to strings; got a list$",
        id="common-labels-list",
    ),
    pytest.param(
        minimal(groupLabels="x"),
        r"^groupLabels: .*; got 'x'$",
        id="group-labels-string",
    ),
    pytest.param(
        minimal(commonAnnotations=3),
        r"^commonAnnotations: .*; got 3$",
        id="common-notes",
    ),
    pytest.param(
        minimal(version=[]), r"^version: expected a string; got a list$", id="version"
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_bodies_are_input_errors(body: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_bytes(body)


@pytest.mark.parametrize(("payload", "message"), BAD_PAYLOADS)
def test_bad_payloads_are_input_errors_naming_the_field(
    payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        parse_bytes(json.dumps(payload).encode())


def test_long_bad_values_are_cut_in_the_message() -> None:
    payload = minimal(startsAt="y" * 5000)

    with pytest.raises(InputError) as raised:
        make_source().parse_payload(payload)

    assert len(str(raised.value)) < 200


# authentication


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(authorization: str | None) -> Inbound:
    headers = {} if authorization is None else {"authorization": authorization}
    return Inbound(body=b"{}", headers=headers)


BEARER = {"bearer_token": "am-s3cret-token"}
BASIC = {"basic": {"username": "alertmanager", "password": "pa:ss wörd"}}


@pytest.mark.parametrize(
    ("auth", "authorization"),
    [
        (BEARER, "Bearer am-s3cret-token"),
        (BEARER, "bearer am-s3cret-token"),
        (BASIC, basic("alertmanager", "pa:ss wörd")),
        ({}, None),
        ({}, "Bearer anything"),
    ],
    ids=["bearer", "bearer-lowercase", "basic", "none-configured", "none-with-header"],
)
def test_authenticate_accepts_the_configured_credentials(
    auth: dict[str, Any], authorization: str | None
) -> None:
    make_source(auth).authenticate(request(authorization))


@pytest.mark.parametrize(
    ("auth", "authorization", "message"),
    [
        (BEARER, "Bearer wrong", "invalid credentials"),
        (BEARER, "Bearer am-s3cret-token-and-more", "invalid credentials"),
        (BEARER, None, "credentials required"),
        (BEARER, basic("alertmanager", "am-s3cret-token"), "invalid credentials"),
        (BASIC, basic("alertmanager", "wrong"), "invalid credentials"),
        (BASIC, basic("someone", "pa:ss wörd"), "invalid credentials"),
        (BASIC, "Basic !!!not-base64", "invalid credentials"),
        (BASIC, None, "credentials required"),
    ],
    ids=[
        "bearer-wrong",
        "bearer-longer",
        "bearer-missing",
        "bearer-sent-as-basic",
        "basic-wrong-password",
        "basic-wrong-user",
        "basic-garbage",
        "basic-missing",
    ],
)
def test_authenticate_refuses_other_credentials(
    auth: dict[str, Any], authorization: str | None, message: str
) -> None:
    with pytest.raises(AuthError, match=f"^{message}$") as raised:
        make_source(auth).authenticate(request(authorization))

    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("auth", "enabled"), [(BEARER, True), (BASIC, True), ({}, False)]
)
def test_auth_enabled_reflects_the_configuration(
    auth: dict[str, Any], enabled: bool
) -> None:
    assert make_source(auth).auth_enabled is enabled


# the real captured samples


# per file: (status, identity) of each alert, in order
SAMPLE_EXPECTATIONS: dict[str, list[tuple[str, str]]] = {
    "am_firing_1.json": [("firing", "2f30fca22fdaa8ef")],
    "am_firing_endsat_future_legacy_1.json": [("firing", "88cbf0084cf27726")],
    "am_firing_endsat_future_legacy_1.raw.json": [("firing", "88cbf0084cf27726")],
    "am_firing_minimal_fields_1.json": [("firing", "b29784719d6a11e6")],
    "am_firing_multi_1.json": [
        ("firing", "a1bc48475b20e73d"),
        ("firing", "c2ea85182f28cbd9"),
    ],
    "am_firing_multi_2.json": [
        ("firing", "f404ecabc8dd5cd7"),
        ("firing", "f8f08d4e32c61a9d"),
        ("firing", "39f38c0611ee7abd"),
    ],
    "am_legacy_v3_numeric_groupkey_1.json": [("firing", "d2089d8d0f422129")],
    "am_mixed_firing_resolved_grafana_1.json": [
        ("resolved", "aaafafe0953f0962"),
        ("resolved", "fb31814ac93dbe7d"),
        ("firing", "6f9cd313db421ef1"),
    ],
    "am_resolved_1.json": [("resolved", "88cbf0084cf27726")],
    "am_resolved_1.raw.json": [("resolved", "88cbf0084cf27726")],
    "am_resolved_2.json": [("resolved", "fbab788ec4c1018b")],
    "am_truncated_1.json": [("resolved", "d5fd0a851c27c0f3")],
    "am_unicode_labels_1.json": [
        ("firing", "3407d122c7e8c961"),
        ("firing", "e069919362a06972"),
    ],
}


def sample_files() -> list[Path]:
    if not SAMPLES.is_dir():
        pytest.skip(f"no captured samples at {SAMPLES}")
    return sorted(SAMPLES.glob("am_*.json"))


def test_every_sample_parses_as_expected() -> None:
    files = sample_files()
    assert files, f"no am_*.json in {SAMPLES}"

    for path in files:
        assert path.name in SAMPLE_EXPECTATIONS, f"{path.name}: no expectation"
        parsed = parse_bytes(path.read_bytes())
        found = [(alert.status, alert.identity) for alert in parsed.alerts]
        assert found == SAMPLE_EXPECTATIONS[path.name], path.name


def test_samples_keep_the_group_identity_between_firing_and_resolved() -> None:
    files = {path.name: path for path in sample_files()}
    needed = ("am_firing_endsat_future_legacy_1.json", "am_resolved_1.json")
    if not all(name in files for name in needed):
        pytest.skip("the firing/resolved pair of samples is absent")

    firing, resolved = (parse_bytes(files[name].read_bytes()) for name in needed)

    assert firing.group == resolved.group == 'telegram\x00{}:{alertname="Fire"}'
    assert firing.alerts[0].ends_at is None
    assert resolved.alerts[0].ends_at == utc(2018, 11, 4, 21, 48, 13, 283995)


def test_samples_special_cases() -> None:
    files = {path.name: path for path in sample_files()}

    def parsed(name: str) -> Notification:
        if name not in files:
            pytest.skip(f"sample {name} is absent")
        return parse_bytes(files[name].read_bytes())

    assert parsed("am_resolved_2.json").receiver == "web.hook"
    assert parsed("am_truncated_1.json").truncated == 123
    assert parsed("am_truncated_1.json").alerts[0].starts_at is None
    legacy = parsed("am_legacy_v3_numeric_groupkey_1.json")
    assert legacy.group == "alerta\x005615590933959184469"
    unicode = parsed("am_unicode_labels_1.json")
    assert unicode.receiver == "web.hook.prometheusalert"
    assert unicode.alerts[0].name == "服务异常告警"
    raw = parsed("am_resolved_1.raw.json").alerts[0]
    assert raw.links["generator"].endswith("vector%28666%29&g0.tab=1")


# default templates


def format_ts(value: Any) -> str:
    """The ``ts`` filter of the rendering contract."""
    if value is None or isinstance(value, Undefined):
        return ""
    moment: datetime = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def environment(undefined: type[Undefined] = StrictUndefined) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=undefined,
    )
    env.filters["ts"] = format_ts
    return env


def context(notification: Notification) -> dict[str, Any]:
    alerts = notification.alerts
    firing = [alert for alert in alerts if alert.status == "firing"]
    resolved = [alert for alert in alerts if alert.status == "resolved"]
    return {
        "source": "alertmanager",
        "alert": (firing or alerts)[0],
        "alerts": alerts,
        "firing": firing,
        "resolved": resolved,
        "group": notification.to_dict(),
        "ticket": {
            "platform": "google_cloud_platform",
            "category": "",
            "severity": "high",
            "requester": "",
            "rule": "default",
            "dedup_key": "k",
        },
    }


def render(
    notification: Notification, undefined: type[Undefined] = StrictUndefined
) -> tuple[str, str]:
    env = environment(undefined)
    ctx = context(notification)
    subject = env.get_template("alertmanager.subject.j2").render(ctx)
    body = env.get_template("alertmanager.body.j2").render(ctx)
    return subject, body


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
@pytest.mark.parametrize("undefined", [StrictUndefined, ChainableUndefined])
def test_templates_render_every_fixture(
    fixture: str, undefined: type[Undefined]
) -> None:
    notification = parse_fixture(fixture)

    subject, body = render(notification, undefined)

    assert subject.strip() and "\n" not in subject
    assert subject.startswith(("[FIRING:", "[RESOLVED:"))
    firing = sum(alert.firing for alert in notification.alerts)
    resolved = len(notification.alerts) - firing
    assert f"{firing} firing and {resolved} resolved" in body
    for alert in notification.alerts:
        assert alert.name in body
        assert alert.identity in body
        for name, value in alert.labels.items():
            assert f'{name}="{value}"' in body
    assert "\n\n\n" not in body
    assert "None" not in body


@pytest.mark.parametrize(
    ("fixture", "subject"),
    [
        ("v4_firing_group.json", "[FIRING:2] HighLatency on api (prod)"),
        ("grafana_v1_mixed.json", "[FIRING:1] QueueConsumersDown"),
        ("escaped_receiver_resolved.json", "[RESOLVED:1] ReplicationLag (db-prod)"),
        ("unicode.json", "[FIRING:1] 接口超时 on 支付网关"),
        ("null_maps.json", "[FIRING:2] unnamed alert and 1 other alert"),
        ("v3_numeric_groupkey.json", "[FIRING:1] DiskAlmostFull on db-2"),
        ("missing_status.json", "[FIRING:3] MemoryPressure"),
    ],
)
def test_subject_says_what_fired_and_where(fixture: str, subject: str) -> None:
    assert render(parse_fixture(fixture))[0] == subject


def test_body_says_what_where_since_and_links() -> None:
    _, body = render(parse_fixture("v4_firing_group.json"))

    assert "Firing:     HighLatency\n" in body
    assert "Where:      cluster=prod, job=api\n" in body
    assert "Since:      2024-05-01 11:58:03 UTC\n" in body
    assert "Severity:   critical\n" in body
    assert "Summary:\np99 latency of api above 2s\n" in body
    assert "- Alertmanager: http://alertmanager.example.com:9093\n" in body
    assert "- Source: http://prometheus.example.com:9090/graph?" in body
    assert "- Runbook: https://runbooks.example.com/api/high-latency\n" in body
    assert "Description: p99 latency on 10.4.0.18:8080 is 2.41s" in body
    assert "left out" not in body


def test_body_reports_truncated_alerts() -> None:
    _, body = render(parse_fixture("truncated.json"))

    assert "41 more alerts were left out of this notification" in body
    assert "Alerts (1 firing, 1 resolved, 41 not shown):" in body


def test_body_lists_resolved_alerts_with_their_end() -> None:
    _, body = render(parse_fixture("grafana_v1_mixed.json"))

    assert "1. [RESOLVED] QueueBacklog\n" in body
    assert "   Ended: 2023-09-12 07:49:40 UTC\n" in body
    assert "2. [FIRING] QueueConsumersDown\n" in body
    assert "   Dashboard: https://grafana.example.com/d/rmq01\n" in body


def test_body_prints_text_as_sent_without_escaping() -> None:
    _, body = render(parse_fixture("go_escaped.json"))

    assert "error budget for checkout & cart burning fast" in body
    assert 'slo="checkout < 99.9%"' in body


def test_templates_survive_alerts_with_nothing_but_a_name() -> None:
    alert = Alert(source="alertmanager", status="firing", identity="x", name="N")
    notification = Notification(source="alertmanager", alerts=[alert])

    subject, body = render(notification)

    assert subject == "[FIRING:1] N"
    assert "Since:      unknown" in body
    assert "- none were sent" in body


def test_templates_render_every_sample() -> None:
    for path in sample_files():
        subject, body = render(parse_bytes(path.read_bytes()))
        assert subject.strip(), path.name
        assert "Alertmanager reports" in body, path.name
