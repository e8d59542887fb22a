"""CloudWatch alarm payloads, from either delivery path, to relay alerts.

An alarm arrives as the SNS ``Message`` JSON (PascalCase, dimensions as a
list of ``{name, value}``, the region as a display name) or as an
EventBridge event (camelCase, dimensions as a map, the region as a code).
Both are first reduced to :class:`AlarmFacts`, then turned into one
:class:`relay.alert.Alert` by :class:`AlarmMapper`, so the labels a rule
matches on are the same whichever way the alarm came.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from relay.alert import Alert, Notification, Status
from relay.config import CloudWatchSource as CloudWatchConfig
from relay.errors import ConfigError, InputError

log = logging.getLogger(__name__)

STATES = ("ALARM", "OK", "INSUFFICIENT_DATA")
ANOMALY_OPERATORS = frozenset(
    {
        "LessThanLowerOrGreaterThanUpperThreshold",
        "GreaterThanUpperThreshold",
        "LessThanLowerThreshold",
    }
)
# SNS spells statistics in upper case, EventBridge and the API in title case;
# one spelling lets one rule match both paths
_STATISTICS = {
    "AVERAGE": "Average",
    "SUM": "Sum",
    "MINIMUM": "Minimum",
    "MAXIMUM": "Maximum",
    "SAMPLE_COUNT": "SampleCount",
    "SAMPLECOUNT": "SampleCount",
}
_REGION_CODE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
# Region display names CloudWatch puts in SNS messages, by place: used only
# when neither the alarm ARN nor the topic ARN gives the region code (old
# raw-delivered messages). Newer forms read "EU (Ireland)", older ones
# "EU - Ireland"; both end in the place.
_REGION_BY_PLACE = {
    "n. virginia": "us-east-1",
    "ohio": "us-east-2",
    "n. california": "us-west-1",
    "oregon": "us-west-2",
    "cape town": "af-south-1",
    "hong kong": "ap-east-1",
    "mumbai": "ap-south-1",
    "hyderabad": "ap-south-2",
    "tokyo": "ap-northeast-1",
    "seoul": "ap-northeast-2",
    "osaka": "ap-northeast-3",
    "singapore": "ap-southeast-1",
    "sydney": "ap-southeast-2",
    "jakarta": "ap-southeast-3",
    "melbourne": "ap-southeast-4",
    "central": "ca-central-1",
    "frankfurt": "eu-central-1",
    "zurich": "eu-central-2",
    "ireland": "eu-west-1",
    "london": "eu-west-2",
    "paris": "eu-west-3",
    "milan": "eu-south-1",
    "spain": "eu-south-2",
    "stockholm": "eu-north-1",
    "bahrain": "me-south-1",
    "uae": "me-central-1",
    "tel aviv": "il-central-1",
    "sao paulo": "sa-east-1",
    "são paulo": "sa-east-1",
    "beijing": "cn-north-1",
    "ningxia": "cn-northwest-1",
    "us-west": "us-gov-west-1",
    "us-east": "us-gov-east-1",
}
_DESCRIPTION_SEVERITY = re.compile(r"(?<![A-Za-z0-9_])severity=([A-Za-z0-9_-]+)", re.I)
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_]")
_ALARM_HINT = re.compile(r'^\s*\{.*"(AlarmName|NewStateValue)"', re.S)


@dataclass
class AlarmFacts:
    """One alarm state change, independent of how it was delivered."""

    name: str
    state: str
    previous_state: str = ""
    arn: str = ""
    account: str = ""
    region: str = ""
    region_name: str = ""
    partition: str = "aws"
    reason: str = ""
    description: str = ""
    changed_at: datetime | None = None
    alarm_type: str = "metric"
    namespace: str = ""
    metric_name: str = ""
    statistic: str = ""
    comparison: str = ""
    threshold: str = ""
    expression: str = ""
    dimensions: dict[str, str] = field(default_factory=dict)
    alarm_rule: str = ""
    triggering_children: list[str] = field(default_factory=list)
    actions_suppressed_by: str = ""
    topic_arn: str = ""


def looks_like_alarm(text: str) -> bool:
    """Whether a message that failed to parse was meant to be an alarm."""
    return bool(_ALARM_HINT.match(text))


def alarm_from_message(alarm: dict[str, Any], *, topic_arn: str = "") -> AlarmFacts:
    """Facts from the SNS ``Message`` JSON of a CloudWatch alarm (also the
    body of a raw delivery). Raises InputError when the alarm name or the
    new state is unusable; every other field is optional."""
    name = _required_str(alarm, "AlarmName", "CloudWatch alarm")
    state = _state(alarm.get("NewStateValue"), "NewStateValue")
    facts = AlarmFacts(
        name=name,
        state=state,
        previous_state=_str(alarm.get("OldStateValue")),
        arn=_str(alarm.get("AlarmArn")),
        account=_str(alarm.get("AWSAccountId")),
        region_name=_str(alarm.get("Region")),
        reason=_str(alarm.get("NewStateReason")),
        description=_str(alarm.get("AlarmDescription")),
        changed_at=parse_time(alarm.get("StateChangeTime")),
        topic_arn=topic_arn,
    )
    _place(facts, [facts.arn, topic_arn])

    trigger = alarm.get("Trigger")
    if "AlarmRule" in alarm or not isinstance(trigger, dict):
        facts.alarm_type = "composite" if "AlarmRule" in alarm else "metric"
        facts.alarm_rule = _str(alarm.get("AlarmRule"))
        facts.triggering_children = _children(
            alarm.get("TriggeringChildren"), "Arn", "State", "Value"
        )
        return facts

    facts.comparison = _str(trigger.get("ComparisonOperator"))
    facts.threshold = _number(trigger.get("Threshold"))
    metrics = trigger.get("Metrics")
    if isinstance(metrics, list) and metrics:
        _metrics(facts, [_pascal_metric(m) for m in metrics if isinstance(m, dict)])
        if trigger.get("ThresholdMetricId"):
            facts.alarm_type = "anomaly_detection"
    else:
        facts.namespace = _str(trigger.get("Namespace"))
        facts.metric_name = _str(trigger.get("MetricName"))
        facts.statistic = _statistic(
            trigger.get("Statistic") or trigger.get("ExtendedStatistic")
        )
        facts.dimensions = _dimension_list(trigger.get("Dimensions"))
    if facts.comparison in ANOMALY_OPERATORS:
        facts.alarm_type = "anomaly_detection"
    return facts


def alarm_from_event(event: dict[str, Any]) -> AlarmFacts:
    """Facts from an EventBridge "CloudWatch Alarm State Change" event."""
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise InputError("EventBridge alarm event has no detail object")
    state = detail.get("state")
    if not isinstance(state, dict):
        raise InputError("EventBridge alarm event has no detail.state object")
    previous = _obj(detail.get("previousState"))
    config = _obj(detail.get("configuration"))
    resources = event.get("resources")
    arn = resources[0] if isinstance(resources, list) and resources else ""

    facts = AlarmFacts(
        name=_required_str(detail, "alarmName", "EventBridge alarm event detail"),
        state=_state(state.get("value"), "detail.state.value"),
        previous_state=_str(previous.get("value")),
        arn=_str(arn) if _str(arn).startswith("arn:") else "",
        account=_str(event.get("account")),
        reason=_str(state.get("reason")),
        description=_str(config.get("description")),
        changed_at=parse_time(state.get("timestamp")) or parse_time(event.get("time")),
        actions_suppressed_by=_str(state.get("actionsSuppressedBy")),
    )
    region = _str(event.get("region"))
    facts.region = region if _REGION_CODE.match(region) else ""
    _place(facts, [facts.arn])
    reason_data = _json_object(state.get("reasonData"))

    if "alarmRule" in config:
        facts.alarm_type = "composite"
        facts.alarm_rule = _str(config.get("alarmRule"))
        facts.triggering_children = _children(
            reason_data.get("triggeringAlarms"), "arn", "state", "value"
        )
        return facts

    metrics = config.get("metrics")
    if isinstance(metrics, list):
        _metrics(facts, [m for m in metrics if isinstance(m, dict)])
    facts.threshold = _number(reason_data.get("threshold"))
    return facts


def _metrics(facts: AlarmFacts, metrics: list[dict[str, Any]]) -> None:
    """Fill the metric fields from camelCase metric data queries (SNS ones
    are converted first); decides between metric, math and anomaly."""
    stats = [_obj(m.get("metricStat")) for m in metrics if "metricStat" in m]
    expressions = [_str(m.get("expression")) for m in metrics if m.get("expression")]
    returned = [
        _str(m.get("expression"))
        for m in metrics
        if m.get("expression") and str(m.get("returnData")).lower() == "true"
    ]

    names: list[str] = []
    namespaces: list[str] = []
    for stat in stats:
        metric = _obj(stat.get("metric"))
        _add_unique(namespaces, _str(metric.get("namespace")))
        _add_unique(names, _str(metric.get("name")))
        for key, value in _dimension_map(metric.get("dimensions")).items():
            known = facts.dimensions.get(key)
            if known is None:
                facts.dimensions[key] = value
            elif value not in known.split(","):
                facts.dimensions[key] = f"{known},{value}"
    facts.namespace = ",".join(namespaces)
    facts.metric_name = ",".join(names)
    facts.expression = (returned or expressions or [""])[0]

    if any("ANOMALY_DETECTION_BAND" in e.upper() for e in expressions):
        facts.alarm_type = "anomaly_detection"
    elif expressions or len(stats) > 1:
        facts.alarm_type = "metric_math"
    else:
        facts.alarm_type = "metric"
    if len(stats) == 1:
        facts.statistic = _statistic(stats[0].get("stat"))


def _pascal_metric(metric: dict[str, Any]) -> dict[str, Any]:
    """An SNS ``Trigger.Metrics`` entry in EventBridge's camelCase shape."""
    out: dict[str, Any] = {
        "id": metric.get("Id"),
        "expression": metric.get("Expression"),
        "label": metric.get("Label"),
        "returnData": metric.get("ReturnData"),
    }
    stat = metric.get("MetricStat")
    if isinstance(stat, dict):
        inner = _obj(stat.get("Metric"))
        out["metricStat"] = {
            "metric": {
                "namespace": inner.get("Namespace"),
                "name": inner.get("MetricName"),
                "dimensions": _dimension_list(inner.get("Dimensions")),
            },
            "period": stat.get("Period"),
            "stat": stat.get("Stat"),
        }
    return out


class AlarmMapper:
    """Turns AlarmFacts into the relay's Alert, applying the configured
    INSUFFICIENT_DATA policy and severity source. Validates its regexes at
    construction (ConfigError)."""

    def __init__(self, config: CloudWatchConfig) -> None:
        self.config = config
        self._name_patterns: list[tuple[re.Pattern[str], str]] = []
        for pattern, severity in config.severity.name_patterns.items():
            try:
                self._name_patterns.append((re.compile(pattern), severity))
            except re.error as e:
                raise ConfigError(
                    "sources.cloudwatch.severity.name_patterns: expected regular "
                    f"expressions; got {pattern!r}: {e}"
                ) from e

    def notification(
        self,
        facts: AlarmFacts,
        *,
        message_id: str | None,
        raw: dict[str, Any],
        alarm: dict[str, Any],
    ) -> Notification:
        """One Notification holding the alarm's alert, or none (with a note)
        when the INSUFFICIENT_DATA policy is ``ignore``. ``raw`` is the whole
        delivery, ``alarm`` the alarm's own JSON (the alert's ``raw``)."""
        status = self.status(facts.state)
        if status is None:
            log.info(
                "cloudwatch.insufficient_data_ignored",
                extra={"alarm": facts.name, "message_id": message_id},
            )
            return Notification(
                source="cloudwatch",
                message_id=message_id,
                note="INSUFFICIENT_DATA ignored (sources.cloudwatch."
                "insufficient_data: ignore)",
                raw=raw,
            )
        return Notification(
            source="cloudwatch",
            alerts=[self.alert(facts, status, alarm)],
            message_id=message_id,
            raw=raw,
        )

    def status(self, state: str) -> Status | None:
        if state == "ALARM":
            return "firing"
        if state == "OK":
            return "resolved"
        policy = self.config.insufficient_data
        if policy == "fire":
            return "firing"
        if policy == "resolve":
            return "resolved"
        return None

    def alert(self, facts: AlarmFacts, status: Status, raw: dict[str, Any]) -> Alert:
        labels = {
            "alertname": facts.name,
            "alarm_name": facts.name,
            "alarm_arn": facts.arn,
            "account": facts.account,
            "region": facts.region,
            "region_name": facts.region_name,
            "namespace": facts.namespace,
            "metric_name": facts.metric_name,
            "statistic": facts.statistic,
            "comparison": facts.comparison,
            "threshold": facts.threshold,
            "state": facts.state,
            "previous_state": facts.previous_state,
            "alarm_type": facts.alarm_type,
            "topic_arn": facts.topic_arn,
            # EventBridge still reports an alarm whose actions a suppressor
            # alarm holds back (SNS does not): a rule can drop those
            "actions_suppressed_by": facts.actions_suppressed_by,
        }
        for key, value in facts.dimensions.items():
            label = "dimension_" + _LABEL_CHARS.sub("_", key)
            labels[label] = f"{labels[label]},{value}" if label in labels else value
        annotations = {
            "description": facts.description,
            "reason": facts.reason,
            "expression": facts.expression,
            "alarm_rule": facts.alarm_rule,
            "triggering_children": "\n".join(facts.triggering_children),
        }
        console = console_url(facts.name, facts.region, facts.partition)
        return Alert(
            source="cloudwatch",
            status=status,
            identity=facts.arn or synthetic_arn(facts),
            name=facts.name,
            labels={k: v for k, v in labels.items() if v},
            annotations={k: v for k, v in annotations.items() if v},
            starts_at=facts.changed_at,
            ends_at=facts.changed_at if status == "resolved" else None,
            links={"console": console} if console else {},
            severity_hint=self.severity(facts),
            raw=raw,
        )

    def severity(self, facts: AlarmFacts) -> str | None:
        """The severity hint: a ``severity=<value>`` tag in the description,
        the first name pattern that matches, or the fixed default."""
        source = self.config.severity.source
        found: str | None = None
        if source == "description":
            match = _DESCRIPTION_SEVERITY.search(facts.description)
            found = match.group(1).lower() if match else None
        elif source == "name":
            found = next(
                (sev for pat, sev in self._name_patterns if pat.search(facts.name)),
                None,
            )
        return found or self.config.severity.default or None


def synthetic_arn(facts: AlarmFacts) -> str:
    """The alarm's ARN rebuilt from account, region and name, for messages
    that predate ``AlarmArn``; equal to the real ARN when those are right,
    so a later message that carries the ARN is the same problem."""
    return (
        f"arn:{facts.partition}:cloudwatch:{facts.region}:{facts.account}"
        f":alarm:{facts.name}"
    )


def console_url(name: str, region: str, partition: str = "aws") -> str:
    """The CloudWatch console page of one alarm, or "" without a region."""
    if not region:
        return ""
    if partition == "aws-cn" or region.startswith("cn-"):
        host = f"{region}.console.amazonaws.cn"
    elif partition == "aws-us-gov" or region.startswith("us-gov-"):
        host = "console.amazonaws-us-gov.com"
    else:
        host = f"{region}.console.aws.amazon.com"
    return (
        f"https://{host}/cloudwatch/home?region={region}"
        f"#alarmsV2:alarm/{quote(name, safe='')}"
    )


def parse_time(value: Any) -> datetime | None:
    """A timezone-aware datetime from ``2019-02-15T23:53:45.093+0000`` or
    ``2019-10-02T17:04:40Z``; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _place(facts: AlarmFacts, arns: list[str]) -> None:
    """Region code, account and partition from the first ARN that has
    them, else the region from its display name."""
    partition = ""
    for arn in arns:
        parts = arn.split(":") if arn else []
        if len(parts) < 6 or parts[0] != "arn":
            continue
        partition = partition or parts[1]
        if not facts.region and _REGION_CODE.match(parts[3]):
            facts.region = parts[3]
        if not facts.account and parts[4].isdigit():
            facts.account = parts[4]
    if not facts.region and facts.region_name:
        place = re.split(r"\s+-\s+|\(", facts.region_name)[-1]
        facts.region = _REGION_BY_PLACE.get(place.strip(" )").lower(), "")
    facts.partition = partition or facts.partition
    if facts.region.startswith("cn-"):
        facts.partition = "aws-cn"


def _required_str(data: dict[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        found = "nothing" if value in (None, "") else repr(value)[:60]
        raise InputError(f"{what} needs a non-empty string {key}; got {found}")
    return value


def _state(value: Any, where: str) -> str:
    if value not in STATES:
        raise InputError(f"{where} must be one of {', '.join(STATES)}; got {value!r}")
    return str(value)


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _number(value: Any) -> str:
    """A threshold as a label: ``30`` rather than ``30.0``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _statistic(value: Any) -> str:
    text = _str(value)
    return _STATISTICS.get(text.upper(), text)


def _dimension_list(value: Any) -> dict[str, str]:
    """``[{"name": n, "value": v}]`` (either case) as a dict."""
    out: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            name = item.get("name", item.get("Name"))
            if name:
                out[str(name)] = _str(item.get("value", item.get("Value")))
    return out


def _dimension_map(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): _str(v) for k, v in value.items()}
    return _dimension_list(value)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _child(arn: Any, state: Any) -> str:
    return f"{_str(arn)} ({_str(state)})" if state else _str(arn)


def _add_unique(items: list[str], value: str) -> None:
    if value and value not in items:
        items.append(value)


def _children(children: Any, arn: str, state: str, value: str) -> list[str]:
    """A composite alarm's triggering children, from SNS (PascalCase keys)
    or EventBridge (camelCase keys)."""
    found = []
    for child in children if isinstance(children, list) else []:
        if isinstance(child, dict):
            state_of = child.get(state)
            current = state_of.get(value) if isinstance(state_of, dict) else ""
            found.append(_child(child.get(arn), current))
    return found
