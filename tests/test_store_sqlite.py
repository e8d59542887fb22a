"""The SQLite store: the store contract, plus what only SQLite has (the
file, its schema, its locks and the translation of its errors)."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.errors import ConfigError, StoreUnavailable
from relay.store import open_store
from relay.store.base import Store
from relay.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.store_contract import *  # noqa: F403
from tests.store_contract import LEASE, T0, UNICODE_PAYLOAD, _obs, _queue_job


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "relay.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(str(db_path))
    yield opened
    opened.close()


@pytest.fixture
def store_factory(store: SQLiteStore, db_path: Path) -> Callable[[], Store]:
    return functools.partial(SQLiteStore, str(db_path))


def test_open_store_understands_sqlite_urls(tmp_path: Path) -> None:
    opened = open_store(f"sqlite:///{tmp_path}/nested/relay.db")
    try:
        assert isinstance(opened, SQLiteStore)
        assert (tmp_path / "nested" / "relay.db").is_file()
    finally:
        opened.close()


def test_the_file_is_in_wal_mode_with_a_schema_version(
    store: SQLiteStore, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as conn:
        [mode] = conn.execute("PRAGMA journal_mode").fetchone()
        [version] = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'"
        ).fetchone()
    conn.close()

    assert mode == "wal"
    assert int(version) == SCHEMA_VERSION


def test_state_survives_reopening_the_file(store: SQLiteStore, db_path: Path) -> None:
    job_id = _queue_job(store, "k1", payload={"key": "k1"})
    store.close()

    reopened = SQLiteStore(str(db_path))
    try:
        assert reopened.observe(_obs("k1"), T0 + 1).decision == "duplicate"
        [job] = reopened.lease("w1", T0 + 1, LEASE)
        assert job.id == job_id
    finally:
        reopened.close()


def test_payloads_are_stored_as_json_text(store: SQLiteStore, db_path: Path) -> None:
    _queue_job(store, "k1", payload=UNICODE_PAYLOAD)

    with sqlite3.connect(db_path) as conn:
        [raw] = conn.execute("SELECT payload FROM jobs").fetchone()
    conn.close()

    assert isinstance(raw, str)
    assert json.loads(raw) == UNICODE_PAYLOAD


def test_a_payload_that_is_not_json_is_refused_before_writing(
    store: SQLiteStore,
) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        store.observe(_obs("k1", job={"when": object()}), T0)

    assert store.get("k1", T0) is None


def test_lease_takes_the_soonest_due_job_first(store: SQLiteStore) -> None:
    retried = _queue_job(store, "retried")
    [job] = store.lease("w1", T0, LEASE)
    store.retry(job, T0 + 10, "HTTP 503")
    fresh = _queue_job(store, "fresh", T0 + 20)

    leased = store.lease("w1", T0 + 30, LEASE, count=2)

    assert [job.id for job in leased] == [retried, fresh]


def test_ack_of_a_job_whose_lease_ran_out_unclaimed_still_counts(
    store: SQLiteStore,
) -> None:
    _queue_job(store, "k1")
    [job] = store.lease("w1", T0, LEASE)

    store.ack(job)

    assert store.jobs("pending") == []


def test_stale_receipts_are_logged(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    _queue_job(store, "k1")
    [stale] = store.lease("w1", T0, LEASE)
    store.lease("w2", T0 + LEASE + 1, LEASE)

    store.ack(stale)

    [record] = [r for r in caplog.records if r.message == "store.stale_receipt"]
    assert record.levelname == "WARNING"
    assert (record.action, record.job) == ("ack", stale.id)  # type: ignore[attr-defined]


def test_expired_keys_are_swept(store: SQLiteStore, db_path: Path) -> None:
    store.observe(_obs("old", dedup=60), T0)
    store.remember_message("m1", 60, T0)

    store.observe(_obs("new"), T0 + 3600)

    with sqlite3.connect(db_path) as conn:
        keys = [key for (key,) in conn.execute("SELECT key FROM keys")]
        messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    conn.close()
    assert keys == ["new"]
    assert messages == 0


def test_a_write_lock_held_too_long_is_store_unavailable(db_path: Path) -> None:
    store = SQLiteStore(str(db_path), timeout=0.1)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="database is locked") as caught:
            store.observe(_obs("k1"), T0)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreUnavailable, match="locked"):
            store.ping()
        blocker.execute("ROLLBACK")

        # the lock is gone: the store works again
        assert store.observe(_obs("k1"), T0).decision == "queued"
    finally:
        blocker.close()
        store.close()


def test_a_path_that_cannot_be_created_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    with pytest.raises(StoreUnavailable, match="cannot create the folder"):
        SQLiteStore(str(tmp_path / "file" / "relay.db"))


def test_a_file_that_is_not_a_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"this is not an SQLite database" * 100)

    with pytest.raises(StoreUnavailable, match="not a database"):
        SQLiteStore(str(path))


def test_a_newer_schema_is_refused(store: SQLiteStore, db_path: Path) -> None:
    store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.close()

    with pytest.raises(ConfigError, match="schema version 99"):
        SQLiteStore(str(db_path))


@pytest.mark.parametrize("path", ["", ":memory:", "file::memory:?cache=shared"])
def test_an_in_memory_database_is_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="file path shared by every process"):
        SQLiteStore(path)


def test_a_closed_store_is_unavailable(store: SQLiteStore) -> None:
    store.close()

    with pytest.raises(StoreUnavailable, match="closed"):
        store.get("k1", T0)


@pytest.mark.parametrize("queue", ["running", ""])
def test_an_unknown_queue_is_refused(store: SQLiteStore, queue: str) -> None:
    with pytest.raises(ValueError, match="pending, scheduled or dead"):
        store.jobs(queue)  # type: ignore[arg-type]


def test_a_budget_limit_below_one_is_refused(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="at least 1; got 0"):
        store.take_budget(0, T0)
