"""Prometheus Alertmanager webhook (``webhook_configs``, payload version 4).

Also accepted: the version 3 shape of old Alertmanagers (a numeric
``groupKey``) and Grafana's Alertmanager (version 1: the same shape plus
fields of its own, some of which become links). Unknown fields are ignored
everywhere, so that newer Alertmanagers keep working.

One POST carries every alert of one aggregation group, firing and resolved
alike; each alert's own ``status`` says which it is, never the top-level one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from relay.alert import Alert, Notification, Status
from relay.config import Config
from relay.errors import InputError
from relay.sources.auth import check_inbound
from relay.sources.base import Inbound, Source, parse_json_object
from relay.timeparse import describe_value, parse_rfc3339

log = logging.getLogger(__name__)

UNNAMED = "unnamed alert"
KNOWN_VERSIONS = ("4", "3", "1")

# Alertmanager passes the receiver name through Go's regexp.QuoteMeta, which
# puts a backslash before each of these characters
_QUOTED_META = re.compile(r"\\([\\.+*?()|\[\]{}^$])")

# Prometheus' label-set fingerprint: 64-bit FNV-1a over the sorted names and
# values, each followed by a 0xff byte (a byte that never occurs in UTF-8)
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_FNV_MASK = 0xFFFFFFFFFFFFFFFF
_SEPARATOR = b"\xff"

# Grafana's per-alert links, by the relay's link name
_GRAFANA_LINKS = {
    "silence": "silenceURL",
    "dashboard": "dashboardURL",
    "panel": "panelURL",
}


def unquote_meta(text: str) -> str:
    """Undo Go's ``regexp.QuoteMeta``: ``web\\.hook`` becomes ``web.hook``.

    A name that was never escaped comes back unchanged, so a receiver reads
    the same whether or not the sender escaped it.
    """
    return _QUOTED_META.sub(r"\1", text)


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """The fingerprint Alertmanager itself gives a label set, as 16 hex digits.

    Old senders leave ``fingerprint`` out; computing the same value keeps an
    alert's identity unchanged when such a sender is upgraded.
    """
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for chunk in (name.encode(), _SEPARATOR, labels[name].encode(), _SEPARATOR):
            for byte in chunk:
                digest = ((digest ^ byte) * _FNV_PRIME) & _FNV_MASK
    return f"{digest:016x}"


class AlertmanagerSource(Source):
    """Authenticates and parses Alertmanager webhook notifications.

    Each alert becomes an :class:`~relay.alert.Alert` whose identity is its
    ``fingerprint`` (computed from the labels as Alertmanager does when a
    sender omits it). The notification's ``group`` is the unescaped receiver
    and the ``groupKey`` joined by a NUL, which identifies one aggregation
    group for per-group tickets.

    ``clock`` returns the current time; it decides the status of alerts
    from old senders that leave ``status`` out (see :meth:`parse`).
    """

    name = "alertmanager"

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._auth = config.sources.alertmanager.auth
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def auth_enabled(self) -> bool:
        """Whether a bearer token or basic credentials are configured."""
        return self._auth.enabled

    def authenticate(self, request: Inbound) -> None:
        """Check the bearer token or basic credentials set in the sender's
        ``http_config``; raises AuthError (401) when they do not match."""
        check_inbound(self._auth, request)

    def parse(self, request: Inbound) -> Notification:
        """Parse one webhook body, whatever its content type.

        An alert without ``status`` (old senders) is taken as resolved when
        its ``endsAt`` lies in the past, and as firing when ``endsAt`` is
        missing, Go's zero time or in the future: before resolving an alert,
        Alertmanager always stamps ``endsAt`` with the time it ended.

        Raises InputError, naming the field, for a body that is not an
        Alertmanager notification.
        """
        payload = parse_json_object(request.body, "Alertmanager notification")
        return self.parse_payload(payload)

    def parse_payload(self, payload: dict[str, Any]) -> Notification:
        """Like :meth:`parse`, for a payload already decoded from JSON."""
        alerts_raw = payload.get("alerts")
        if not isinstance(alerts_raw, list):
            raise InputError(
                "alerts: expected a list of alerts (is this an Alertmanager "
                f"webhook notification?); got {_found(payload, 'alerts')}"
            )

        version = _version(payload)
        receiver = unquote_meta(_string(payload, "receiver", ""))
        group_key = _group_key(payload)
        external_url = _string(payload, "externalURL", "")
        now = self._clock()
        alerts = [
            self._alert(item, f"alerts[{index}]", external_url, now)
            for index, item in enumerate(alerts_raw)
        ]
        if version and version not in KNOWN_VERSIONS:
            # the shape matched, so the alerts are taken; the version is only
            # worth a note in case a future format changes meaning
            log.warning(
                "alertmanager.unknown_version",
                extra={"version": version, "receiver": receiver},
            )

        notification = Notification(
            source="alertmanager",
            alerts=alerts,
            group=f"{receiver}\x00{group_key}",
            group_labels=_string_map(payload, "groupLabels", ""),
            common_labels=_string_map(payload, "commonLabels", ""),
            common_annotations=_string_map(payload, "commonAnnotations", ""),
            external_url=external_url,
            receiver=receiver,
            truncated=_truncated(payload),
            note=None if alerts else "notification without alerts",
            raw=payload,
        )
        log.debug(
            "alertmanager.parsed",
            extra={
                "receiver": receiver,
                "group_key": group_key,
                "alerts": len(alerts),
                "firing": sum(alert.firing for alert in alerts),
                "truncated": notification.truncated,
            },
        )
        return notification

    def _alert(self, item: Any, where: str, external_url: str, now: datetime) -> Alert:
        """One element of ``alerts``; ``where`` names it in error messages."""
        if not isinstance(item, dict):
            raise InputError(
                f"{where}: expected an alert object; got {describe_value(item)}"
            )
        if "labels" not in item:
            raise InputError(
                f"{where}.labels: expected the alert's labels; got nothing"
            )
        labels = _string_map(item, "labels", where)
        annotations = _string_map(item, "annotations", where)
        starts_at = _time(item, "startsAt", where)
        ends_at = _time(item, "endsAt", where)
        status = _status(item, where, ends_at, now)
        if status == "firing":
            # Alertmanager before 0.15.3 sent a future endsAt on firing alerts:
            # a guess at when they would end, not an end
            ends_at = None

        fingerprint = _string(item, "fingerprint", "", where)
        links = _links(item, annotations, external_url, where)
        return Alert(
            source="alertmanager",
            status=status,
            identity=fingerprint or label_fingerprint(labels),
            name=labels.get("alertname") or UNNAMED,
            labels=labels,
            annotations=annotations,
            starts_at=starts_at,
            ends_at=ends_at,
            links=links,
            severity_hint=labels.get("severity") or None,
            raw=item,
        )


def _version(payload: Mapping[str, Any]) -> str:
    value = payload.get("version")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"version: expected a string; got {describe_value(value)}")
    return str(value)


def _group_key(payload: Mapping[str, Any]) -> str:
    """The group key as a string: version 3 sent a number (a hash)."""
    value = payload.get("groupKey")
    if value is None:
        # proxies that drop it: the group labels are the next best identity
        # of the group, and sorting makes them stable between deliveries
        labels = _string_map(payload, "groupLabels", "")
        pairs = ", ".join(f"{name}={labels[name]!r}" for name in sorted(labels))
        return "{" + pairs + "}"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(
            f"groupKey: expected a string (or a number from version 3); "
            f"got {describe_value(value)}"
        )
    return str(value)


def _truncated(payload: Mapping[str, Any]) -> int:
    """``truncatedAlerts``: missing from senders older than Alertmanager 0.21."""
    value = payload.get("truncatedAlerts")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(
            "truncatedAlerts: expected a count of zero or more; "
            f"got {describe_value(value)}"
        )
    return value


def _status(
    item: Mapping[str, Any], where: str, ends_at: datetime | None, now: datetime
) -> Status:
    value = item.get("status")
    if value is None:
        return "resolved" if ends_at is not None and ends_at <= now else "firing"
    if isinstance(value, str) and value.strip().lower() in ("firing", "resolved"):
        return "firing" if value.strip().lower() == "firing" else "resolved"
    raise InputError(
        f"{where}.status: expected 'firing' or 'resolved'; got {describe_value(value)}"
    )


def _time(item: Mapping[str, Any], key: str, where: str) -> datetime | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as e:
        raise InputError(f"{_field(where, key)}: {e}") from None


def _links(
    item: Mapping[str, Any],
    annotations: Mapping[str, str],
    external_url: str,
    where: str,
) -> dict[str, str]:
    links: dict[str, str] = {}
    # kept exactly as sent: a relative "/graph?..." means the sender's
    # Prometheus has no external URL, which only its operator can fix
    generator = _string(item, "generatorURL", "", where)
    if generator:
        links["generator"] = generator
    runbook = annotations.get("runbook_url") or annotations.get("runbook")
    if runbook:
        links["runbook"] = runbook
    for name, key in _GRAFANA_LINKS.items():
        value = _string(item, key, "", where)
        if value:
            links[name] = value
    if external_url:
        links["console"] = external_url
    return links


def _string(data: Mapping[str, Any], key: str, default: str, where: str = "") -> str:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError(
            f"{_field(where, key)}: expected a string; got {describe_value(value)}"
        )
    return value


def _string_map(data: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    """A label or annotation map; ``null`` (sent by some proxies) is empty."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(
            f"{_field(where, key)}: expected an object of names to strings; "
            f"got {describe_value(value)}"
        )
    return {str(name): _as_text(item) for name, item in value.items()}


def _as_text(value: Any) -> str:
    """Label values are strings in Alertmanager; hand-written senders put
    numbers and booleans there too, which read best as JSON spells them."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _found(data: Mapping[str, Any], key: str) -> str:
    return describe_value(data[key]) if key in data else "nothing"
