"""Dedup keys and the lifecycle decision for every alert of a notification.

An alert is routed by the rules, then grouped with the other alerts of the
same notification that share its dedup key: one key is one ticket. The key
is a hash of what identifies the problem, namespaced by source:

- ticket per group (Alertmanager's default): the receiver, the group key and
  the rule, so that one group routed by two rules opens two tickets;
- ticket per alert: the alert's identity (fingerprint, alarm ARN, incident
  id);
- a rule's ``dedup_key`` template, when set, replaces both.

The store then decides on each key and enqueues its create in one atomic
step (see :meth:`relay.store.base.Store.observe`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.alert import Alert, Notification
from relay.errors import RelayError
from relay.store.base import Decision, KeyState, Observation, Outcome, Store

if TYPE_CHECKING:
    from relay.render import Renderer
    from relay.rules import Route, Rules

log = logging.getLogger(__name__)


@dataclass
class AlertDecision:
    """What happened to one alert of a notification."""

    alert: str
    status: str
    action: Decision
    rule: str
    key: str | None = None
    ticket_id: str | None = None
    ticket_url: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # every field is a string or None: a shallow read is a copy, and
        # much cheaper than asdict() on the path of every webhook
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Planned:
    """The alerts of one notification that share a dedup key."""

    key: str
    route: Route
    alerts: list[Alert]


def make_key(source: str, material: str) -> str:
    """A store key for ``material``, namespaced by source."""
    digest = hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]
    return f"{source}:{digest}"


def key_material(
    alert: Alert, notification: Notification, route: Route, renderer: Renderer
) -> str:
    """What identifies the problem ``alert`` belongs to, before hashing."""
    if route.dedup_key:
        context = renderer.build_context([alert], notification.to_dict(), {})
        try:
            custom = renderer.render_value(route.dedup_key, context)
        except RelayError as e:
            # a broken key template must not lose the alert: fall back to
            # the source's own identity
            log.warning(
                "dedup.key_template_failed",
                extra={"rule": route.rule, "error": str(e)},
            )
        else:
            if custom:
                return "custom\x00" + custom
            # a key that renders empty (a label the alert lacks) would put
            # every such alert on one ticket forever: use the identity
            log.warning(
                "dedup.key_template_empty",
                extra={"rule": route.rule, "alert": alert.identity},
            )
    if route.ticket_per == "group" and notification.group is not None:
        return f"group\x00{route.rule}\x00{notification.group}"
    return f"alert\x00{alert.identity}"


def plan(
    notification: Notification, rules: Rules, renderer: Renderer
) -> tuple[list[Planned], list[AlertDecision]]:
    """Route every alert and gather them by dedup key. Dropped alerts come
    back as decisions at once; the rest as keys to observe, in the order
    they first appear."""
    planned: dict[str, Planned] = {}
    dropped: list[AlertDecision] = []
    for alert in notification.alerts:
        route = rules.route(alert, notification)
        if route.drop:
            dropped.append(
                AlertDecision(alert.name, alert.status, "dropped", route.rule)
            )
            continue
        material = key_material(alert, notification, route, renderer)
        key = make_key(alert.source, material)
        if key in planned:
            planned[key].alerts.append(alert)
        else:
            planned[key] = Planned(key, route, [alert])
    return list(planned.values()), dropped


def job_payload(
    item: Planned, notification: Notification, now: float
) -> dict[str, Any]:
    """What the delivery worker needs to render and create the ticket."""
    return {
        "key": item.key,
        "source": notification.source,
        # Route holds only strings, numbers, booleans and None: a shallow
        # copy equals asdict() at a fraction of its cost
        "route": dict(vars(item.route)),
        "alerts": [alert.to_dict() for alert in item.alerts],
        "group": notification.to_dict(),
        "observed_at": now,
    }


class RecentKeys:
    """Problems this process saw open lately, to answer an alert storm's
    repeats without asking the store each time.

    A firing sighting of a live key is always a ``duplicate`` whatever else
    happened meanwhile (a resolve inside the reopen window leaves it live
    too), so a key the store has just called open, with its ticket, is
    remembered for ``seconds``, and never past its own expiry. Those repeats
    are answered and counted in the metrics, but not in the key's count, and
    do not extend its life: both catch up at the next sighting the store
    sees. Creates and resolves always go through the store. Safe to share
    between threads.
    """

    def __init__(self, seconds: float, size: int = 10_000) -> None:
        self.seconds = seconds
        self.size = size
        self._known: dict[str, tuple[KeyState, float]] = {}

    def get(self, key: str, now: float) -> KeyState | None:
        found = self._known.get(key)
        if found is None:
            return None
        state, until = found
        if until <= now:
            self._known.pop(key, None)
            return None
        return state

    def remember(self, state: KeyState | None, now: float) -> None:
        if self.seconds <= 0 or state is None:
            return
        if state.state != "open" or not state.ticket_id:
            return
        if len(self._known) >= self.size:
            self._known.clear()  # a bound, not a policy: the store knows all
        self._known[state.key] = (state, min(now + self.seconds, state.expires_at))

    def forget(self, key: str) -> None:
        self._known.pop(key, None)


def decide(
    notification: Notification,
    rules: Rules,
    renderer: Renderer,
    store: Store,
    now: float,
    recent: RecentKeys | None = None,
) -> list[AlertDecision]:
    """Decide on every alert of ``notification``, enqueueing the creates.
    Returns one decision per alert, in the order of the alerts. With
    ``recent``, repeats of a problem known open are answered from memory.

    Raises StoreUnavailable when the store cannot record; nothing is then
    half-decided that a retry of the whole notification would not repeat
    harmlessly, since every observation is idempotent for a live key.
    """
    items, dropped = plan(notification, rules, renderer)
    decided: dict[int, AlertDecision] = {}
    for item in items:
        firing = any(alert.firing for alert in item.alerts)
        grouped = item.route.ticket_per == "group" and notification.group is not None
        if not firing and grouped and notification.truncated > 0:
            # alerts cut by max_alerts may still be firing: never take the
            # group as resolved on a partial view
            for alert in item.alerts:
                decided[id(alert)] = AlertDecision(
                    alert.name,
                    alert.status,
                    "ignored",
                    item.route.rule,
                    key=item.key,
                    reason="group truncated by max_alerts; not taken as resolved",
                )
            continue

        known = recent.get(item.key, now) if recent is not None and firing else None
        if known is not None:
            outcome = Outcome("duplicate", known)
        else:
            observation = Observation(
                key=item.key,
                firing=firing,
                rule=item.route.rule,
                severity=item.route.severity,
                dedup_window=item.route.dedup_window,
                reopen_window=item.route.reopen_window,
                job=job_payload(item, notification, now),
            )
            outcome = store.observe(observation, now)
            if recent is not None:
                if firing:
                    recent.remember(outcome.state, now)
                else:
                    recent.forget(item.key)
        state = outcome.state
        # one info event per state change; a duplicate or an ignored
        # resolve changes nothing an operator follows, and an alert storm
        # would otherwise flood the log
        level = (
            logging.INFO
            if outcome.decision in ("queued", "resolved")
            else logging.DEBUG
        )
        log.log(
            level,
            "alert.decided",
            extra={
                "source": notification.source,
                "decision": outcome.decision,
                "key": item.key,
                "rule": item.route.rule,
                "alerts": len(item.alerts),
                "ticket_id": state.ticket_id if state else None,
            },
        )
        for alert in item.alerts:
            decided[id(alert)] = AlertDecision(
                alert.name,
                alert.status,
                outcome.decision,
                item.route.rule,
                key=item.key,
                ticket_id=state.ticket_id if state else None,
                ticket_url=state.ticket_url if state else None,
            )

    # one decision per alert in the order the sender listed them (dropped
    # ones in their place too), so that the answer lines up with the alerts
    rest = iter(dropped)
    return [decided.get(id(alert)) or next(rest) for alert in notification.alerts]
