"""Dedup keys and the lifecycle decision, through a real store.

Notifications are parsed by the real Alertmanager source and decided
against a real SQLite file and a real Redis (under the test's own prefix),
with the time passed in, so that windows are crossed without waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.alert import Notification
from relay.app import Relay
from relay.config import Config
from relay.dedup import AlertDecision, RecentKeys, decide, make_key, plan
from relay.sources.alertmanager import AlertmanagerSource
from relay.store.base import KeyState, Store
from relay.store.sqlite import SQLiteStore

T0 = 1_714_564_800.0
HOUR = 3600.0


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store for tests that derive keys only."""
    opened = SQLiteStore(str(tmp_path / "keys.db"))
    yield opened
    opened.close()


def make_relay(store: Store, **config: Any) -> Relay:
    """The relay's parts for a configuration given as a dict (an API key is
    added) over ``store``."""
    data: dict[str, Any] = {"doit": {"api_key": "test-key"}, **config}
    return Relay.build(Config.model_validate(data), store)


def am_alert(
    name: str = "DiskFull",
    *,
    status: str = "firing",
    fingerprint: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    """One alert of an Alertmanager notification."""
    alert: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} is {status}"},
        "startsAt": "2024-05-01T12:00:00Z",
        "endsAt": (
            "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T13:00:00Z"
        ),
    }
    if fingerprint is not None:
        alert["fingerprint"] = fingerprint
    return alert


def notification(
    *alerts: dict[str, Any],
    receiver: str = "team-a",
    group_key: str = '{}:{alertname="DiskFull"}',
    truncated: int = 0,
) -> Notification:
    """An Alertmanager notification, parsed by the real source."""
    payload = {
        "version": "4",
        "receiver": receiver,
        "groupKey": group_key,
        "status": "firing",
        "truncatedAlerts": truncated,
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }
    return AlertmanagerSource(Config()).parse_payload(payload)


def keys_of(relay: Relay, note: Notification) -> list[str]:
    """The dedup key of every kept alert, in the order of the alerts."""
    items, _ = plan(note, relay.rules, relay.renderer)
    by_alert = {id(alert): item.key for item in items for alert in item.alerts}
    return [by_alert[id(alert)] for alert in note.alerts if id(alert) in by_alert]


def actions(decisions: list[AlertDecision]) -> list[str]:
    return [d.action for d in decisions]


# -- keys ------------------------------------------------------------------


def test_a_group_has_one_key_per_receiver_and_group_key(sqlite_store: Store) -> None:
    relay = make_relay(sqlite_store)
    first = keys_of(relay, notification(am_alert(host="a"), am_alert(host="b")))
    assert len(set(first)) == 1

    other_group = keys_of(relay, notification(am_alert(), group_key='{}:{x="y"}'))
    other_receiver = keys_of(relay, notification(am_alert(), receiver="team-b"))
    assert len({first[0], other_group[0], other_receiver[0]}) == 3


def test_a_group_routed_by_two_rules_gets_one_key_per_rule(sqlite_store: Store) -> None:
    relay = make_relay(
        sqlite_store,
        rules=[{"name": "databases", "match": {"matchers": ['team="db"']}}],
    )
    note = notification(am_alert(team="db"), am_alert(team="web"), am_alert(team="db"))

    keys = keys_of(relay, note)

    assert keys[0] == keys[2]
    assert keys[0] != keys[1]
    items, _ = plan(note, relay.rules, relay.renderer)
    assert sorted(item.route.rule for item in items) == ["databases", "default"]


def test_ticket_per_alert_keys_on_the_fingerprint_across_groups(
    sqlite_store: Store,
) -> None:
    relay = make_relay(sqlite_store, sources={"alertmanager": {"ticket_per": "alert"}})
    first = keys_of(
        relay,
        notification(am_alert(fingerprint="aaaa"), am_alert(fingerprint="bbbb")),
    )
    elsewhere = keys_of(
        relay, notification(am_alert(fingerprint="aaaa"), receiver="other")
    )

    assert first[0] != first[1]
    assert elsewhere == [first[0]]


def test_a_rule_dedup_key_template_replaces_the_identity(sqlite_store: Store) -> None:
    relay = make_relay(
        sqlite_store,
        rules=[
            {
                "name": "by-cluster",
                "match": {"source": "alertmanager"},
                "ticket": {"dedup_key": "{{ alert.labels.cluster }}"},
            }
        ],
    )
    keys = keys_of(
        relay,
        notification(
            am_alert(cluster="prod", fingerprint="1"),
            am_alert(cluster="staging", fingerprint="2"),
        ),
    )
    again = keys_of(
        relay,
        notification(am_alert("Other", cluster="prod"), receiver="someone-else"),
    )

    assert keys[0] != keys[1]
    assert again == [keys[0]]


@pytest.mark.parametrize("ticket_per", ["alert", "group"])
@pytest.mark.parametrize(
    ("template", "event"),
    [
        # calling an undefined value fails while rendering
        pytest.param(
            "{{ alert.raw.nothing() }}", "dedup.key_template_failed", id="fails"
        ),
        # a label the alert lacks renders empty: not a key either
        pytest.param(
            "{{ alert.labels.cluster }}", "dedup.key_template_empty", id="empty"
        ),
    ],
)
def test_a_broken_key_template_falls_back_to_the_identity(
    ticket_per: str,
    template: str,
    event: str,
    sqlite_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def rules(dedup_key: str | None) -> list[dict[str, Any]]:
        ticket = {"dedup_key": dedup_key} if dedup_key else {}
        return [{"name": "r", "match": {"source": "alertmanager"}, "ticket": ticket}]

    section = {"alertmanager": {"ticket_per": ticket_per}}
    broken = make_relay(sqlite_store, sources=section, rules=rules(template))
    plain = make_relay(sqlite_store, sources=section, rules=rules(None))
    note = notification(
        am_alert(fingerprint="1111"), am_alert(fingerprint="2222"), receiver="x"
    )

    with caplog.at_level(logging.WARNING, logger="relay.dedup"):
        keys = keys_of(broken, note)

    assert keys == keys_of(plain, note)
    # the alerts of the notification do not collapse onto one shared key
    assert len(set(keys)) == (2 if ticket_per == "alert" else 1)
    assert event in [record.getMessage() for record in caplog.records]
    other_group = notification(am_alert(fingerprint="3333"), receiver="y")
    assert keys_of(broken, other_group)[0] not in keys


def test_keys_are_namespaced_by_source() -> None:
    key = make_key("alertmanager", "same material")

    assert key.startswith("alertmanager:")
    assert key != make_key("cloudwatch", "same material")
    assert key == make_key("alertmanager", "same material")


# -- plan --------------------------------------------------------------------


def test_plan_groups_alerts_by_key_and_reports_drops(sqlite_store: Store) -> None:
    relay = make_relay(
        sqlite_store,
        sources={"alertmanager": {"ticket_per": "alert"}},
        rules=[
            {
                "name": "heartbeats",
                "match": {"matchers": ['alertname="Watchdog"']},
                "drop": True,
            }
        ],
    )
    note = notification(
        am_alert(fingerprint="a"),
        am_alert("Watchdog", fingerprint="w"),
        am_alert(fingerprint="b"),
        am_alert(fingerprint="a", host="same-fingerprint-again"),
    )

    items, dropped = plan(note, relay.rules, relay.renderer)

    assert [len(item.alerts) for item in items] == [2, 1]
    assert [a.identity for a in items[0].alerts] == ["a", "a"]
    assert [(d.alert, d.action, d.rule) for d in dropped] == [
        ("Watchdog", "dropped", "heartbeats")
    ]


# -- decide ------------------------------------------------------------------


def test_a_first_firing_is_queued_with_its_job(store: Store) -> None:
    relay = make_relay(store, defaults={"category": "databases"})

    decisions = decide(
        notification(am_alert(host="a"), am_alert(host="b")),
        relay.rules,
        relay.renderer,
        store,
        T0,
    )

    assert actions(decisions) == ["queued", "queued"]
    key = decisions[0].key
    assert key is not None
    state = store.get(key, T0)
    assert state is not None
    assert (state.state, state.count, state.rule) == ("pending", 1, "default")
    [job] = store.jobs("pending")
    assert job.key == key
    assert job.payload["route"]["category"] == "databases"
    assert len(job.payload["alerts"]) == 2


def test_identical_notifications_queue_one_ticket(store: Store) -> None:
    """An HA pair sends every notification twice, and Alertmanager repeats
    it every repeat_interval: one ticket all the same."""
    relay = make_relay(store)
    note = notification(am_alert(host="a"))

    decided = [
        decide(note, relay.rules, relay.renderer, store, T0 + i)[0] for i in range(10)
    ]

    assert actions(decided) == ["queued"] + ["duplicate"] * 9
    state = store.get(decided[0].key or "", T0 + 10)
    assert state is not None and state.count == 10
    assert store.stats(T0 + 10).pending == 1


def test_a_resolve_resolves_and_an_unknown_resolve_is_ignored(store: Store) -> None:
    relay = make_relay(store)
    firing = notification(am_alert(host="a"))
    resolved = notification(am_alert(host="a", status="resolved"))
    stranger = notification(am_alert(status="resolved"), receiver="never-fired")

    decide(firing, relay.rules, relay.renderer, store, T0)
    [done] = decide(resolved, relay.rules, relay.renderer, store, T0 + 60)
    [unknown] = decide(stranger, relay.rules, relay.renderer, store, T0 + 60)
    [again] = decide(resolved, relay.rules, relay.renderer, store, T0 + 61)

    assert done.action == "resolved"
    state = store.get(done.key or "", T0 + 60)
    assert state is not None and state.state == "resolved"
    assert unknown.action == "ignored"
    assert again.action == "ignored"
    assert store.stats(T0 + 61).pending == 1  # only the first firing's job


def test_a_truncated_group_without_firing_alerts_is_never_resolved(
    store: Store,
) -> None:
    relay = make_relay(store)
    decide(notification(am_alert(host="a")), relay.rules, relay.renderer, store, T0)
    partial = notification(am_alert(host="a", status="resolved"), truncated=7)

    [decision] = decide(partial, relay.rules, relay.renderer, store, T0 + 60)

    assert decision.action == "ignored"
    assert decision.reason is not None and "truncated" in decision.reason
    state = store.get(decision.key or "", T0 + 60)
    assert state is not None and state.state == "pending"

    complete = notification(am_alert(host="a", status="resolved"))
    [final] = decide(complete, relay.rules, relay.renderer, store, T0 + 120)
    assert final.action == "resolved"


def test_a_truncated_group_with_a_firing_alert_counts_as_firing(
    store: Store,
) -> None:
    relay = make_relay(store)
    decide(notification(am_alert(host="a")), relay.rules, relay.renderer, store, T0)
    partial = notification(
        am_alert(host="a", status="resolved"), am_alert(host="b"), truncated=3
    )

    decisions = decide(partial, relay.rules, relay.renderer, store, T0 + 60)

    assert actions(decisions) == ["duplicate", "duplicate"]


def test_a_refire_inside_the_reopen_window_is_a_duplicate_and_after_it_queued(
    store: Store,
) -> None:
    relay = make_relay(store, defaults={"reopen_window": "1h"})
    firing = notification(am_alert(host="a"))
    resolved = notification(am_alert(host="a", status="resolved"))

    [first] = decide(firing, relay.rules, relay.renderer, store, T0)
    store.attach_ticket(first.key or "", "4711", "https://tickets.example/4711")
    decide(resolved, relay.rules, relay.renderer, store, T0 + 10)
    [back] = decide(firing, relay.rules, relay.renderer, store, T0 + 10 + HOUR - 1)

    # the same problem is back: its ticket is still the place for it
    assert back.action == "duplicate"
    assert back.ticket_id == "4711"
    state = store.get(first.key or "", T0 + 10 + HOUR)
    assert state is not None and state.state == "open"

    resolved_at = T0 + 2 * HOUR
    decide(resolved, relay.rules, relay.renderer, store, resolved_at)
    [later] = decide(firing, relay.rules, relay.renderer, store, resolved_at + HOUR + 1)

    assert later.action == "queued"
    assert later.ticket_id is None
    assert store.stats(resolved_at + HOUR + 1).pending == 2


def test_a_dropped_alert_touches_no_key(store: Store) -> None:
    relay = make_relay(
        store,
        rules=[
            {
                "name": "heartbeats",
                "match": {"matchers": ['alertname="Watchdog"']},
                "drop": True,
            }
        ],
    )

    decisions = decide(
        notification(am_alert("Watchdog")), relay.rules, relay.renderer, store, T0
    )

    assert [(d.action, d.rule, d.key) for d in decisions] == [
        ("dropped", "heartbeats", None)
    ]
    assert store.stats(T0).pending == 0


def test_decisions_follow_the_order_of_the_alerts(store: Store) -> None:
    relay = make_relay(
        store,
        sources={"alertmanager": {"ticket_per": "alert"}},
        rules=[
            {
                "name": "heartbeats",
                "match": {"matchers": ['alertname="Watchdog"']},
                "drop": True,
            }
        ],
    )
    note = notification(
        am_alert("First", fingerprint="1"),
        am_alert("Watchdog", fingerprint="w"),
        am_alert("Second", fingerprint="2"),
        am_alert("First", fingerprint="1"),
    )

    decisions = decide(note, relay.rules, relay.renderer, store, T0)

    assert [(d.alert, d.action) for d in decisions] == [
        ("First", "queued"),
        ("Watchdog", "dropped"),
        ("Second", "queued"),
        ("First", "queued"),
    ]


def test_concurrent_deciders_queue_exactly_one(store: Store) -> None:
    """Many threads (replicas, HA senders) deciding the same notification
    at the same moment: the store's atomic step lets one of them queue."""
    relay = make_relay(store)
    note = notification(am_alert(host="a"), am_alert(host="b"))
    threads = 12
    start = threading.Barrier(threads)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def decide_once() -> None:
        try:
            start.wait(timeout=30)
            [decision, _] = decide(note, relay.rules, relay.renderer, store, T0)
        except BaseException as e:  # collected and raised in the test
            with lock:
                errors.append(e)
            return
        with lock:
            results.append(decision.action)

    workers = [threading.Thread(target=decide_once) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not errors, errors
    assert sorted(results) == ["duplicate"] * (threads - 1) + ["queued"]
    assert store.stats(T0).pending == 1


# -- answering repeats from memory ------------------------------------------


class CountingStore:
    """Counts the observations that reach a real store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.observed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def observe(self, obs: Any, now: float) -> Any:
        self.observed += 1
        return self.store.observe(obs, now)


def test_repeats_of_an_open_problem_are_answered_from_memory(store: Store) -> None:
    relay = make_relay(store)
    counting = CountingStore(store)
    recent = RecentKeys(1.0)
    firing = notification(am_alert(host="a"))
    resolved = notification(am_alert(host="a", status="resolved"))

    def once(note: Notification, now: float) -> AlertDecision:
        [decision] = decide(
            note,
            relay.rules,
            relay.renderer,
            counting,
            now,
            recent,  # type: ignore[arg-type]
        )
        return decision

    queued = once(firing, T0)
    assert once(firing, T0 + 0.1).action == "duplicate"  # pending: not remembered
    assert counting.observed == 2

    store.attach_ticket(queued.key or "", "42", "https://console.example/42")
    assert once(firing, T0 + 0.2).ticket_id == "42"  # the store says open
    storm = [once(firing, T0 + 0.3 + i / 100) for i in range(50)]
    assert {d.action for d in storm} == {"duplicate"}
    assert {d.ticket_id for d in storm} == {"42"}
    assert counting.observed == 3  # the storm never reached the store

    # the memory is short: the store sees a sighting again after it
    assert once(firing, T0 + 1.5).action == "duplicate"
    assert counting.observed == 4

    # a resolve always reaches the store and clears the memory
    assert once(resolved, T0 + 1.6).action == "resolved"
    assert once(firing, T0 + 1.7).action == "duplicate"  # inside reopen window
    assert counting.observed == 6


def test_memory_never_outlives_the_key() -> None:
    recent = RecentKeys(60.0)
    open_state = KeyState(
        key="k",
        state="open",
        first_seen=T0,
        last_seen=T0,
        expires_at=T0 + 5,
        ticket_id="1",
    )
    recent.remember(open_state, T0)
    assert recent.get("k", T0 + 4.9) is open_state
    assert recent.get("k", T0 + 5) is None

    pending = KeyState(
        key="p", state="pending", first_seen=T0, last_seen=T0, expires_at=T0 + 99
    )
    recent.remember(pending, T0)
    assert recent.get("p", T0) is None
    assert RecentKeys(0).get("k", T0) is None
