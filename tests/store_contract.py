"""The store contract: behaviour every :class:`relay.store.base.Store` keeps.

Run it against an implementation by star-importing this module into that
implementation's test module and defining two fixtures there::

    from tests.store_contract import *  # noqa: F403

    @pytest.fixture
    def store(...) -> Iterator[Store]:
        ...  # a fresh, empty store; close it afterwards

    @pytest.fixture
    def store_factory(...) -> Callable[[], Store]:
        ...  # see below

``store``
    A fresh, empty store, closed by the fixture when the test ends.
``store_factory``
    A picklable callable with no arguments (``functools.partial`` of the
    store class does) that opens another handle on the same data as
    ``store``: the same file, or the same Redis URL and prefix. The suite
    calls it in other threads and in processes started with the ``spawn``
    method, which import this module afresh, and closes every handle it
    opens.

Only the promises of the interface are tested, never how a store keeps its
data. Where the interface leaves a choice open, the suite fixes the
reading both stores share:

- a job leased from the pending queue stays in it while it is worked on
  (so ``stats().pending == len(jobs("pending"))``), and ``leased`` counts
  the jobs held under a lease that has not run out;
- ``ack``, ``retry`` and ``dead_letter`` with the receipt of a lease that
  ran out, after another consumer leased the job, do nothing;
- ``take_budget`` counts per minute: a refusal says how long to wait, and
  asking again after that wait succeeds.

Times are passed in explicitly; the suite starts from the real time of day
(``T0``) so that a store may also lean on its server's own expiry.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from relay.store.base import Job, Observation, QueueName, Store

T0 = float(int(time.time()))
DEDUP = 600.0
REOPEN = 60.0
LEASE = 30.0
QUEUES: tuple[QueueName, ...] = ("pending", "scheduled", "dead")
UNICODE_PAYLOAD: dict[str, Any] = {
    "subject": "Disk almost full on nœud-3 — 95 % ✓ 日本語 🚨",
    "labels": {"ключ": "значение", "emoji": "🔥", "quote": "\"'\\\n\t"},
    "numbers": [0, -1, 2.5, 2**53, 1e-9],
    "flags": [True, False, None],
    "empty": {"list": [], "dict": {}, "text": ""},
}


def _obs(
    key: str = "k1",
    firing: bool = True,
    job: dict[str, Any] | None = None,
    dedup: float = DEDUP,
    reopen: float = REOPEN,
) -> Observation:
    return Observation(
        key=key,
        firing=firing,
        rule="disk-full",
        severity="high",
        dedup_window=dedup,
        reopen_window=reopen,
        job={"key": key} if job is None else job,
    )


def _queue_job(
    store: Store, key: str, now: float = T0, payload: dict[str, Any] | None = None
) -> str:
    """Enqueue one job (through a first firing) and return its id."""
    outcome = store.observe(_obs(key, job=payload), now)
    assert outcome.decision == "queued"
    assert outcome.job_id is not None
    return outcome.job_id


def _ids(jobs: list[Job]) -> list[str]:
    return [job.id for job in jobs]


# observe: firing


def test_first_firing_records_a_pending_key_and_is_queued(store: Store) -> None:
    outcome = store.observe(_obs("k1"), T0)

    assert outcome.decision == "queued"
    assert outcome.job_id
    assert outcome.state is not None
    assert outcome.state.state == "pending"
    state = store.get("k1", T0)
    assert state is not None
    assert (state.key, state.state, state.count) == ("k1", "pending", 1)
    assert (state.first_seen, state.last_seen) == (T0, T0)
    assert state.expires_at == pytest.approx(T0 + DEDUP)
    assert (state.rule, state.severity) == ("disk-full", "high")
    assert state.ticket_id is None


def test_refiring_a_pending_key_is_a_duplicate_that_counts(store: Store) -> None:
    store.observe(_obs("k1"), T0)

    second = store.observe(_obs("k1"), T0 + 10)
    third = store.observe(_obs("k1"), T0 + 20)

    assert (second.decision, third.decision) == ("duplicate", "duplicate")
    assert second.job_id is None and third.job_id is None
    state = store.get("k1", T0 + 20)
    assert state is not None
    assert (state.state, state.count) == ("pending", 3)
    assert (state.first_seen, state.last_seen) == (T0, T0 + 20)


def test_refiring_extends_the_key_by_the_dedup_window(store: Store) -> None:
    store.observe(_obs("k1"), T0)
    store.observe(_obs("k1"), T0 + 100)

    state = store.get("k1", T0 + DEDUP + 50)
    assert state is not None
    assert state.expires_at == pytest.approx(T0 + 100 + DEDUP)
    assert store.get("k1", T0 + 100 + DEDUP + 1) is None


def test_refiring_an_open_key_is_a_duplicate(store: Store) -> None:
    store.observe(_obs("k1"), T0)
    store.attach_ticket("k1", "T-1", "https://tickets.example/T-1")

    outcome = store.observe(_obs("k1"), T0 + 5)

    assert outcome.decision == "duplicate"
    assert outcome.state is not None
    assert (outcome.state.state, outcome.state.count) == ("open", 2)
    assert outcome.state.ticket_id == "T-1"


def test_a_job_is_enqueued_once_with_its_payload(store: Store) -> None:
    payload = {"key": "k1", "alerts": [{"name": "DiskFull"}], "attempt": 1}
    first = store.observe(_obs("k1", job=payload), T0)
    for offset in range(1, 5):
        store.observe(_obs("k1", job={"key": "k1", "other": offset}), T0 + offset)

    pending = store.jobs("pending")
    assert _ids(pending) == [first.job_id]
    assert pending[0].payload == payload
    assert pending[0].key == "k1"
    leased = store.lease("w1", T0 + 10, LEASE, count=10)
    assert _ids(leased) == [first.job_id]
    assert leased[0].payload == payload
    assert leased[0].attempts == 0
    assert leased[0].enqueued_at == T0


def test_an_expired_key_fires_anew(store: Store) -> None:
    store.observe(_obs("k1", dedup=60), T0)
    assert store.get("k1", T0 + 61) is None

    outcome = store.observe(_obs("k1", dedup=60), T0 + 61)

    assert outcome.decision == "queued"
    assert outcome.state is not None
    assert (outcome.state.count, outcome.state.first_seen) == (1, T0 + 61)
    assert len(store.jobs("pending")) == 2


# observe: resolved


@pytest.mark.parametrize("ticket", [None, "T-7"], ids=["pending", "open"])
def test_resolving_a_live_key_marks_it_resolved(
    store: Store, ticket: str | None
) -> None:
    store.observe(_obs("k1"), T0)
    if ticket:
        store.attach_ticket("k1", ticket, None)

    outcome = store.observe(_obs("k1", firing=False), T0 + 30)

    assert outcome.decision == "resolved"
    assert outcome.job_id is None
    state = store.get("k1", T0 + 30)
    assert state is not None
    assert state.state == "resolved"
    assert state.ticket_id == ticket
    assert state.expires_at == pytest.approx(T0 + 30 + REOPEN)


def test_a_resolved_key_expires_after_the_reopen_window(store: Store) -> None:
    store.observe(_obs("k1"), T0)
    store.observe(_obs("k1", firing=False), T0 + 30)

    assert store.get("k1", T0 + 30 + REOPEN - 1) is not None
    assert store.get("k1", T0 + 30 + REOPEN + 1) is None


def test_resolving_an_unknown_key_is_ignored(store: Store) -> None:
    outcome = store.observe(_obs("nobody", firing=False), T0)

    assert outcome.decision == "ignored"
    assert outcome.job_id is None
    assert store.get("nobody", T0) is None
    assert store.jobs("pending") == []


def test_resolving_a_resolved_key_is_ignored(store: Store) -> None:
    store.observe(_obs("k1"), T0)
    store.observe(_obs("k1", firing=False), T0 + 10)

    outcome = store.observe(_obs("k1", firing=False), T0 + 20)

    assert outcome.decision == "ignored"
    state = store.get("k1", T0 + 20)
    assert state is not None and state.state == "resolved"


def test_resolving_an_expired_key_is_ignored(store: Store) -> None:
    store.observe(_obs("k1", dedup=60), T0)

    assert store.observe(_obs("k1", firing=False), T0 + 61).decision == "ignored"


@pytest.mark.parametrize(
    ("ticket", "reopened_as"), [(None, "pending"), ("T-9", "open")]
)
def test_refiring_inside_the_reopen_window_reopens_the_key(
    store: Store, ticket: str | None, reopened_as: str
) -> None:
    store.observe(_obs("k1"), T0)
    if ticket:
        store.attach_ticket("k1", ticket, "https://tickets.example/T-9")
    store.observe(_obs("k1", firing=False), T0 + 10)

    outcome = store.observe(_obs("k1"), T0 + 10 + REOPEN - 5)

    assert outcome.decision == "duplicate"
    assert outcome.job_id is None
    state = store.get("k1", T0 + 10 + REOPEN - 5)
    assert state is not None
    assert (state.state, state.count, state.ticket_id) == (reopened_as, 2, ticket)
    # back to the dedup window, no longer the reopen window
    assert store.get("k1", T0 + 10 + REOPEN + DEDUP - 10) is not None
    assert len(store.jobs("pending")) == 1


def test_refiring_after_the_reopen_window_is_queued_anew(store: Store) -> None:
    store.observe(_obs("k1"), T0)
    store.attach_ticket("k1", "T-1", None)
    store.observe(_obs("k1", firing=False), T0 + 10)

    outcome = store.observe(_obs("k1"), T0 + 10 + REOPEN + 1)

    assert outcome.decision == "queued"
    assert outcome.state is not None
    assert (outcome.state.state, outcome.state.count) == ("pending", 1)
    assert outcome.state.ticket_id is None
    assert len(store.jobs("pending")) == 2


# tickets and delivery ids


def test_attach_ticket_opens_a_pending_key(store: Store) -> None:
    store.observe(_obs("k1"), T0)

    store.attach_ticket("k1", "T-42", "https://tickets.example/T-42")

    state = store.get("k1", T0 + 1)
    assert state is not None
    assert state.state == "open"
    assert state.ticket_id == "T-42"
    assert state.ticket_url == "https://tickets.example/T-42"
    assert state.count == 1


def test_attach_ticket_to_a_missing_key_is_harmless(store: Store) -> None:
    store.attach_ticket("missing", "T-1", None)

    assert store.get("missing", T0) is None
    assert store.observe(_obs("missing"), T0).decision == "queued"


def test_message_ids_are_remembered_until_their_ttl(store: Store) -> None:
    assert store.message_seen("sns-1", T0) is False

    store.remember_message("sns-1", 60, T0)

    assert store.message_seen("sns-1", T0 + 1) is True
    assert store.message_seen("sns-1", T0 + 59) is True
    assert store.message_seen("sns-1", T0 + 61) is False
    assert store.message_seen("sns-2", T0 + 1) is False


def test_remembering_a_message_again_extends_it(store: Store) -> None:
    store.remember_message("sns-1", 60, T0)
    store.remember_message("sns-1", 60, T0 + 50)

    assert store.message_seen("sns-1", T0 + 100) is True
    assert store.message_seen("sns-1", T0 + 111) is False


# leases


def test_lease_hands_out_due_jobs_in_enqueue_order(store: Store) -> None:
    ids = [_queue_job(store, f"k{n}", T0 + n) for n in range(3)]

    first = store.lease("w1", T0 + 10, LEASE, count=2)
    second = store.lease("w2", T0 + 10, LEASE, count=2)

    assert _ids(first) == ids[:2]
    assert _ids(second) == ids[2:]
    assert all(job.receipt for job in first + second)
    assert store.lease("w3", T0 + 10, LEASE) == []


def test_lease_of_an_empty_queue_is_empty(store: Store) -> None:
    assert store.lease("w1", T0, LEASE, count=5) == []


def test_ack_removes_the_job(store: Store) -> None:
    _queue_job(store, "k1")
    [job] = store.lease("w1", T0, LEASE)

    store.ack(job)

    assert store.jobs("pending") == []
    assert store.lease("w1", T0 + LEASE + 1, LEASE) == []
    assert store.stats(T0 + 1).leased == 0


def test_a_leased_job_is_held_by_one_consumer(store: Store) -> None:
    job_id = _queue_job(store, "k1")

    [held] = store.lease("w1", T0, LEASE)

    assert held.id == job_id
    for offset in (0, 1, LEASE / 2, LEASE - 1):
        assert store.lease("w2", T0 + offset, LEASE, count=5) == []


def test_an_expired_lease_is_leased_again(store: Store) -> None:
    payload = {"key": "k1", "n": 1}
    job_id = _queue_job(store, "k1", payload=payload)
    [crashed] = store.lease("w1", T0, LEASE)

    [again] = store.lease("w2", T0 + LEASE + 1, LEASE)

    assert again.id == crashed.id == job_id
    assert again.payload == payload
    assert again.receipt and again.receipt != crashed.receipt
    assert store.lease("w3", T0 + LEASE + 2, LEASE) == []


def _ack(store: Store, job: Job) -> None:
    store.ack(job)


def _retry(store: Store, job: Job) -> None:
    store.retry(job, T0 + 1000, "late", {"stale": True})


def _dead_letter(store: Store, job: Job) -> None:
    store.dead_letter(job, "late", T0 + 1000)


@pytest.mark.parametrize("act", [_ack, _retry, _dead_letter])
def test_a_stale_receipt_does_not_touch_the_new_holder(
    store: Store, act: Callable[[Store, Job], None]
) -> None:
    payload = {"key": "k1", "v": 1}
    _queue_job(store, "k1", payload=payload)
    [stale] = store.lease("w1", T0, LEASE)
    [holder] = store.lease("w2", T0 + LEASE + 1, LEASE)

    act(store, stale)

    now = T0 + LEASE + 2
    assert store.lease("w3", now, LEASE) == []
    stats = store.stats(now)
    assert (stats.pending, stats.scheduled, stats.dead, stats.leased) == (1, 0, 0, 1)
    [listed] = store.jobs("pending")
    assert (listed.id, listed.payload, listed.attempts) == (holder.id, payload, 0)

    store.ack(holder)
    assert store.jobs("pending") == []


# retry and dead letters


def test_retry_schedules_the_job_for_later(store: Store) -> None:
    _queue_job(store, "k1", payload={"key": "k1", "v": 1})
    [job] = store.lease("w1", T0, LEASE)

    store.retry(job, T0 + 100, "HTTP 503", {"key": "k1", "v": 2})

    assert store.lease("w1", T0 + 99, LEASE) == []
    [scheduled] = store.jobs("scheduled")
    assert store.jobs("pending") == []
    assert (scheduled.id, scheduled.attempts) == (job.id, 1)
    assert scheduled.last_error == "HTTP 503"
    [again] = store.lease("w2", T0 + 100, LEASE)
    assert again.id == job.id
    assert again.attempts == 1
    assert again.last_error == "HTTP 503"
    assert again.payload == {"key": "k1", "v": 2}
    assert again.enqueued_at == T0


def test_retry_without_a_payload_keeps_the_payload(store: Store) -> None:
    _queue_job(store, "k1", payload={"key": "k1", "v": 1})
    [job] = store.lease("w1", T0, LEASE)
    store.retry(job, T0 + 5, "first")
    [job] = store.lease("w1", T0 + 5, LEASE)

    store.retry(job, T0 + 10, "second")

    [again] = store.lease("w1", T0 + 10, LEASE)
    assert again.payload == {"key": "k1", "v": 1}
    assert (again.attempts, again.last_error) == (2, "second")


def test_dead_letter_moves_the_job_to_the_dead_letters(store: Store) -> None:
    job_id = _queue_job(store, "k1", payload={"key": "k1"})
    [job] = store.lease("w1", T0, LEASE)
    store.retry(job, T0 + 5, "HTTP 503")
    [job] = store.lease("w1", T0 + 5, LEASE)

    store.dead_letter(job, "HTTP 400: bad category", T0 + 6)

    [dead] = store.jobs("dead")
    assert dead.id == job_id
    assert dead.attempts == 2
    assert dead.last_error == "HTTP 400: bad category"
    assert dead.payload == {"key": "k1"}
    assert store.jobs("pending") == [] and store.jobs("scheduled") == []
    assert store.lease("w1", T0 + 10_000, LEASE) == []


def test_dead_letters_are_listed_oldest_first(store: Store) -> None:
    ids = [_queue_job(store, f"k{n}") for n in range(3)]
    leased = store.lease("w1", T0, LEASE, count=3)
    for job in reversed(leased):
        store.dead_letter(job, "gave up", T0 + 1)

    assert _ids(store.jobs("dead")) == list(reversed(ids))
    assert _ids(store.jobs("dead", limit=2)) == list(reversed(ids))[:2]


def _dead_jobs(store: Store, count: int) -> list[str]:
    ids = [_queue_job(store, f"dead{n}", payload={"n": n}) for n in range(count)]
    for job in store.lease("w1", T0, LEASE, count=count):
        store.dead_letter(job, "gave up", T0 + 1)
    return ids


def test_requeue_one_dead_letter(store: Store) -> None:
    ids = _dead_jobs(store, 2)

    assert store.requeue_dead(ids[1], T0 + 500) == 1

    assert _ids(store.jobs("dead")) == ids[:1]
    [job] = store.lease("w1", T0 + 500, LEASE, count=5)
    assert job.id == ids[1]
    assert job.payload == {"n": 1}
    # a fresh maximum age
    assert job.enqueued_at == T0 + 500


def test_requeue_every_dead_letter(store: Store) -> None:
    ids = _dead_jobs(store, 3)

    assert store.requeue_dead(None, T0 + 500) == 3

    assert store.jobs("dead") == []
    leased = store.lease("w1", T0 + 500, LEASE, count=5)
    assert sorted(_ids(leased)) == sorted(ids)


def test_requeue_of_an_unknown_dead_letter_moves_nothing(store: Store) -> None:
    _dead_jobs(store, 1)
    pending_id = _queue_job(store, "alive")

    assert store.requeue_dead("no-such-job", T0) == 0
    assert store.requeue_dead(pending_id, T0) == 0
    assert len(store.jobs("dead")) == 1


# purge and stats


def _one_job_per_queue(store: Store) -> dict[QueueName, str]:
    scheduled = _queue_job(store, "scheduled")
    dead = _queue_job(store, "dead")
    for job in store.lease("w1", T0, LEASE, count=2):
        if job.id == scheduled:
            store.retry(job, T0 + 1000, "later")
        else:
            store.dead_letter(job, "gave up", T0)
    pending = _queue_job(store, "pending", T0 + 1)
    return {"pending": pending, "scheduled": scheduled, "dead": dead}


@pytest.mark.parametrize("queue", ["pending", "scheduled", "dead"])
def test_purge_empties_one_queue(store: Store, queue: QueueName) -> None:
    ids = _one_job_per_queue(store)

    assert store.purge(queue) == 1

    assert store.jobs(queue) == []
    for other in QUEUES:
        if other != queue:
            assert _ids(store.jobs(other)) == [ids[other]]
    assert store.purge(queue) == 0


def test_stats_count_each_queue(store: Store) -> None:
    empty = store.stats(T0)
    assert (empty.pending, empty.scheduled, empty.dead, empty.leased) == (0, 0, 0, 0)
    assert empty.oldest_pending_age == 0.0

    ids = [_queue_job(store, f"k{n}", T0 + n) for n in range(3)]
    stats = store.stats(T0 + 30)
    assert (stats.pending, stats.scheduled, stats.dead, stats.leased) == (3, 0, 0, 0)
    assert stats.oldest_pending_age == pytest.approx(30)

    [first] = store.lease("w1", T0 + 30, LEASE)
    assert first.id == ids[0]
    stats = store.stats(T0 + 31)
    assert (stats.pending, stats.leased) == (3, 1)
    # the oldest job is being worked on; the next one has waited 30 s
    assert stats.oldest_pending_age == pytest.approx(30)

    store.retry(first, T0 + 1000, "HTTP 503")
    [second] = store.lease("w1", T0 + 32, LEASE)
    store.dead_letter(second, "HTTP 400", T0 + 32)
    stats = store.stats(T0 + 33)
    assert (stats.pending, stats.scheduled, stats.dead, stats.leased) == (1, 1, 1, 0)
    assert stats.oldest_pending_age == pytest.approx(31)
    assert [len(store.jobs(queue)) for queue in QUEUES] == [1, 1, 1]

    store.purge("pending")
    assert store.stats(T0 + 34).oldest_pending_age == 0.0


# the API budget


def test_take_budget_gives_the_limit_then_a_wait(store: Store) -> None:
    # half a second into a minute, so that one more second stays inside it
    now = (T0 // 60 + 1) * 60 + 0.5

    taken = [store.take_budget(3, now) for _ in range(3)]
    wait = store.take_budget(3, now)

    assert taken == [0.0, 0.0, 0.0]
    assert 0.0 < wait <= 60.0
    assert store.take_budget(3, now + 1) > 0.0
    assert store.take_budget(3, now + wait) == 0.0


def test_take_budget_has_a_new_window_each_minute(store: Store) -> None:
    for minute in range(3):
        now = T0 + 60 * minute
        assert [store.take_budget(2, now) for _ in range(2)] == [0.0, 0.0]
    assert store.take_budget(2, T0 + 120) > 0.0


def test_take_budget_is_shared_by_every_handle(
    store: Store, store_factory: Callable[[], Store]
) -> None:
    other = store_factory()
    try:
        assert store.take_budget(3, T0) == 0.0
        assert other.take_budget(3, T0) == 0.0
        assert store.take_budget(3, T0) == 0.0
        assert other.take_budget(3, T0) > 0.0
    finally:
        other.close()


# payloads


def test_payloads_round_trip_as_json(store: Store) -> None:
    _queue_job(store, "k1", payload=UNICODE_PAYLOAD)

    [listed] = store.jobs("pending")
    [job] = store.lease("w1", T0, LEASE)
    assert listed.payload == UNICODE_PAYLOAD
    assert job.payload == UNICODE_PAYLOAD

    replaced = {**UNICODE_PAYLOAD, "ambiguous_since": T0 + 0.25}
    store.retry(job, T0 + 1, "délai dépassé ⏱", replaced)
    [job] = store.lease("w1", T0 + 1, LEASE)
    assert job.payload == replaced
    assert job.last_error == "délai dépassé ⏱"


def test_a_second_handle_sees_the_same_data(
    store: Store, store_factory: Callable[[], Store]
) -> None:
    job_id = _queue_job(store, "k1")
    other = store_factory()
    try:
        assert other.observe(_obs("k1"), T0 + 1).decision == "duplicate"
        [job] = other.lease("w2", T0 + 1, LEASE)
        assert job.id == job_id
        assert store.lease("w1", T0 + 2, LEASE) == []
        other.ack(job)
    finally:
        other.close()
    assert store.jobs("pending") == []


def test_ping_answers(store: Store) -> None:
    store.ping()


# concurrency


def test_concurrent_firings_from_threads_queue_once(store: Store) -> None:
    threads = 16
    barrier = threading.Barrier(threads)
    decisions: list[str] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            barrier.wait(timeout=30)
            decisions.append(store.observe(_obs("shared"), T0).decision)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=fire) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert errors == []
    assert sorted(decisions) == ["duplicate"] * (threads - 1) + ["queued"]
    state = store.get("shared", T0)
    assert state is not None and state.count == threads
    assert len(store.jobs("pending")) == 1


def _fire_in_process(
    factory: Callable[[], Store], barrier: Any, now: float, results: Any
) -> None:
    store = factory()
    try:
        barrier.wait(timeout=60)
        decisions = [store.observe(_obs("shared"), now).decision for _ in range(3)]
        results.put(decisions)
    finally:
        store.close()


def _lease_in_process(
    factory: Callable[[], Store], barrier: Any, now: float, results: Any
) -> None:
    store = factory()
    try:
        barrier.wait(timeout=60)
        seen: list[str] = []
        while jobs := store.lease(f"w{os.getpid()}", now, 600, count=2):
            seen += [job.id for job in jobs]
            for job in jobs:
                store.ack(job)
        results.put(seen)
    finally:
        store.close()


def _run_processes(
    target: Callable[..., None],
    factory: Callable[[], Store],
    now: float,
    processes: int = 3,
) -> list[Any]:
    """Run ``target`` in fresh interpreters started at one barrier; return
    what each put on the results queue."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=target, args=(factory, barrier, now, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        collected = [results.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * processes
    return collected


def test_concurrent_firings_from_processes_queue_once(
    store: Store, store_factory: Callable[[], Store]
) -> None:
    results = _run_processes(_fire_in_process, store_factory, T0)

    decisions = sorted(d for result in results for d in result)
    assert decisions == ["duplicate"] * (len(decisions) - 1) + ["queued"]
    state = store.get("shared", T0)
    assert state is not None and state.count == len(decisions)
    assert len(store.jobs("pending")) == 1


def test_processes_never_lease_the_same_job(
    store: Store, store_factory: Callable[[], Store]
) -> None:
    ids = [_queue_job(store, f"k{n}") for n in range(30)]

    results = _run_processes(_lease_in_process, store_factory, T0 + 1)

    leased = [job_id for result in results for job_id in result]
    assert sorted(leased) == sorted(ids)
    assert store.jobs("pending") == []
