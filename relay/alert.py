"""The normalised alert: what every source turns its payload into.

Rules, templates and dedup only ever look at these values, never at a
source's own JSON, so that one rule language serves every source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["firing", "resolved"]
SourceName = Literal["alertmanager", "cloudwatch", "cloud-monitoring"]
SOURCES: tuple[SourceName, ...] = ("alertmanager", "cloudwatch", "cloud-monitoring")


@dataclass
class Alert:
    """One alert from one source, in the relay's own terms.

    ``identity`` is stable for the life of one problem (an Alertmanager
    fingerprint, a CloudWatch alarm ARN, a Cloud Monitoring incident id) and
    is what per-alert dedup keys on. ``labels`` are strings only; sources
    flatten their own fields into them so that rules can match on them.
    ``raw`` is the source's JSON for this alert, for templates that need it.
    """

    source: SourceName
    status: Status
    identity: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    links: dict[str, str] = field(default_factory=dict)
    severity_hint: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, used for queued jobs and for templates."""
        return {
            "source": self.source,
            "status": self.status,
            "identity": self.identity,
            "name": self.name,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": _iso(self.starts_at),
            "ends_at": _iso(self.ends_at),
            "links": dict(self.links),
            "severity_hint": self.severity_hint,
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(
            source=data["source"],
            status=data["status"],
            identity=data["identity"],
            name=data["name"],
            labels=dict(data.get("labels") or {}),
            annotations=dict(data.get("annotations") or {}),
            starts_at=_parse_iso(data.get("starts_at")),
            ends_at=_parse_iso(data.get("ends_at")),
            links=dict(data.get("links") or {}),
            severity_hint=data.get("severity_hint"),
            raw=dict(data.get("raw") or {}),
        )


@dataclass
class Notification:
    """One inbound webhook call, parsed.

    ``alerts`` is empty when the call carries no alert (a subscription
    handshake, a test button); ``note`` then says what it was, for the answer
    and the log. ``group`` identifies the sender's group of alerts (an
    Alertmanager receiver and group key) when the source has groups.
    ``message_id`` is the sender's id for this delivery when it reuses it on
    retries (SNS): a repeated id is acknowledged without effect.
    ``truncated`` counts alerts the sender left out (Alertmanager's
    ``max_alerts``), so a missing alert is never taken as resolved.
    """

    source: SourceName
    alerts: list[Alert] = field(default_factory=list)
    group: str | None = None
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    common_annotations: dict[str, str] = field(default_factory=dict)
    external_url: str = ""
    receiver: str = ""
    truncated: int = 0
    message_id: str | None = None
    note: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form without the alerts (they travel separately)."""
        return {
            "source": self.source,
            "group": self.group,
            "group_labels": dict(self.group_labels),
            "common_labels": dict(self.common_labels),
            "common_annotations": dict(self.common_annotations),
            "external_url": self.external_url,
            "receiver": self.receiver,
            "truncated": self.truncated,
            "message_id": self.message_id,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_iso(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
