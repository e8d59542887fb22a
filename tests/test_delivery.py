"""Delivery against the DoiT API emulator over real HTTP, on real stores.

Time is a fake clock handed to the worker (the store takes times as
arguments), so that backoffs, leases, maximum ages and the per-minute API
budget are crossed without waiting. The clock starts at the real time
because the emulator stamps tickets with it, and reconciliation lists
tickets by creation time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from relay.app import Relay
from relay.config import Config
from relay.dedup import AlertDecision, decide
from relay.delivery import Delivery, WorkerPool, make_client
from relay.doit import DoitClient, RetryableError, Ticket, TicketRequest
from relay.emulator import EmulatorServer
from relay.errors import StoreUnavailable
from relay.sources.alertmanager import AlertmanagerSource
from relay.store.base import Job, Store
from tests.servers import free_port, wait_until

CATEGORY = "databases__amazon_rds"


class FakeClock:
    """A clock that moves only when told to; its sleep moves it."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def clients() -> Iterator[list[DoitClient]]:
    """Clients made by a test, closed afterwards."""
    made: list[DoitClient] = []
    yield made
    for client in made:
        client.close()


def make_relay(store: Store, emulator: EmulatorServer, **overrides: Any) -> Relay:
    """The relay's parts pointed at the emulator; ``overrides`` replace
    fields of the configuration's sections."""
    data: dict[str, Any] = {
        "doit": {"api_url": emulator.url, "api_key": "test-key"},
        "defaults": {"category": CATEGORY},
        "rules": [
            {
                "name": "databases",
                "match": {"source": "alertmanager"},
                "ticket": {"platform": "aws", "severity": "high"},
            }
        ],
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return Relay.build(Config.model_validate(data), store)


def worker(
    relay: Relay,
    clock: FakeClock,
    clients: list[DoitClient],
    consumer: str = "worker-1",
) -> Delivery:
    """A Delivery as the server builds one, on the fake clock."""
    client = make_client(relay)
    if client is not None:
        clients.append(client)
    return Delivery(relay, client, consumer=consumer, clock=clock, sleep=clock.sleep)


def fire(relay: Relay, now: float, name: str = "DiskFull") -> AlertDecision:
    """Decide one firing alert, alone in its group; returns its decision."""
    payload = {
        "version": "4",
        "receiver": "team-db",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "status": "firing",
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "instance": "db-1"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name, "instance": "db-1"},
                "annotations": {"summary": f"{name} on db-1"},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
            }
        ],
    }
    note = AlertmanagerSource(relay.config).parse_payload(payload)
    [decision] = decide(note, relay.rules, relay.renderer, relay.store, now)
    assert decision.action == "queued"
    return decision


def settle(
    delivery: Delivery, clock: FakeClock, store: Store, rounds: int = 50
) -> None:
    """Run every due job, then move the clock to the next scheduled retry,
    until none is left."""
    for _ in range(rounds):
        delivery.drain()
        scheduled = store.jobs("scheduled")
        if not scheduled:
            return
        clock.now = max(clock.now, min(job.next_at for job in scheduled))
    raise AssertionError(f"jobs still scheduled after {rounds} rounds: {scheduled}")


def only_scheduled(store: Store) -> Job:
    [job] = store.jobs("scheduled")
    return job


def subjects(emulator: EmulatorServer) -> list[str]:
    return sorted(ticket["subject"] for ticket in emulator.tickets())


# -- the normal path ---------------------------------------------------------


def test_a_queued_alert_becomes_exactly_one_ticket(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator)
    decision = fire(relay, clock())

    assert worker(relay, clock, clients).drain() == 1

    [ticket] = emulator.tickets()
    assert ticket["subject"] == "[FIRING:1] DiskFull on db-1"
    assert "DiskFull" in ticket["body"]
    assert (ticket["platform"], ticket["category"], ticket["severity"]) == (
        "amazon_web_services",
        CATEGORY,
        "high",
    )
    state = store.get(decision.key or "", clock())
    assert state is not None
    assert (state.state, state.ticket_id, state.ticket_url) == (
        "open",
        str(ticket["id"]),
        ticket["url"],
    )
    assert worker(relay, clock, clients).drain() == 0
    assert emulator.stats()["creates_attempted"] == 1
    assert store.stats(clock()).pending == 0


def test_a_job_whose_key_has_a_ticket_already_is_not_sent_again(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator)
    decision = fire(relay, clock())
    store.attach_ticket(decision.key or "", "77", "https://tickets.example/77")

    assert worker(relay, clock, clients).drain() == 1

    assert emulator.stats()["creates_attempted"] == 0
    assert store.stats(clock()).pending == 0


# -- retries -----------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("retry_after", [None, "30"])
def test_a_busy_api_is_retried_until_every_ticket_exists_once(
    status: int,
    retry_after: str | None,
    store: Store,
    emulator: EmulatorServer,
    clock: FakeClock,
    clients: list[DoitClient],
) -> None:
    relay = make_relay(store, emulator)  # backoff_initial 5 s, jitter 0.5..1
    names = ["DiskFull", "HighLatency", "NodeDown"]
    for name in names:
        fire(relay, clock(), name)
    emulator.fault(status, count=4, retry_after=retry_after)
    delivery = worker(relay, clock, clients)
    started = clock()

    assert delivery.drain() == 3

    scheduled = store.jobs("scheduled")
    assert len(scheduled) == 3
    for job in scheduled:
        assert job.attempts == 1
        assert f"DoiT API answered {status}" in (job.last_error or "")
        if retry_after is None:
            assert started + 2.5 <= job.next_at <= started + 5.0
        else:
            assert job.next_at == pytest.approx(started + 30)

    # the fourth fault meets the first retry, which waits longer
    clock.now = min(job.next_at for job in scheduled)
    delivery.drain()
    again = [job for job in store.jobs("scheduled") if job.attempts == 2]
    assert len(again) == 1
    if retry_after is None:
        assert clock() + 5.0 <= again[0].next_at <= clock() + 10.0
    else:
        assert again[0].next_at == pytest.approx(clock() + 30)

    settle(delivery, clock, store)

    assert subjects(emulator) == sorted(f"[FIRING:1] {n} on db-1" for n in names)
    assert emulator.stats()["creates_attempted"] == 3 + 4
    # an answer that says nothing was created sends no one looking for it
    assert emulator.stats()["lists_attempted"] == 0


def test_a_minute_long_outage_is_ridden_out(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator)
    fire(relay, clock(), "DiskFull")
    fire(relay, clock(), "NodeDown")
    emulator.fault(503, count=10_000)
    delivery = worker(relay, clock, clients)
    outage_ends = clock() + 60

    while clock() < outage_ends:
        delivery.drain()
        clock.now = min(job.next_at for job in store.jobs("scheduled"))

    # retried with a growing backoff, not given up on
    assert [job.attempts >= 3 for job in store.jobs("scheduled")] == [True, True]
    assert emulator.tickets() == []
    emulator.state.reset()  # the API is back

    settle(delivery, clock, store)

    assert subjects(emulator) == [
        "[FIRING:1] DiskFull on db-1",
        "[FIRING:1] NodeDown on db-1",
    ]
    assert store.jobs("dead") == []


@pytest.mark.parametrize("status", [502, 400])
def test_a_refusal_is_dead_lettered_at_once_and_can_be_requeued(
    status: int,
    store: Store,
    emulator: EmulatorServer,
    clock: FakeClock,
    clients: list[DoitClient],
) -> None:
    relay = make_relay(store, emulator)
    fire(relay, clock())
    emulator.fault(status)
    delivery = worker(relay, clock, clients)

    delivery.drain()

    [dead] = store.jobs("dead")
    assert dead.attempts == 1
    assert dead.last_error == f"DoiT API answered {status}: emulated fault: {status}"
    assert store.jobs("scheduled") == []
    assert emulator.tickets() == []

    # the cause is gone: an operator requeues the job
    assert store.requeue_dead(None, clock()) == 1
    delivery.drain()

    assert subjects(emulator) == ["[FIRING:1] DiskFull on db-1"]
    assert store.jobs("dead") == []


def test_the_api_message_of_a_refused_ticket_is_the_last_error(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, defaults={"category": ""})
    fire(relay, clock())

    worker(relay, clock, clients).drain()

    [dead] = store.jobs("dead")
    assert dead.last_error == "DoiT API answered 400: ticket.category must not be empty"


def test_a_job_past_its_max_age_is_dead_lettered(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, delivery={"max_age": "1h"})
    fire(relay, clock())
    emulator.fault(503, count=100)
    delivery = worker(relay, clock, clients)
    delivery.drain()
    assert only_scheduled(store).attempts == 1

    clock.advance(3600)
    delivery.drain()

    [dead] = store.jobs("dead")
    assert "DoiT API answered 503" in (dead.last_error or "")
    assert store.jobs("scheduled") == []


# -- unknown outcomes ----------------------------------------------------------


def test_an_ambiguous_create_is_reconciled_not_repeated(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator)
    decision = fire(relay, clock())
    # a gateway gives up after the API created the ticket
    emulator.fault(504, create=True)
    delivery = worker(relay, clock, clients)
    attempted_at = clock()

    delivery.drain()

    job = only_scheduled(store)
    assert job.payload["ambiguous_since"] == attempted_at
    assert job.next_at >= attempted_at + 5
    assert len(emulator.tickets()) == 1

    settle(delivery, clock, store)

    [ticket] = emulator.tickets()
    state = store.get(decision.key or "", clock())
    assert state is not None and state.ticket_id == str(ticket["id"])
    assert emulator.stats()["creates_attempted"] == 1
    assert emulator.stats()["lists_attempted"] >= 1


def test_an_ambiguous_create_that_created_nothing_is_created_once(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator)
    fire(relay, clock())
    emulator.fault(504)
    delivery = worker(relay, clock, clients)

    settle(delivery, clock, store)

    assert subjects(emulator) == ["[FIRING:1] DiskFull on db-1"]
    assert emulator.stats()["creates_attempted"] == 2


def test_a_slow_answer_past_the_read_timeout_is_adopted(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, doit={"read_timeout": "0.3s"})
    decision = fire(relay, clock())
    # the ticket is created, and the answer comes too late
    emulator.fault(delay=1.0)
    delivery = worker(relay, clock, clients)

    delivery.drain()

    job = only_scheduled(store)
    assert "did not answer within 0.3 s" in (job.last_error or "")

    settle(delivery, clock, store)

    [ticket] = emulator.tickets()
    state = store.get(decision.key or "", clock())
    assert state is not None and state.ticket_id == str(ticket["id"])


def test_an_api_that_never_answers_clearly_ends_in_the_dead_letters(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, delivery={"max_age": "1h"})
    fire(relay, clock())
    emulator.fault(504, count=100)
    delivery = worker(relay, clock, clients)
    delivery.drain()
    assert "ambiguous_since" in only_scheduled(store).payload

    clock.advance(3600)
    delivery.drain()

    [dead] = store.jobs("dead")
    assert "DoiT API answered 504" in (dead.last_error or "")
    assert store.jobs("scheduled") == []


def crashed_worker(
    relay: Relay, clock: FakeClock, client: DoitClient
) -> tuple[Delivery, Job, TicketRequest]:
    """A worker that leased a job and rendered it, then will die."""
    delivery = Delivery(relay, client, consumer="doomed", clock=clock)
    [job] = relay.store.lease("doomed", clock(), relay.config.delivery.lease)
    return delivery, job, delivery.render(job.payload)


def test_a_worker_that_crashed_after_its_create_is_adopted_by_another(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, delivery={"lease": "30s"})
    decision = fire(relay, clock())
    client = make_client(relay)
    assert client is not None
    clients.append(client)
    doomed, job, request = crashed_worker(relay, clock, client)
    created: Ticket = doomed.create(job, request)  # then the process dies
    survivor = worker(relay, clock, clients, consumer="survivor")

    assert survivor.run_once() == 0  # the lease still holds the job
    clock.advance(31)
    assert survivor.run_once() == 1

    assert len(emulator.tickets()) == 1
    state = store.get(decision.key or "", clock())
    assert state is not None and state.ticket_id == created.id
    assert emulator.stats()["creates_attempted"] == 1
    assert store.stats(clock()).pending == 0


def test_a_worker_that_crashed_before_its_create_arrived_is_replaced(
    store: Store, emulator: EmulatorServer, clock: FakeClock, clients: list[DoitClient]
) -> None:
    relay = make_relay(store, emulator, delivery={"lease": "30s"})
    decision = fire(relay, clock())
    # nothing listens there: the create never leaves, the mark is left
    unreachable = DoitClient(
        f"http://127.0.0.1:{free_port()}", "test-key", max_attempts=1
    )
    clients.append(unreachable)
    doomed, job, request = crashed_worker(relay, clock, unreachable)
    with pytest.raises(RetryableError, match="connection refused"):
        doomed.create(job, request)
    survivor = worker(relay, clock, clients, consumer="survivor")

    clock.advance(31)
    assert survivor.run_once() == 1

    [ticket] = emulator.tickets()
    assert emulator.stats()["lists_attempted"] >= 1  # it looked first
    state = store.get(decision.key or "", clock())
    assert state is not None and state.ticket_id == str(ticket["id"])


# -- rendering and dry run -----------------------------------------------------


def test_dry_run_renders_and_logs_but_never_calls_the_api(
    store: Store,
    emulator: EmulatorServer,
    clock: FakeClock,
    clients: list[DoitClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = make_relay(store, emulator, dry_run=True)
    decision = fire(relay, clock())
    delivery = worker(relay, clock, clients)
    assert delivery.client is None

    with caplog.at_level(logging.INFO, logger="relay.delivery"):
        assert delivery.drain() == 1

    [logged] = [r for r in caplog.records if r.getMessage() == "ticket.dry_run"]
    assert logged.__dict__["subject"] == "[FIRING:1] DiskFull on db-1"
    assert logged.__dict__["category"] == CATEGORY
    assert emulator.stats()["creates_attempted"] == 0
    assert emulator.stats()["lists_attempted"] == 0
    assert store.stats(clock()).pending == 0
    state = store.get(decision.key or "", clock())
    assert state is not None and state.ticket_id is None


def test_a_template_error_at_delivery_falls_back_to_the_default_template(
    store: Store,
    emulator: EmulatorServer,
    clock: FakeClock,
    clients: list[DoitClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = make_relay(
        store,
        emulator,
        rules=[
            {
                "name": "broken",
                "match": {"source": "alertmanager"},
                # compiles, and fails only when rendered
                "ticket": {"subject": "{{ alert.raw.nothing() }}"},
            }
        ],
    )
    fire(relay, clock())

    with caplog.at_level(logging.WARNING, logger="relay.render"):
        worker(relay, clock, clients).drain()

    assert subjects(emulator) == ["[FIRING:1] DiskFull on db-1"]
    assert "render.fallback" in [r.getMessage() for r in caplog.records]


# -- the shared API budget ---------------------------------------------------


class TimedDelivery(Delivery):
    """Notes the (fake) time of every create it makes."""

    def __init__(self, *args: Any, created: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created = created

    def create(self, job: Job, request: TicketRequest) -> Ticket:
        ticket = super().create(job, request)
        self.created.append(self.clock())
        return ticket


def test_two_workers_share_the_api_budget_and_spread_the_creates(
    store: Store, emulator: EmulatorServer, clients: list[DoitClient]
) -> None:
    # at the start of a minute, so that "the first minute" is one budget
    # window whether the store counts fixed or sliding minutes
    clock = FakeClock(math.floor(time.time() / 60) * 60 + 1)
    relay = make_relay(store, emulator, doit={"rate_limit_per_minute": 3})
    for index in range(6):
        fire(relay, clock(), f"Alert{index}")
    created: list[float] = []
    workers = []
    for name in ("replica-a", "replica-b"):
        client = make_client(relay)
        assert client is not None
        clients.append(client)
        workers.append(
            TimedDelivery(
                relay,
                client,
                consumer=name,
                clock=clock,
                sleep=clock.sleep,
                created=created,
            )
        )
    start = clock()

    for _ in range(6):
        for delivery in workers:
            delivery.run_once()

    assert len(emulator.tickets()) == 6
    assert emulator.stats()["creates_attempted"] == 6  # none refused
    assert [t < start + 58 for t in created] == [True] * 3 + [False] * 3
    assert clock.slept  # the fourth create waited for the next minute
    assert store.stats(clock()).pending == 0


class FlakyLease:
    """A real store whose first leases fail as if it were unreachable."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def lease(self, *args: Any, **kwargs: Any) -> list[Job]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("store down for the test")
        return self.store.lease(*args, **kwargs)


def test_a_store_outage_pauses_delivery_and_is_logged_once(
    store: Store, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    relay = make_relay(store, emulator, delivery={"poll_interval": "10ms"})
    fire(relay, time.time())
    flaky = FlakyLease(store, failures=5)
    relay.store = flaky  # type: ignore[assignment]
    delivery = Delivery(relay, None)  # dry run: no API needed here
    caplog.set_level(logging.INFO, logger="relay.delivery")

    pool = WorkerPool(delivery, 2).start()
    try:
        wait_until(lambda: store.stats(time.time()).pending == 0, timeout=30)
    finally:
        pool.stop()

    events = [r.getMessage() for r in caplog.records]
    assert flaky.failures == 0
    assert events.count("delivery.store_unavailable") == 1
    assert events.count("delivery.store_recovered") == 1
