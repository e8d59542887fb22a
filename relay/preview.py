"""``relay preview``: what the relay would do with a payload, with no side
effects: the normalised alerts, the rule that matched (and why the ones
before it did not), the dedup key and the rendered ticket. Nothing is
stored, fetched or sent."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from relay.alert import Alert, Notification
from relay.app import templates_dir
from relay.config import Config
from relay.dedup import Planned, job_payload, plan
from relay.delivery import render_payload
from relay.render import Renderer
from relay.rules import Rules
from relay.sources.base import Inbound, Source


def preview_source(config: Config, name: str) -> Source:
    """The source ``name``, built so that parsing has no side effect."""
    if name == "alertmanager":
        from relay.sources.alertmanager import AlertmanagerSource

        return AlertmanagerSource(config)
    if name == "cloudwatch":
        from relay.sources.cloudwatch import CloudWatchSource

        return CloudWatchSource.for_preview(config)
    if name == "cloud-monitoring":
        from relay.sources.cloud_monitoring import CloudMonitoringSource

        return CloudMonitoringSource(config)
    raise ValueError(
        f"source must be alertmanager, cloudwatch or cloud-monitoring; got {name!r}"
    )


def preview(config: Config, source_name: str, file: Path) -> dict[str, Any]:
    """The whole preview as a JSON-safe dict."""
    source = preview_source(config, source_name)
    notification = source.parse(Inbound(body=file.read_bytes()))
    rules = Rules(config, templates_dir(config))
    renderer = rules.renderer

    result: dict[str, Any] = {
        "source": source_name,
        "note": notification.note,
        "group": notification.to_dict(),
        "alerts": [],
        "tickets": [],
    }
    for alert in notification.alerts:
        result["alerts"].append(
            {
                "alert": _alert_view(alert),
                "rules": [
                    {"rule": name, "matched": matched, "reason": reason}
                    for name, matched, reason in rules.explain(alert, notification)
                ],
            }
        )

    items, dropped = plan(notification, rules, renderer)
    for decision in dropped:
        result["tickets"].append({"dropped": decision.alert, "rule": decision.rule})
    for item in items:
        result["tickets"].append(_ticket_view(item, notification, renderer))
    return result


def _alert_view(alert: Alert) -> dict[str, Any]:
    view = alert.to_dict()
    view.pop("raw", None)
    return view


def _ticket_view(
    item: Planned, notification: Notification, renderer: Renderer
) -> dict[str, Any]:
    payload = job_payload(item, notification, time.time())
    fields, rendered = render_payload(renderer, payload)
    firing = any(alert.firing for alert in item.alerts)
    return {
        "dedup_key": item.key,
        "alerts": [alert.name for alert in item.alerts],
        "would": "open a ticket unless one is open for this key"
        if firing
        else "resolve the key",
        "route": asdict(item.route),
        "ticket": {**fields, "subject": rendered.subject, "body": rendered.body},
        "template_fallback": rendered.fallback,
    }


def format_text(result: dict[str, Any]) -> str:
    """A readable report of :func:`preview`."""
    lines: list[str] = [f"source: {result['source']}"]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    if not result["alerts"]:
        lines.append("no alerts in this payload: nothing would be created")
    for number, entry in enumerate(result["alerts"], 1):
        alert = entry["alert"]
        lines += ["", f"alert {number}: {alert['name']} ({alert['status']})"]
        lines.append(f"  identity: {alert['identity']}")
        for name, value in sorted(alert["labels"].items()):
            lines.append(f"  label {name}={json.dumps(value, ensure_ascii=False)}")
        for rule in entry["rules"]:
            mark = "matched" if rule["matched"] else "skipped"
            lines.append(f"  rule {rule['rule']}: {mark}: {rule['reason']}")
    for ticket in result["tickets"]:
        lines.append("")
        if "dropped" in ticket:
            lines.append(f"dropped: {ticket['dropped']} (rule {ticket['rule']})")
            continue
        body = ticket["ticket"]
        lines += [
            f"ticket for key {ticket['dedup_key']}: would {ticket['would']}",
            f"  alerts: {', '.join(ticket['alerts'])}",
            f"  rule: {body['rule']}",
            f"  platform: {body['platform']}  category: {body['category']}"
            f"  severity: {body['severity']}",
            f"  subject: {body['subject']}",
        ]
        if ticket["template_fallback"]:
            lines.append("  (a template failed; the default template was used)")
        lines.append("  body:")
        lines += [f"    {line}" for line in body["body"].splitlines()]
    return "\n".join(lines) + "\n"
