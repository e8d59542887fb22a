"""The CloudWatch source: SNS envelopes, raw delivery and EventBridge events
to alerts, with its authentication, allow-list and handshake rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from relay.alert import Alert, Notification
from relay.config import Config
from relay.errors import AuthError, ConfigError, ForbiddenError, InputError
from relay.sources.base import Inbound
from relay.sources.cloudwatch import CloudWatchSource, topic_matcher
from relay.sources.sns import SnsVerifier
from tests.test_sns import (
    HOST,
    SAMPLES,
    RecordingFetch,
    Signer,
    bad_urls,
    counting_listener,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cloudwatch"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
TOKEN = "raw-delivery-token-0123456789"
API_KEY = "eventbridge-key-abcdef"
TOPIC = "arn:aws:sns:eu-central-1:210987654321:ops-alerts"
CONFIRMED = (
    b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
    b"arn:aws:sns:eu-central-1:210987654321:ops-alerts:1d2c</SubscriptionArn>"
    b"</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
)


class AcceptingVerifier(SnsVerifier):
    """Accepts every signature: only for parsing real samples whose
    certificates are not available. Production has no such switch."""

    def verify(self, message: Any) -> None:
        return None


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def make_config(**cloudwatch: Any) -> Config:
    return Config.model_validate({"sources": {"cloudwatch": cloudwatch}})


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "certs")


def make_source(
    signer: Signer | None,
    fetch: RecordingFetch | None = None,
    **cloudwatch: Any,
) -> CloudWatchSource:
    verifier = (
        SnsVerifier(HOST, signer.cert_dir, fetch=fetch or RecordingFetch())
        if signer is not None
        else AcceptingVerifier()
    )
    return CloudWatchSource(
        make_config(**cloudwatch), verifier=verifier, fetch=fetch or RecordingFetch()
    )


def post(
    source: CloudWatchSource,
    body: dict[str, Any] | bytes,
    *,
    headers: dict[str, str] | None = None,
    subpath: str = "",
) -> Notification:
    """Authenticate and parse, as the web layer does."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = Inbound(body=data, headers=headers or {}, subpath=subpath)
    source.authenticate(request)
    return source.parse(request)


def one_alert(notification: Notification) -> Alert:
    assert len(notification.alerts) == 1, notification.note
    return notification.alerts[0]


def alarm_notification(
    signer: Signer, alarm: str, **kwargs: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    data = fixture(alarm)
    return signer.notification(json.dumps(data), **kwargs), data


# SNS notifications -----------------------------------------------------------


def test_a_signed_metric_alarm_becomes_a_firing_alert(signer: Signer) -> None:
    envelope, alarm = alarm_notification(signer, "alarm_metric.json")

    notification = post(make_source(signer), envelope)

    alert = one_alert(notification)
    assert notification.message_id == envelope["MessageId"]
    assert alert.status == "firing"
    assert alert.identity == alarm["AlarmArn"]
    assert alert.name == "web-01 disk /data >= 90%"
    assert alert.labels == {
        "alertname": "web-01 disk /data >= 90%",
        "alarm_name": "web-01 disk /data >= 90%",
        "alarm_arn": alarm["AlarmArn"],
        "account": "210987654321",
        "region": "eu-central-1",
        "region_name": "Europe (Frankfurt)",
        "namespace": "CWAgent",
        "metric_name": "disk_used_percent",
        "statistic": "Maximum",
        "comparison": "GreaterThanOrEqualToThreshold",
        "threshold": "90",
        "state": "ALARM",
        "previous_state": "OK",
        "alarm_type": "metric",
        "topic_arn": TOPIC,
        "dimension_InstanceId": "i-0a1b2c3d4e5f60718",
        "dimension_path": "/data",
        "dimension_Host_Name": "web-01",
    }
    assert alert.annotations["description"] == alarm["AlarmDescription"]
    assert alert.annotations["reason"].startswith("Threshold Crossed: 2 out of")
    assert alert.starts_at == datetime(2024, 3, 4, 10, 15, 42, 318000, tzinfo=UTC)
    assert alert.ends_at is None
    assert alert.links == {
        "console": "https://eu-central-1.console.aws.amazon.com/cloudwatch/home"
        "?region=eu-central-1#alarmsV2:alarm/web-01%20disk%20%2Fdata%20%3E%3D%2090%25"
    }
    assert alert.severity_hint == "critical"
    assert alert.raw == alarm


def test_an_ok_alarm_resolves(signer: Signer) -> None:
    envelope, _ = alarm_notification(signer, "alarm_metric_ok.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.status == "resolved"
    assert alert.labels["state"] == "OK"
    assert alert.ends_at == datetime(2024, 3, 4, 11, 2, 10, 5000, tzinfo=UTC)
    assert alert.identity == fixture("alarm_metric.json")["AlarmArn"]


@pytest.mark.parametrize(
    ("policy", "status"),
    [("ignore", None), ("fire", "firing"), ("resolve", "resolved")],
)
def test_insufficient_data_follows_the_policy(
    signer: Signer, policy: str, status: str | None
) -> None:
    envelope, _ = alarm_notification(signer, "alarm_insufficient_data.json")

    notification = post(make_source(signer, insufficient_data=policy), envelope)

    if status is None:
        assert notification.alerts == []
        assert "INSUFFICIENT_DATA ignored" in (notification.note or "")
        assert notification.message_id == envelope["MessageId"]
    else:
        alert = one_alert(notification)
        assert alert.status == status
        assert alert.labels["state"] == "INSUFFICIENT_DATA"


def test_a_metric_math_alarm_lists_its_metrics_and_expression(signer: Signer) -> None:
    envelope, _ = alarm_notification(signer, "alarm_metric_math.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.labels["alarm_type"] == "metric_math"
    assert alert.labels["namespace"] == "AWS/ApplicationELB"
    assert alert.labels["metric_name"] == "HTTPCode_Target_5XX_Count,RequestCount"
    assert alert.labels["threshold"] == "5"
    assert alert.labels["dimension_LoadBalancer"] == "app/api/50dc6c495c0c9188"
    assert "statistic" not in alert.labels
    assert alert.annotations["expression"] == "100 * errors / requests"
    assert alert.labels["region"] == "ap-northeast-1"


def test_an_anomaly_alarm_has_a_band_and_no_threshold(signer: Signer) -> None:
    envelope, _ = alarm_notification(signer, "alarm_anomaly.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.labels["alarm_type"] == "anomaly_detection"
    assert "threshold" not in alert.labels
    assert alert.labels["comparison"] == "LessThanLowerOrGreaterThanUpperThreshold"
    assert alert.labels["metric_name"] == "OrdersPlaced"
    assert alert.labels["statistic"] == "Sum"
    assert alert.annotations["expression"] == "ANOMALY_DETECTION_BAND(m1, 2)"
    assert "description" not in alert.annotations


def test_a_composite_alarm_carries_its_rule_and_children(signer: Signer) -> None:
    envelope, alarm = alarm_notification(signer, "alarm_composite.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.labels["alarm_type"] == "composite"
    assert "metric_name" not in alert.labels
    assert alert.annotations["alarm_rule"] == alarm["AlarmRule"]
    assert alert.annotations["triggering_children"].splitlines() == [
        f"{child['Arn']} (ALARM)" for child in alarm["TriggeringChildren"]
    ]
    # only the severity=<value> syntax counts
    assert alert.severity_hint is None


def test_a_composite_alarm_without_children_parses(signer: Signer) -> None:
    envelope, _ = alarm_notification(signer, "alarm_composite_no_children.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.status == "resolved"
    assert "triggering_children" not in alert.annotations


def test_an_old_alarm_without_arn_gets_the_arn_a_newer_message_would_carry(
    signer: Signer,
) -> None:
    envelope, _ = alarm_notification(
        signer, "alarm_legacy_no_arn.json", topic="arn:aws:sns:eu-west-1:210987654321:q"
    )

    alert = one_alert(post(make_source(signer), envelope))

    assert (
        alert.identity
        == "arn:aws:cloudwatch:eu-west-1:210987654321:alarm:queue backlog"
    )
    assert "alarm_arn" not in alert.labels
    assert alert.labels["region"] == "eu-west-1"
    assert alert.labels["region_name"] == "EU - Ireland"
    assert alert.labels["statistic"] == "Average"
    assert "description" not in alert.annotations


def test_the_region_comes_from_the_alarm_arn_before_the_topic(signer: Signer) -> None:
    envelope, _ = alarm_notification(
        signer, "alarm_metric.json", topic="arn:aws:sns:us-east-1:210987654321:t"
    )

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.labels["region"] == "eu-central-1"


def test_a_china_alarm_links_to_the_china_console(signer: Signer) -> None:
    envelope, _ = alarm_notification(signer, "alarm_china.json")

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.links["console"].startswith(
        "https://cn-north-1.console.amazonaws.cn/cloudwatch/home?region=cn-north-1#"
    )
    assert alert.severity_hint is None


def test_an_alarm_with_crlf_in_its_message_parses(signer: Signer) -> None:
    text = json.dumps(fixture("alarm_metric.json"), indent=2).replace("\n", "\r\n")
    envelope = signer.notification(text)

    alert = one_alert(post(make_source(signer), envelope))

    assert alert.labels["alarm_type"] == "metric"


@pytest.mark.parametrize("message", ["Hello\r\nworld!", '{"hello": "world"}', "[1, 2]"])
def test_a_signed_message_that_is_not_an_alarm_is_acknowledged(
    signer: Signer, message: str
) -> None:
    envelope = signer.notification(message, subject=None)

    notification = post(make_source(signer), envelope)

    assert notification.alerts == []
    assert notification.note == "not a CloudWatch alarm"
    assert notification.message_id == envelope["MessageId"]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('{"AlarmName": "x", "NewStateValue": "ALA', "looks like a CloudWatch alarm"),
        ('{"AlarmName": "x", "NewStateValue": "FIRING"}', "NewStateValue must be one"),
        ('{"AlarmName": "", "NewStateValue": "ALARM"}', "non-empty string AlarmName"),
        ('{"AlarmName": 7, "NewStateValue": "ALARM"}', "non-empty string AlarmName"),
    ],
)
def test_a_broken_alarm_is_bad_input(signer: Signer, message: str, error: str) -> None:
    with pytest.raises(InputError, match=error):
        post(make_source(signer), signer.notification(message))


# envelopes and signatures ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty body"),
        (b"Hello", "malformed JSON"),
        (b"[]", "got a JSON list"),
        (b'{"Type": "Notice", "MessageId": "m"}', "SNS Type must be one of"),
        (b'{"Type": "Notification", "MessageId": "m"}', "missing TopicArn, Message"),
        (
            b'{"Type": "Notification", "MessageId": "m", "TopicArn": "t", '
            b'"Message": {}, "Timestamp": "x"}',
            "field Message must be a string; got dict",
        ),
    ],
)
def test_a_malformed_envelope_is_bad_input(
    signer: Signer, body: bytes, error: str
) -> None:
    with pytest.raises(InputError, match=error):
        post(make_source(signer), body)


def test_an_unsigned_envelope_is_forbidden_and_logged(
    signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = signer.notification(json.dumps(fixture("alarm_metric.json")))
    for name in ("Signature", "SignatureVersion", "SigningCertURL"):
        del envelope[name]

    with pytest.raises(ForbiddenError, match="unsigned SNS message"):
        post(make_source(signer), envelope)

    [record] = [r for r in caplog.records if r.getMessage() == "sns.signature_invalid"]
    assert record.topic_arn == TOPIC  # type: ignore[attr-defined]
    assert record.message_id == envelope["MessageId"]  # type: ignore[attr-defined]


def test_a_forged_alarm_is_forbidden_and_the_log_never_holds_the_signature(
    signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    envelope, alarm = alarm_notification(signer, "alarm_metric.json")
    envelope["Message"] = json.dumps({**alarm, "NewStateValue": "OK"})

    with pytest.raises(ForbiddenError, match="signature does not match"):
        post(make_source(signer), envelope)

    [record] = [r for r in caplog.records if r.getMessage() == "sns.signature_invalid"]
    assert record.message_id == envelope["MessageId"]  # type: ignore[attr-defined]
    assert envelope["Signature"] not in caplog.text
    assert all(envelope["Signature"] not in str(v) for v in record.__dict__.values())


# topic allow-list -----------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "topic", "allowed"),
    [
        ([], "arn:aws:sns:us-east-1:1:anything", True),
        (["*"], "arn:aws:sns:us-east-1:1:anything", True),
        ([TOPIC], TOPIC, True),
        ([TOPIC], TOPIC + "-2", False),
        (
            ["arn:aws:sns:*:210987654321:alerts-*"],
            "arn:aws:sns:us-west-2:210987654321:alerts-db",
            True,
        ),
        (
            ["arn:aws:sns:*:210987654321:alerts-*"],
            "arn:aws:sns:us-west-2:999999999999:alerts-db",
            False,
        ),
        (
            ["arn:aws:sns:*:210987654321:alerts-*"],
            "arn:aws:sns:us-west-2:210987654321:other",
            False,
        ),
        # a star never crosses a field boundary
        (["arn:aws:sns:*:alerts"], "arn:aws:sns:us-west-2:210987654321:alerts", False),
        (["arn:aws:sns:us-east-1:1:a.b"], "arn:aws:sns:us-east-1:1:aXb", False),
    ],
)
def test_the_topic_allow_list(patterns: list[str], topic: str, allowed: bool) -> None:
    matcher = topic_matcher(patterns)

    assert (matcher is None or matcher.fullmatch(topic) is not None) is allowed


def test_a_foreign_topic_is_forbidden_before_any_certificate_fetch(
    signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = RecordingFetch()
    source = CloudWatchSource(
        make_config(topics=["arn:aws:sns:*:210987654321:alerts-*"]),
        verifier=SnsVerifier(HOST, None, fetch=fetch),
        fetch=fetch,
    )
    envelope, _ = alarm_notification(signer, "alarm_metric.json")

    with pytest.raises(ForbiddenError, match=r"not in sources\.cloudwatch\.topics"):
        post(source, envelope)
    assert fetch.calls == []
    assert "sns.topic_refused" in caplog.text


def test_an_empty_allow_list_is_warned_about() -> None:
    assert "cloudwatch.topics_unrestricted" in make_source(None).warnings()
    assert make_source(None, topics=[TOPIC]).warnings() == {}


# subscription handshake ------------------------------------------------------


def test_a_subscription_is_confirmed_by_fetching_its_url(signer: Signer) -> None:
    fetch = RecordingFetch(CONFIRMED)
    envelope = signer.confirmation()

    notification = post(make_source(signer, fetch, topics=[TOPIC]), envelope)

    assert fetch.calls == [envelope["SubscribeURL"]]
    assert notification.alerts == []
    assert notification.note == "subscription confirmed"
    assert notification.message_id == envelope["MessageId"]


def test_without_auto_confirm_the_subscription_is_left_pending(
    signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    fetch = RecordingFetch(CONFIRMED)

    notification = post(
        make_source(signer, fetch, auto_confirm=False), signer.confirmation()
    )

    assert fetch.calls == []
    assert "subscription pending" in (notification.note or "")
    assert "sns.subscription_pending" in caplog.text


def test_a_tampered_confirmation_is_never_fetched(signer: Signer) -> None:
    fetch = RecordingFetch(CONFIRMED)
    envelope = signer.confirmation()
    envelope["SubscribeURL"] = envelope["SubscribeURL"].replace(
        "eu-central-1", "x-1", 1
    )

    with pytest.raises(ForbiddenError, match="signature does not match"):
        post(make_source(signer, fetch), envelope)
    assert fetch.calls == []


def test_a_confirmation_from_a_foreign_topic_is_never_fetched(signer: Signer) -> None:
    fetch = RecordingFetch(CONFIRMED)
    envelope = signer.confirmation(topic="arn:aws:sns:eu-central-1:999999999999:x")

    with pytest.raises(ForbiddenError, match=r"not in sources\.cloudwatch\.topics"):
        post(make_source(signer, fetch, topics=[TOPIC]), envelope)
    assert fetch.calls == []


def test_subscribe_urls_outside_aws_are_never_fetched(
    signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    recording = RecordingFetch(CONFIRMED)
    live = CloudWatchSource(  # the real, requests-based fetch
        make_config(), verifier=SnsVerifier(HOST, signer.cert_dir, fetch=recording)
    )
    recorded = make_source(signer, recording)

    with counting_listener() as listener:
        urls = [
            *bad_urls(listener.server_address[1]),
            "https://sns.eu-central-1.amazonaws.com/?Action=Unsubscribe&x=1",
        ]
        for url in urls:
            envelope = signer.confirmation(subscribe_url=url or "x")
            for source in (live, recorded):
                with pytest.raises(ForbiddenError, match="SubscribeURL refused"):
                    post(source, envelope)

    assert recording.calls == []
    assert listener.connections == 0
    assert "sns.subscribe_url_refused" in caplog.text


def test_an_unsubscribe_confirmation_is_acknowledged_and_never_fetched(
    signer: Signer,
) -> None:
    fetch = RecordingFetch(CONFIRMED)

    notification = post(
        make_source(signer, fetch), signer.confirmation(kind="UnsubscribeConfirmation")
    )

    assert fetch.calls == []
    assert notification.alerts == []
    assert "unsubscribe" in (notification.note or "")


# raw delivery ----------------------------------------------------------------


RAW = {"enabled": True, "token": TOKEN}
RAW_HEADERS = {
    "x-amz-sns-rawdelivery": "true",
    "x-amz-sns-message-id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
    "x-amz-sns-topic-arn": TOPIC,
}


def test_raw_delivery_on_the_token_path_becomes_an_alert() -> None:
    source = make_source(None, raw_delivery=RAW)
    alarm = fixture("alarm_metric.json")

    notification = post(source, alarm, headers=RAW_HEADERS, subpath=TOKEN)

    alert = one_alert(notification)
    assert notification.message_id == RAW_HEADERS["x-amz-sns-message-id"]
    assert alert.identity == alarm["AlarmArn"]
    assert alert.raw == alarm


def test_raw_delivery_is_refused_when_disabled() -> None:
    source = make_source(None)

    with pytest.raises(ForbiddenError, match="raw message delivery is disabled"):
        post(source, fixture("alarm_metric.json"), subpath=TOKEN)
    with pytest.raises(ForbiddenError, match="raw message delivery is disabled"):
        post(source, fixture("alarm_metric.json"))


@pytest.mark.parametrize(
    ("subpath", "headers", "error"),
    [
        ("", RAW_HEADERS, "accepted only on /webhooks/cloudwatch/<token>"),
        ("", {}, "accepted only on /webhooks/cloudwatch/<token>"),
        ("wrong-token-0123456789", RAW_HEADERS, "invalid raw delivery token"),
        (TOKEN + "/x", RAW_HEADERS, "invalid raw delivery token"),
    ],
)
def test_raw_delivery_needs_the_token(
    subpath: str, headers: dict[str, str], error: str
) -> None:
    source = make_source(None, raw_delivery=RAW)

    with pytest.raises(AuthError, match=error) as caught:
        post(source, fixture("alarm_metric.json"), headers=headers, subpath=subpath)
    assert TOKEN not in str(caught.value)


def test_raw_delivery_checks_the_topic_header_against_the_allow_list() -> None:
    source = make_source(None, raw_delivery=RAW, topics=["arn:aws:sns:*:1:other"])

    with pytest.raises(ForbiddenError, match=r"not in sources\.cloudwatch\.topics"):
        post(source, fixture("alarm_metric.json"), headers=RAW_HEADERS, subpath=TOKEN)


def test_a_raw_message_that_is_not_an_alarm_is_acknowledged() -> None:
    source = make_source(None, raw_delivery=RAW)

    notification = post(source, b"deploy finished", headers=RAW_HEADERS, subpath=TOKEN)

    assert notification.note == "not a CloudWatch alarm"


def test_a_signed_confirmation_on_the_token_path_is_handled(signer: Signer) -> None:
    fetch = RecordingFetch(CONFIRMED)
    source = make_source(signer, fetch, raw_delivery=RAW)

    notification = post(source, signer.confirmation(), subpath=TOKEN)

    assert notification.note == "subscription confirmed"


@pytest.mark.parametrize(
    ("cloudwatch", "error"),
    [
        ({"raw_delivery": {"enabled": True, "token": "short"}}, "at least 16"),
        ({"raw_delivery": {"enabled": True, "token": "a/b" * 8}}, "at least 16"),
        ({"eventbridge": {"enabled": True}}, "eventbridge.api_key"),
        (
            {"severity": {"source": "name", "name_patterns": {"(": "high"}}},
            "name_patterns",
        ),
    ],
)
def test_an_unusable_configuration_is_refused(
    cloudwatch: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        CloudWatchSource(make_config(**cloudwatch), verifier=AcceptingVerifier())


# EventBridge -----------------------------------------------------------------


EVENTBRIDGE = {"enabled": True, "api_key": API_KEY}
KEY = {"x-api-key": API_KEY}


def test_an_eventbridge_metric_alarm_matches_the_sns_labels(signer: Signer) -> None:
    source = make_source(signer, eventbridge=EVENTBRIDGE)
    event = fixture("eventbridge_metric.json")
    envelope, _ = alarm_notification(signer, "alarm_metric.json")

    from_event = one_alert(post(source, event, headers=KEY))
    from_sns = one_alert(post(source, envelope))

    assert from_event.identity == from_sns.identity
    assert from_event.starts_at == from_sns.starts_at
    assert from_event.severity_hint == "critical"
    assert from_event.raw == event
    shared = {k: v for k, v in from_sns.labels.items() if k in from_event.labels}
    assert from_event.labels == shared | {"threshold": "90"}
    # what the event does not carry
    assert set(from_sns.labels) - set(from_event.labels) == {
        "comparison",
        "region_name",
        "topic_arn",
    }


def test_an_eventbridge_event_id_is_the_message_id() -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)
    event = fixture("eventbridge_ok.json")

    notification = post(source, event, headers=KEY)

    assert notification.message_id == event["id"]
    assert one_alert(notification).status == "resolved"


@pytest.mark.parametrize(
    ("name", "labels", "annotations"),
    [
        (
            "eventbridge_metric_math.json",
            {"alarm_type": "metric_math", "region": "ap-northeast-1", "threshold": "5"},
            {"expression": "100 * errors / requests"},
        ),
        (
            "eventbridge_anomaly.json",
            {"alarm_type": "anomaly_detection", "metric_name": "OrdersPlaced"},
            {"expression": "ANOMALY_DETECTION_BAND(m1, 2)"},
        ),
        (
            "eventbridge_composite.json",
            {"alarm_type": "composite", "actions_suppressed_by": "Alarm"},
            {
                "triggering_children": "arn:aws:cloudwatch:us-east-1:210987654321:"
                "alarm:checkout latency (ALARM)"
            },
        ),
    ],
)
def test_eventbridge_alarm_shapes(
    name: str, labels: dict[str, str], annotations: dict[str, str]
) -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)

    alert = one_alert(post(source, fixture(name), headers=KEY))

    assert labels.items() <= alert.labels.items()
    assert annotations.items() <= alert.annotations.items()


def test_an_eventbridge_configuration_change_is_acknowledged() -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)
    event = fixture("eventbridge_configuration_change.json")

    notification = post(source, event, headers=KEY)

    assert notification.alerts == []
    assert "Configuration Change" in (notification.note or "")
    assert notification.message_id == event["id"]


@pytest.mark.parametrize(
    ("eventbridge", "headers", "error", "kind"),
    [
        ({}, KEY, "EventBridge delivery is disabled", ForbiddenError),
        (EVENTBRIDGE, {}, "must carry the x-api-key header", AuthError),
        (EVENTBRIDGE, {"x-api-key": "nope"}, "invalid EventBridge API key", AuthError),
    ],
)
def test_eventbridge_needs_to_be_enabled_and_keyed(
    eventbridge: dict[str, Any],
    headers: dict[str, str],
    error: str,
    kind: type[Exception],
) -> None:
    source = make_source(None, eventbridge=eventbridge)

    with pytest.raises(kind, match=error) as caught:
        post(source, fixture("eventbridge_metric.json"), headers=headers)
    assert API_KEY not in str(caught.value)


def test_a_wrong_eventbridge_key_fails_authentication_before_parsing() -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)

    with pytest.raises(AuthError, match="invalid EventBridge API key"):
        source.authenticate(Inbound(body=b"not even json", headers={"x-api-key": "x"}))


def test_the_eventbridge_header_name_is_configurable() -> None:
    source = make_source(
        None, eventbridge={**EVENTBRIDGE, "api_key_header": "X-Relay-Key"}
    )

    notification = post(
        source, fixture("eventbridge_metric.json"), headers={"x-relay-key": API_KEY}
    )

    assert len(notification.alerts) == 1


def test_an_eventbridge_alarm_without_detail_is_bad_input() -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)
    event = {**fixture("eventbridge_metric.json"), "detail": None}

    with pytest.raises(InputError, match="no detail object"):
        post(source, event, headers=KEY)


# severity hints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ({}, "critical"),
        ({"source": "fixed", "default": "warning"}, "warning"),
        ({"source": "name", "name_patterns": {"disk": "warning"}}, "warning"),
        ({"source": "name", "name_patterns": {"^cpu": "high"}}, None),
        (
            {"source": "name", "name_patterns": {"^cpu": "high"}, "default": "info"},
            "info",
        ),
    ],
)
def test_the_severity_hint_source(
    signer: Signer, severity: dict[str, Any], expected: str | None
) -> None:
    envelope, _ = alarm_notification(signer, "alarm_metric.json")

    alert = one_alert(post(make_source(signer, severity=severity), envelope))

    assert alert.severity_hint == expected


# templates -------------------------------------------------------------------


def _render(alert: Alert) -> tuple[str, str]:
    # the settings the relay renders tickets with: plain text, block tags
    # owning their lines, and strict about undefined names as `relay check` is
    env = SandboxedEnvironment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else ""
    context = {
        "source": "cloudwatch",
        "alert": alert,
        "alerts": [alert],
        "firing": [alert] if alert.firing else [],
        "resolved": [] if alert.firing else [alert],
        "group": Notification(source="cloudwatch").to_dict(),
        "ticket": {"platform": "amazon_web_services", "severity": "high"},
    }
    subject = env.get_template("cloudwatch.subject.j2").render(context)
    body = env.get_template("cloudwatch.body.j2").render(context)
    return subject.strip(), body.strip()


@pytest.mark.parametrize(
    ("name", "in_body"),
    [
        (
            "alarm_metric.json",
            [
                "is ALARM (was OK).",
                "Region:     eu-central-1 (Europe (Frankfurt))",
                "Changed at: 2024-03-04 10:15:42 UTC",
                "Metric:     CWAgent disk_used_percent (Maximum)",
                "Condition:  >= 90",
                "- Host_Name = web-01",
                "Data volume almost full.",
                "Console: https://eu-central-1.console.aws.amazon.com/",
            ],
        ),
        (
            "alarm_metric_math.json",
            ["Expression: 100 * errors / requests", "Condition:  > 5"],
        ),
        (
            "alarm_anomaly.json",
            ["Anomaly band: ANOMALY_DETECTION_BAND(m1, 2)", "LessThanLowerOr"],
        ),
        (
            "alarm_composite.json",
            ["Alarm rule:\nALARM(", "Triggering children:\n- arn:aws:cloudwatch:"],
        ),
        ("alarm_composite_no_children.json", ["Triggering children:\n(none reported)"]),
        ("alarm_legacy_no_arn.json", ["210987654321:alarm:queue backlog\nTopic:"]),
    ],
)
def test_the_templates_render_each_alarm_shape(
    signer: Signer, name: str, in_body: list[str]
) -> None:
    envelope, alarm = alarm_notification(signer, name)
    alert = one_alert(post(make_source(signer), envelope))

    subject, body = _render(alert)

    assert subject.startswith(
        f"CloudWatch {alarm['NewStateValue']}: {alarm['AlarmName']}"
    )
    assert "\n" not in subject
    assert "(account 210987654321)" in subject
    for text in in_body:
        assert text in body
    assert "\n\n\n" not in body


def test_the_templates_render_an_eventbridge_alert() -> None:
    source = make_source(None, eventbridge=EVENTBRIDGE)
    alert = one_alert(post(source, fixture("eventbridge_composite.json"), headers=KEY))

    subject, body = _render(alert)

    assert subject == (
        "CloudWatch ALARM: checkout degraded in us-east-1 (account 210987654321)"
    )
    assert "Actions suppressed by: Alarm" in body


# the real samples ------------------------------------------------------------

# file -> (number of alerts, status or note fragment, alarm_type)
SAMPLE_OUTCOMES: dict[str, tuple[int, str, str]] = {
    "sns_cloudwatch_alarm_1.json": (1, "firing", "metric"),
    "sns_cloudwatch_alarm_2.json": (1, "firing", "metric"),
    "sns_cloudwatch_alarm_modern_fields_1.json": (1, "firing", "metric"),
    "sns_cloudwatch_alarm_signed_real_1.json": (1, "firing", "metric"),
    "sns_cloudwatch_composite_alarm_signed_real_1.json": (1, "firing", "composite"),
    "sns_cloudwatch_insufficient_data_1.json": (0, "INSUFFICIENT_DATA ignored", ""),
    "sns_cloudwatch_metric_math_1.json": (1, "firing", "metric_math"),
    "sns_cloudwatch_ok_1.json": (1, "resolved", "metric"),
    "sns_notification_multiline_message_1.json": (0, "not a CloudWatch alarm", ""),
    "sns_notification_sigv1_real_1.json": (0, "not a CloudWatch alarm", ""),
    "sns_notification_sigv2_real_1.json": (0, "not a CloudWatch alarm", ""),
    "sns_raw_delivery_cloudwatch_alarm_1.json": (1, "firing", "metric"),
    "sns_subscription_confirmation_1.json": (0, "subscription confirmed", ""),
    "sns_subscription_confirmation_2.json": (0, "subscription confirmed", ""),
    "sns_subscription_confirmation_signed_real_1.json": (
        0,
        "subscription confirmed",
        "",
    ),
    "sns_unsubscribe_confirmation_1.json": (0, "unsubscribe confirmation", ""),
    "eventbridge_cloudwatch_alarm_anomaly_detection_1.json": (
        1,
        "firing",
        "anomaly_detection",
    ),
    "eventbridge_cloudwatch_alarm_metric_math_1.json": (1, "firing", "metric_math"),
    "eventbridge_cloudwatch_alarm_state_change_1.json": (1, "firing", "metric"),
    "eventbridge_cloudwatch_composite_alarm_suppressed_1.json": (
        1,
        "firing",
        "composite",
    ),
}


def _samples() -> list[Path]:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is not present")
    return sorted([*SAMPLES.glob("sns_*.json"), *SAMPLES.glob("eventbridge_*.json")])


def test_every_sample_has_an_expected_outcome() -> None:
    assert {p.name for p in _samples()} == set(SAMPLE_OUTCOMES)


@pytest.mark.parametrize("name", sorted(SAMPLE_OUTCOMES))
def test_each_sample_parses_to_its_outcome(name: str) -> None:
    path = next((p for p in _samples() if p.name == name), None)
    if path is None:
        pytest.skip(f"{name} is not among the samples")
    source = make_source(
        None, RecordingFetch(CONFIRMED), raw_delivery=RAW, eventbridge=EVENTBRIDGE
    )
    raw = "raw_delivery" in name

    notification = post(
        source,
        path.read_bytes(),
        headers=RAW_HEADERS if raw else KEY,
        subpath=TOKEN if raw else "",
    )

    count, outcome, alarm_type = SAMPLE_OUTCOMES[name]
    assert len(notification.alerts) == count
    if count:
        alert = notification.alerts[0]
        assert alert.status == outcome
        assert alert.labels["alarm_type"] == alarm_type
        assert alert.identity.startswith("arn:aws:cloudwatch:")
        assert notification.message_id
    else:
        assert outcome in (notification.note or "")


def test_the_real_signed_alarms_parse_with_the_real_verifier(tmp_path: Path) -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is not present")
    cert = SAMPLES / "sns_signing_cert_us-east-2_2022.pem"
    name = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
    (tmp_path / name).write_bytes(cert.read_bytes())
    fetch = RecordingFetch()
    verifier = SnsVerifier(HOST, tmp_path, fetch=fetch, check_expiry=False)
    source = CloudWatchSource(make_config(), verifier=verifier, fetch=fetch)

    metric = post(
        source, (SAMPLES / "sns_cloudwatch_alarm_signed_real_1.json").read_bytes()
    )
    composite = post(
        source,
        (SAMPLES / "sns_cloudwatch_composite_alarm_signed_real_1.json").read_bytes(),
    )

    assert one_alert(metric).labels["statistic"] == "Sum"
    assert one_alert(composite).annotations["triggering_children"] == (
        one_alert(metric).identity + " (ALARM)"
    )
    assert fetch.calls == []


# relay preview -----------------------------------------------------------------


def test_the_preview_source_parses_every_shape_without_credentials(
    signer: Signer,
) -> None:
    source = CloudWatchSource.for_preview(make_config())
    bodies: list[dict[str, Any]] = [
        fixture("alarm_metric.json"),  # raw delivery, no token
        fixture("eventbridge_metric.json"),  # EventBridge, disabled and no key
        {**signer.notification("x"), "Signature": "EXAMPLE"},  # unverifiable
    ]

    parsed = [source.parse(Inbound(body=json.dumps(b).encode())) for b in bodies]

    assert [len(n.alerts) for n in parsed] == [1, 1, 0]


def test_the_preview_source_never_confirms_a_subscription(signer: Signer) -> None:
    source = CloudWatchSource.for_preview(make_config())
    envelope = signer.confirmation()

    notification = source.parse(Inbound(body=json.dumps(envelope).encode()))

    assert "not fetched" in (notification.note or "")


def test_the_server_source_has_no_preview_mode(signer: Signer) -> None:
    source = CloudWatchSource(make_config())
    envelope = {**signer.notification("x"), "Signature": "EXAMPLE"}

    assert source.preview is False
    with pytest.raises(ForbiddenError, match="not valid base64"):
        source.parse(Inbound(body=json.dumps(envelope).encode()))
