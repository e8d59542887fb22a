"""Google Cloud Monitoring webhook notification channels.

Cloud Monitoring posts one JSON incident per call (schema ``"version":
"1.2"``; ``"1.1"`` from the legacy Stackdriver app; ``"test"`` from the
channel's Test button). It cannot send custom headers, so a channel either
carries a token in its URL (``webhook_tokenauth``, ``?auth_token=…``) or
uses basic auth (``webhook_basicauth``), which it only presents after a 401
challenge. The same JSON may also arrive base64-encoded inside a Pub/Sub
push envelope when a Pub/Sub channel feeds a push subscription.

One incident is one alert: ``incident_id`` is its identity, the same on the
open and the closed notification and on every re-notification, so repeats
are duplicates to dedup and the closed one resolves.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from relay.alert import Alert, Notification, Status
from relay.config import Config
from relay.errors import AuthError, InputError
from relay.sources.auth import check_inbound, same
from relay.sources.base import Inbound, Source, parse_json_object

log = logging.getLogger(__name__)

TEST_NOTE = "test notification acknowledged"
KNOWN_VERSIONS = ("1.2", "1.1")

# "acknowledged" (legacy Stackdriver) leaves the incident open in Cloud
# Monitoring: someone has seen it, nothing is fixed. It therefore fires like
# "open" does, which dedup turns into a duplicate of the live ticket, or into
# a new ticket when none exists yet.
_STATES: dict[str, Status] = {
    "open": "firing",
    "acknowledged": "firing",
    "closed": "resolved",
}
_SEVERITIES = {"critical", "error", "warning"}
# placeholders Cloud Monitoring puts in metric fields that have no value:
# "" for log-match conditions, "__missing__" for PromQL conditions
_MISSING = {"", "__missing__"}
_CONDITION_TYPES = {
    "conditionThreshold": "threshold",
    "conditionAbsent": "absent",
    "conditionMatchedLog": "log_match",
    "conditionMonitoringQueryLanguage": "mql",
    "conditionPrometheusQueryLanguage": "promql",
    "conditionSql": "sql",
}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_]")
_RUNBOOK_NAME = re.compile(r"runbook|playbook", re.IGNORECASE)


class CloudMonitoringSource(Source):
    """The ``cloud-monitoring`` source: authenticates a notification
    channel's request and turns its incident into one Alert.

    Thread-safe: it keeps nothing but the configuration.
    """

    name = "cloud-monitoring"

    def __init__(self, config: Config) -> None:
        section = config.sources.cloud_monitoring
        self._token = section.token
        self._auth = section.auth
        # Cloud Monitoring retries with its credentials only when the 401
        # names the Basic scheme; quotes would break the header's syntax
        realm = section.auth.realm.replace('"', "").replace("\\", "")
        self._challenge = f'Basic realm="{realm}"'

    @property
    def auth_enabled(self) -> bool:
        return bool(self._token) or self._auth.enabled

    def authenticate(self, request: Inbound) -> None:
        """Accept the request when its ``auth_token`` query parameter or its
        basic credentials match (either, when both are configured).

        With basic auth configured every refusal carries a ``Basic``
        challenge, because Cloud Monitoring sends no credentials before it
        has been challenged. Messages never contain what was sent.
        """
        if not self.auth_enabled:
            return

        given = request.args.get("auth_token", "")
        if self._token and given and same(given, self._token):
            return

        if self._auth.enabled:
            try:
                check_inbound(self._auth, request)
            except AuthError as e:
                message = "invalid credentials" if given else str(e)
                challenge = self._challenge if self._auth.basic is not None else None
                raise AuthError(message, challenge=challenge) from None
            return

        if not given:
            raise AuthError(
                "credentials required: expected an auth_token query parameter "
                "in the channel URL; got none"
            )
        raise AuthError("invalid credentials: the auth_token does not match")

    def parse(self, request: Inbound) -> Notification:
        """Turn a notification (direct or in a Pub/Sub push envelope) into a
        Notification with one alert, or none for the Test button.

        Raises InputError naming the field when the payload is not a Cloud
        Monitoring incident.
        """
        payload = parse_json_object(request.body, "Cloud Monitoring notification")
        message_id: str | None = None
        if "incident" not in payload and isinstance(payload.get("message"), dict):
            payload, message_id = _unwrap_pubsub(payload["message"])

        version = payload.get("version")
        version = "" if version is None else str(version).strip().lower()
        if version == "test":
            log.info(
                "cloud_monitoring.test_notification",
                extra={"message_id": message_id},
            )
            return Notification(
                source=self.name,
                note=TEST_NOTE,
                message_id=message_id,
                raw=payload,
            )

        incident = payload.get("incident")
        if not isinstance(incident, dict):
            raise InputError(
                "incident: expected a JSON object holding the Cloud Monitoring "
                f"incident; got {_kind(incident)}"
            )
        if version and version not in KNOWN_VERSIONS:
            # Google adds fields without changing the shape; a newer schema
            # is more likely readable than not, so read it and say so
            log.warning("cloud_monitoring.unknown_version", extra={"version": version})

        alert = incident_to_alert(incident)
        return Notification(
            source=self.name,
            alerts=[alert],
            common_labels=dict(alert.labels),
            common_annotations=dict(alert.annotations),
            message_id=message_id,
            raw=payload,
        )


def incident_to_alert(incident: dict[str, Any]) -> Alert:
    """Build the Alert for one incident object (schema 1.2 or 1.1).

    Raises InputError naming the field for a missing ``incident_id``, an
    unknown ``state`` or a time that is not epoch seconds.
    """
    identity = _required_text(incident, "incident_id")
    state = _required_text(incident, "state").lower()
    if state not in _STATES:
        raise InputError(
            "incident.state: expected open, closed or acknowledged; "
            f"got {incident['state']!r}"
        )

    policy = _text(incident.get("policy_name"))
    condition_name = _text(incident.get("condition_name")) or _text(
        _mapping(incident.get("condition")).get("displayName")
    )
    labels = _labels(incident, state, policy, condition_name)
    severity = _severity(incident)
    if severity:
        labels["severity"] = severity
    _add_policy_labels(labels, _mapping(incident.get("policy_user_labels")))

    return Alert(
        source="cloud-monitoring",
        status=_STATES[state],
        identity=identity,
        name=policy or condition_name or "Cloud Monitoring incident",
        labels=labels,
        annotations=_annotations(incident),
        starts_at=_epoch(incident, "started_at"),
        ends_at=_epoch(incident, "ended_at"),
        links=_links(incident),
        severity_hint=severity,
        raw=incident,
    )


def _unwrap_pubsub(message: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The notification inside a Pub/Sub push envelope, and the message id
    (Pub/Sub keeps it on redelivery, so a repeat is recognised)."""
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise InputError(
            "message.data: expected the base64-encoded Cloud Monitoring "
            f"notification of a Pub/Sub push envelope; got {_kind(data)}"
        )
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            "message.data: expected base64 text; got characters outside the "
            "base64 alphabet or a bad length"
        ) from None
    inner = parse_json_object(body, "Cloud Monitoring notification in message.data")
    raw_id = message.get("messageId") or message.get("message_id")
    return inner, (str(raw_id) if raw_id else None)


def _labels(
    incident: dict[str, Any], state: str, policy: str, condition_name: str
) -> dict[str, str]:
    resource = _mapping(incident.get("resource"))
    resource_labels = _mapping(resource.get("labels"))
    metric = _mapping(incident.get("metric"))
    metadata = _mapping(incident.get("metadata"))
    condition = _mapping(incident.get("condition"))

    # the incident's own fields first, so that none of the prefixed label
    # families below (whose keys come from users) can overwrite them
    labels: dict[str, str] = {}
    _put(labels, "alertname", policy or condition_name)
    _put(labels, "policy_name", policy)
    _put(labels, "condition_name", condition_name)
    _put(labels, "condition_type", _condition_type(condition))
    _put(
        labels,
        "project",
        incident.get("scoping_project_id") or resource_labels.get("project_id"),
    )
    _put(labels, "project_number", incident.get("scoping_project_number"))
    _put(labels, "incident_state", state)
    _put(labels, "resource_type", resource.get("type"))
    _put(labels, "resource_name", incident.get("resource_name"))
    _put(labels, "resource_display_name", incident.get("resource_display_name"))
    _put(labels, "resource_id", incident.get("resource_id"))
    _put(labels, "metric_type", _metric_field(metric.get("type")))

    for key, value in resource_labels.items():
        _put(labels, f"resource_{key}", value)
    for key, value in _mapping(metric.get("labels")).items():
        _put(labels, f"metric_{key}", _metric_field(value))
    for key, value in _mapping(metadata.get("system_labels")).items():
        _put(labels, f"system_{key}", value)
    for key, value in _mapping(metadata.get("user_labels")).items():
        _put(labels, f"user_{key}", value)
    return labels


def _add_policy_labels(labels: dict[str, str], user_labels: Mapping[str, Any]) -> None:
    """Policy user labels as ``policy_<k>`` always, and as a bare ``<k>``
    when no other label already has that name, so that rules written for
    Alertmanager (``team="payments"``) match Cloud Monitoring alike."""
    for key, value in user_labels.items():
        _put(labels, f"policy_{key}", value)
    for key, value in user_labels.items():
        _put(labels, str(key), value)


def _annotations(incident: dict[str, Any]) -> dict[str, str]:
    documentation = incident.get("documentation")
    # the Test button sends the documentation as a plain string
    if isinstance(documentation, str):
        documentation = {"content": documentation}
    documentation = _mapping(documentation)

    annotations: dict[str, str] = {}
    _put(annotations, "summary", incident.get("summary"), sanitise=False)
    _put(annotations, "documentation", documentation.get("content"), sanitise=False)
    _put(
        annotations,
        "documentation_subject",
        documentation.get("subject"),
        sanitise=False,
    )
    _put(annotations, "observed_value", incident.get("observed_value"), sanitise=False)
    _put(
        annotations, "threshold_value", incident.get("threshold_value"), sanitise=False
    )
    _put(
        annotations,
        "condition",
        _condition_query(_mapping(incident.get("condition"))),
        sanitise=False,
    )
    return annotations


def _links(incident: dict[str, Any]) -> dict[str, str]:
    links: dict[str, str] = {}
    url = _text(incident.get("url"))
    if url:
        links["console"] = url
    apigee = _text(incident.get("apigee_url"))
    if apigee:
        links["apigee"] = apigee

    documentation = incident.get("documentation")
    raw_links = documentation.get("links") if isinstance(documentation, dict) else None
    for index, item in enumerate(raw_links if isinstance(raw_links, list) else []):
        if not isinstance(item, dict) or not _text(item.get("url")):
            continue
        target = _text(item.get("url"))
        title = _text(item.get("displayName")) or f"link {index + 1}"
        links.setdefault(title, target)
        # the shared templates know one runbook link; a policy's
        # "Runbook" or "Playbook" link is that link
        if _RUNBOOK_NAME.search(title):
            links.setdefault("runbook", target)
    return links


def _severity(incident: dict[str, Any]) -> str | None:
    """The policy's severity in lower case (critical, error, warning), else
    a ``severity`` policy user label, else None ("no severity" included)."""
    level = _text(incident.get("severity")).lower()
    if level in _SEVERITIES:
        return level
    fallback = _text(_mapping(incident.get("policy_user_labels")).get("severity"))
    return fallback.lower() or None


def _condition_type(condition: Mapping[str, Any]) -> str:
    for key, kind in _CONDITION_TYPES.items():
        if key in condition:
            return kind
    return ""


def _condition_query(condition: Mapping[str, Any]) -> str:
    """The filter or query that defines the condition, whatever its kind."""
    for key in _CONDITION_TYPES:
        body = condition.get(key)
        if isinstance(body, dict):
            for field in ("filter", "query"):
                text = _text(body.get(field))
                if text:
                    return text
    return ""


def _epoch(incident: dict[str, Any], field: str) -> datetime | None:
    """Epoch seconds as a UTC datetime; ``null``, ``"null"``, ``""`` and
    ``0`` (the Test button's placeholder) all mean no time."""
    value = incident.get(field)
    if value is None or (isinstance(value, str) and value.strip() in ("", "null")):
        return None
    if isinstance(value, bool):
        raise InputError(
            f"incident.{field}: expected epoch seconds or null; got {value!r}"
        )
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"incident.{field}: expected epoch seconds or null; got {_kind(value)}"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(
            f"incident.{field}: expected epoch seconds or null; got {value!r}"
        )
    if seconds == 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InputError(
            f"incident.{field}: expected epoch seconds within the calendar; "
            f"got {value!r}"
        ) from None


def _required_text(incident: dict[str, Any], field: str) -> str:
    value = incident.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"incident.{field}: expected a non-empty string; got {_kind(value)}"
        )
    text = str(value).strip()
    if not text:
        raise InputError(f"incident.{field}: expected a non-empty string; got ''")
    return text


def _put(
    target: dict[str, str], name: str, value: Any, *, sanitise: bool = True
) -> None:
    """Set ``name`` to the text of ``value`` unless the value is empty, not
    a scalar, or the name is taken already (first writer wins)."""
    if sanitise:
        name = _UNSAFE_NAME.sub("_", name)
    text = _text(value)
    if name and text and name not in target:
        target[name] = text


def _text(value: Any) -> str:
    """Scalars as text; objects, lists and None as nothing."""
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _metric_field(value: Any) -> str:
    text = _text(value)
    return "" if text in _MISSING else text


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _kind(value: Any) -> str:
    """A short description of what arrived, without echoing long values."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return f"a JSON {_json_type(value)}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


__all__ = ["TEST_NOTE", "CloudMonitoringSource", "incident_to_alert"]
