"""The SQLite store: the embedded default for a single host.

One database file is shared by every thread and every process of the relay
(gunicorn runs several workers on one file). Three things make that safe:

- WAL journaling, so that readers never block the one writer;
- ``BEGIN IMMEDIATE`` for every read-modify-write, so that the write lock is
  taken before anything is read and two deciders can never both see "no
  key" (a deferred transaction that later upgrades to a write fails at once
  with SQLITE_BUSY instead of waiting);
- a busy timeout, so that a writer waits its turn instead of failing.

Each thread gets its own connection (a connection must not be used by two
threads at once); connections inherited through ``fork`` are abandoned and
reopened, as SQLite requires.

Queues are a column of the ``jobs`` table: ``pending`` (enqueued, requeued,
or leased), ``scheduled`` (waiting for a retry time) and ``dead``. A due
scheduled job moves to ``pending`` when it is leased, as it does in the Redis
store, so that queue depths mean the same in both.

A lease is a random receipt on the job. :meth:`SQLiteStore.ack`,
:meth:`SQLiteStore.retry` and :meth:`SQLiteStore.dead_letter` act only when
the job still carries the caller's receipt: once a lease has run out and
another consumer has leased the job, the first holder's late answer is
ignored (and logged) rather than clobbering the new holder's work.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from relay.errors import ConfigError, StoreUnavailable
from relay.store.base import (
    Job,
    KeyState,
    Observation,
    Outcome,
    QueueName,
    QueueStats,
    Store,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUDGET_WINDOW = 60.0  # seconds; the API budget is counted per minute
# expired keys and delivery ids are swept at most this often (in seconds of
# the callers' clock), a bounded batch at a time, so that no single call
# pays for a large cleanup
SWEEP_INTERVAL = 60.0
SWEEP_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'open', 'resolved')),
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL,
    count INTEGER NOT NULL,
    severity TEXT NOT NULL,
    rule TEXT NOT NULL,
    ticket_id TEXT,
    ticket_url TEXT
);
CREATE INDEX IF NOT EXISTS keys_expires_at ON keys (expires_at);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_expires_at ON messages (expires_at);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    queue TEXT NOT NULL CHECK (queue IN ('pending', 'scheduled', 'dead')),
    pos INTEGER NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    next_at REAL NOT NULL,
    last_error TEXT,
    receipt TEXT,
    consumer TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (queue, next_at, seq);
CREATE INDEX IF NOT EXISTS jobs_pos ON jobs (queue, pos);
CREATE INDEX IF NOT EXISTS jobs_position ON jobs (pos);
CREATE TABLE IF NOT EXISTS budget (
    window INTEGER PRIMARY KEY,
    used INTEGER NOT NULL
);
"""

_JOB_COLUMNS = "id, key, payload, attempts, enqueued_at, next_at, last_error"

# programming errors are bugs in the relay, not an outage: retrying cannot
# fix them, so they are not disguised as StoreUnavailable
_BUGS = (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.IntegrityError)


class SQLiteStore(Store):
    """The :class:`~relay.store.base.Store` in one SQLite file at ``path``.

    The parent folders are created and the schema is migrated on
    construction, so that a bad path fails at start-up. ``timeout`` is how
    long, in seconds, a call waits for another thread or process to release
    the write lock before raising :class:`~relay.errors.StoreUnavailable`.
    Thread-safe and safe across processes on one host; the file must be on
    a local filesystem, as WAL relies on shared memory between processes.
    """

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ConfigError(
                "the SQLite store needs a file path shared by every process; "
                f"got {path!r}"
            )
        self.path = os.path.abspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # thread ident -> (thread, its connection)
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._last_sweep = float("-inf")
        self._closed = False

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(
                f"cannot create the folder of the SQLite store {self.path}: {e}"
            ) from e
        self._migrate()

    # connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            # transactions are begun and ended explicitly
            isolation_level=None,
            # each connection is used by its own thread only; close() may
            # run on another thread
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # a webhook is answered only once its alerts are durable, so
            # every commit reaches the disk, not just the OS cache
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreUnavailable("the SQLite store was closed")

        thread = threading.current_thread()
        ident = threading.get_ident()
        with self._lock:
            if os.getpid() != self._pid:
                # a connection must never cross a fork: abandon the
                # parent's without closing them (closing could disturb the
                # parent's locks) and start afresh
                self._conns = {}
                self._pid = os.getpid()
            entry = self._conns.get(ident)
            if entry is not None and entry[0] is thread:
                return entry[1]

            # close the connections of threads that have ended
            for other, (owner, conn) in list(self._conns.items()):
                if not owner.is_alive():
                    del self._conns[other]
                    with suppress(sqlite3.Error):
                        conn.close()
            conn = self._connect()
            self._conns[ident] = (thread, conn)
            return conn

    def _drop_conn(self) -> None:
        """Forget this thread's connection after an error, so that the next
        call reopens the file (it may have been moved or repaired)."""
        with self._lock:
            entry = self._conns.pop(threading.get_ident(), None)
        if entry is not None:
            with suppress(sqlite3.Error):
                entry[1].close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: ``BEGIN IMMEDIATE`` for writes, a plain ``BEGIN``
        (one consistent snapshot) for reads. sqlite3 errors that mean the
        store cannot be used become StoreUnavailable."""
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except _BUGS:
            raise
        except sqlite3.Error as e:
            self._drop_conn()
            raise self._unavailable(e) from e

        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error) and not isinstance(e, _BUGS):
                self._drop_conn()
                raise self._unavailable(e) from e
            raise

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(
            f"SQLite store {self.path} cannot be used: {type(error).__name__}: {error}"
        )

    def _migrate(self) -> None:
        with self._tx() as conn:
            # executescript() would commit first; run the statements one by
            # one inside the transaction so that two processes starting at
            # once cannot interleave their migrations
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"the SQLite store {self.path} has schema version {row[0]}, "
                    f"newer than this relay understands ({SCHEMA_VERSION}); "
                    "upgrade the relay or point it at another file"
                )

    # dedup state

    def observe(self, obs: Observation, now: float) -> Outcome:
        """Decide on one sighting and enqueue its job in one transaction;
        see :meth:`relay.store.base.Store.observe`."""
        job_json = _dumps(obs.job)
        with self._tx() as conn:
            self._sweep(conn, now)
            row = self._live_key(conn, obs.key, now)
            if obs.firing:
                return self._fire(conn, obs, row, now, job_json)
            return self._resolve(conn, obs, row, now)

    def _live_key(
        self, conn: sqlite3.Connection, key: str, now: float
    ) -> KeyState | None:
        # an expired key counts as no key; delete it here so that the
        # insert that may follow starts the key afresh
        conn.execute("DELETE FROM keys WHERE key = ? AND expires_at <= ?", (key, now))
        row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE key = ?", (key,))
        found = row.fetchone()
        return None if found is None else _key_state(found)

    def _fire(
        self,
        conn: sqlite3.Connection,
        obs: Observation,
        state: KeyState | None,
        now: float,
        job_json: str,
    ) -> Outcome:
        if state is None:
            state = KeyState(
                key=obs.key,
                state="pending",
                first_seen=now,
                last_seen=now,
                expires_at=now + obs.dedup_window,
                count=1,
                severity=obs.severity,
                rule=obs.rule,
            )
            conn.execute(
                f"INSERT INTO keys ({_KEY_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _key_row(state),
            )
            job_id = self._enqueue(conn, obs.key, job_json, now)
            return Outcome("queued", state, job_id)

        if state.state == "resolved":
            # the problem is back inside the reopen window: the ticket, if
            # any, is still the right place for it
            state.state = "open" if state.ticket_id else "pending"
            state.expires_at = now + obs.dedup_window
        else:
            state.expires_at = max(state.expires_at, now + obs.dedup_window)
        state.count += 1
        state.last_seen = max(state.last_seen, now)
        conn.execute(
            "UPDATE keys SET state = ?, last_seen = ?, expires_at = ?, count = ? "
            "WHERE key = ?",
            (state.state, state.last_seen, state.expires_at, state.count, obs.key),
        )
        return Outcome("duplicate", state)

    def _resolve(
        self,
        conn: sqlite3.Connection,
        obs: Observation,
        state: KeyState | None,
        now: float,
    ) -> Outcome:
        if state is None or state.state == "resolved":
            return Outcome("ignored", state)

        state.state = "resolved"
        state.last_seen = max(state.last_seen, now)
        state.expires_at = now + obs.reopen_window
        conn.execute(
            "UPDATE keys SET state = ?, last_seen = ?, expires_at = ? WHERE key = ?",
            (state.state, state.last_seen, state.expires_at, obs.key),
        )
        return Outcome("resolved", state)

    def get(self, key: str, now: float) -> KeyState | None:
        """The live state of ``key``, or None when unknown or expired."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE key = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
        return None if row is None else _key_state(row)

    def attach_ticket(self, key: str, ticket_id: str, url: str | None) -> None:
        """Record the ticket created for ``key``; a pending key becomes open.

        A missing key is left alone. A key that has expired but not yet been
        swept may be written to, harmlessly: an expired key counts as no
        key everywhere, and the next firing replaces it.
        """
        with self._tx() as conn:
            conn.execute(
                "UPDATE keys SET ticket_id = ?, ticket_url = ?, "
                "state = CASE state WHEN 'pending' THEN 'open' ELSE state END "
                "WHERE key = ?",
                (ticket_id, url, key),
            )

    def message_seen(self, message_id: str, now: float) -> bool:
        """Whether a sender's delivery id was already processed."""
        with self._tx(write=False) as conn:
            row = conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND expires_at > ?",
                (message_id, now),
            ).fetchone()
        return row is not None

    def remember_message(self, message_id: str, ttl: float, now: float) -> None:
        """Remember a processed delivery id for ``ttl`` seconds."""
        with self._tx() as conn:
            self._sweep(conn, now)
            conn.execute(
                "INSERT INTO messages (id, expires_at) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
                (message_id, now + ttl),
            )

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete a batch of expired keys and delivery ids, now and then."""
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for table in ("keys", "messages"):
            conn.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} WHERE expires_at <= ? LIMIT ?)",
                (now, SWEEP_BATCH),
            )

    # delivery queue

    def _enqueue(
        self, conn: sqlite3.Connection, key: str, payload: str, now: float
    ) -> str:
        job_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO jobs (id, key, queue, pos, payload, attempts, "
            "enqueued_at, next_at) VALUES (?, ?, 'pending', ?, ?, 0, ?, ?)",
            (job_id, key, _next_pos(conn), payload, now, now),
        )
        return job_id

    def lease(
        self, consumer: str, now: float, lease: float, count: int = 1
    ) -> list[Job]:
        """Lease up to ``count`` due jobs for ``lease`` seconds, soonest due
        first, then in enqueue order; each carries a fresh receipt."""
        if count < 1:
            return []

        leased: list[Job] = []
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS}, queue FROM jobs "
                "WHERE queue IN ('pending', 'scheduled') AND next_at <= ? "
                "AND (receipt IS NULL OR lease_until <= ?) "
                "ORDER BY next_at, seq LIMIT ?",
                (now, now, count),
            ).fetchall()
            for row in rows:
                job = _job(row)
                job.receipt = secrets.token_hex(16)
                # a due retry joins the pending queue while it is worked on
                pos = _next_pos(conn) if row[-1] == "scheduled" else None
                conn.execute(
                    "UPDATE jobs SET queue = 'pending', pos = COALESCE(?, pos), "
                    "receipt = ?, consumer = ?, lease_until = ? WHERE id = ?",
                    (pos, job.receipt, consumer, now + lease, job.id),
                )
                leased.append(job)
        return leased

    def ack(self, job: Job) -> None:
        """The job is done: remove it. A no-op (logged) when the job's
        lease has passed to another consumer or the job is gone."""
        with self._tx() as conn:
            done = conn.execute(
                "DELETE FROM jobs WHERE id = ? AND receipt IS ? AND queue != 'dead'",
                (job.id, job.receipt),
            ).rowcount
        if not done:
            _log_stale("ack", job)

    def retry(
        self, job: Job, at: float, error: str, payload: dict[str, Any] | None = None
    ) -> None:
        """Release the job to run again at ``at``, one more attempt counted.
        A no-op (logged) when the job's lease has passed to another consumer
        or the job is gone."""
        payload_json = None if payload is None else _dumps(payload)
        with self._tx() as conn:
            done = conn.execute(
                "UPDATE jobs SET queue = 'scheduled', pos = ?, next_at = ?, "
                "attempts = attempts + 1, last_error = ?, "
                "payload = COALESCE(?, payload), "
                "receipt = NULL, consumer = NULL, lease_until = NULL "
                "WHERE id = ? AND receipt IS ? AND queue != 'dead'",
                (_next_pos(conn), at, error, payload_json, job.id, job.receipt),
            ).rowcount
        if not done:
            _log_stale("retry", job)

    def dead_letter(self, job: Job, error: str, now: float) -> None:
        """Move the job to the dead letters, one more attempt counted. A
        no-op (logged) when the job's lease has passed to another consumer
        or the job is gone."""
        with self._tx() as conn:
            done = conn.execute(
                "UPDATE jobs SET queue = 'dead', pos = ?, next_at = ?, "
                "attempts = attempts + 1, last_error = ?, "
                "receipt = NULL, consumer = NULL, lease_until = NULL "
                "WHERE id = ? AND receipt IS ? AND queue != 'dead'",
                (_next_pos(conn), now, error, job.id, job.receipt),
            ).rowcount
        if not done:
            _log_stale("dead_letter", job)

    def jobs(self, queue: QueueName, limit: int = 100) -> list[Job]:
        """The jobs in one queue, oldest first (scheduled ones soonest due
        first). Receipts are never shown, so an operator's listing cannot
        be used to act on a job another consumer holds."""
        order = "next_at, pos" if _check_queue(queue) == "scheduled" else "pos"
        with self._tx(write=False) as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE queue = ? "
                f"ORDER BY {order} LIMIT ?",
                (queue, limit),
            ).fetchall()
        return [_job(row) for row in rows]

    def requeue_dead(self, job_id: str | None, now: float) -> int:
        """Move one dead letter (or all) back to the pending queue with a
        fresh maximum age and a fresh count of attempts (the last error is
        kept for the record). Returns how many moved."""
        with self._tx() as conn:
            if job_id is None:
                ids = conn.execute(
                    "SELECT id FROM jobs WHERE queue = 'dead' ORDER BY pos"
                ).fetchall()
            else:
                ids = conn.execute(
                    "SELECT id FROM jobs WHERE queue = 'dead' AND id = ?", (job_id,)
                ).fetchall()
            pos = _next_pos(conn)
            for offset, (found,) in enumerate(ids):
                conn.execute(
                    "UPDATE jobs SET queue = 'pending', pos = ?, attempts = 0, "
                    "enqueued_at = ?, next_at = ? WHERE id = ?",
                    (pos + offset, now, now, found),
                )
        return len(ids)

    def purge(self, queue: QueueName) -> int:
        """Delete every job of one queue, leased ones included. Returns how
        many were deleted."""
        with self._tx() as conn:
            cursor = conn.execute(
                "DELETE FROM jobs WHERE queue = ?", (_check_queue(queue),)
            )
            return cursor.rowcount

    def stats(self, now: float) -> QueueStats:
        """Queue depths (leased jobs count in ``pending`` as well as in
        ``leased``) and how long the longest-waiting due job has waited."""
        with self._tx(write=False) as conn:
            depths = dict(
                conn.execute("SELECT queue, COUNT(*) FROM jobs GROUP BY queue")
            )
            (leased,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE queue != 'dead' "
                "AND receipt IS NOT NULL AND lease_until > ?",
                (now,),
            ).fetchone()
            # a job whose lease ran out has been waiting since then
            (due_since,) = conn.execute(
                "SELECT MIN(CASE WHEN receipt IS NULL THEN next_at "
                "ELSE MAX(next_at, lease_until) END) FROM jobs "
                "WHERE queue IN ('pending', 'scheduled') AND next_at <= ? "
                "AND (receipt IS NULL OR lease_until <= ?)",
                (now, now),
            ).fetchone()
        return QueueStats(
            pending=depths.get("pending", 0),
            scheduled=depths.get("scheduled", 0),
            dead=depths.get("dead", 0),
            leased=leased,
            oldest_pending_age=0.0 if due_since is None else max(0.0, now - due_since),
        )

    # shared API budget

    def take_budget(self, limit_per_minute: int, now: float) -> float:
        """Take one slot of the per-minute API budget shared by every
        process using the file; returns 0.0, or the seconds until the next
        minute's window opens."""
        if limit_per_minute < 1:
            raise ValueError(
                f"limit_per_minute must be at least 1; got {limit_per_minute}"
            )

        window = int(now // BUDGET_WINDOW)
        with self._tx() as conn:
            conn.execute("DELETE FROM budget WHERE window < ?", (window,))
            row = conn.execute(
                "SELECT used FROM budget WHERE window = ?", (window,)
            ).fetchone()
            used = 0 if row is None else int(row[0])
            if used >= limit_per_minute:
                # never 0.0, which would mean a slot was taken
                return max((window + 1) * BUDGET_WINDOW - now, 0.001)
            conn.execute(
                "INSERT INTO budget (window, used) VALUES (?, 1) "
                "ON CONFLICT (window) DO UPDATE SET used = used + 1",
                (window,),
            )
        return 0.0

    # lifecycle

    def ping(self) -> None:
        """Raise StoreUnavailable unless the file can be read and the write
        lock taken within the timeout."""
        with self._tx() as conn:
            conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")

    def close(self) -> None:
        """Close every thread's connection. The store is not used afterwards."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, {}
        for _, conn in conns.values():
            with suppress(sqlite3.Error):
                conn.close()


_KEY_COLUMNS = (
    "key, state, first_seen, last_seen, expires_at, count, severity, rule, "
    "ticket_id, ticket_url"
)


def _key_state(row: tuple[Any, ...]) -> KeyState:
    return KeyState(
        key=row[0],
        state=row[1],
        first_seen=row[2],
        last_seen=row[3],
        expires_at=row[4],
        count=row[5],
        severity=row[6],
        rule=row[7],
        ticket_id=row[8],
        ticket_url=row[9],
    )


def _key_row(state: KeyState) -> tuple[Any, ...]:
    return (
        state.key,
        state.state,
        state.first_seen,
        state.last_seen,
        state.expires_at,
        state.count,
        state.severity,
        state.rule,
        state.ticket_id,
        state.ticket_url,
    )


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        key=row[1],
        payload=json.loads(row[2]),
        attempts=row[3],
        enqueued_at=row[4],
        next_at=row[5],
        last_error=row[6],
    )


def _next_pos(conn: sqlite3.Connection) -> int:
    """The next position at the tail of any queue; called inside a write
    transaction, so that no other writer can take the same one."""
    (top,) = conn.execute("SELECT MAX(pos) FROM jobs").fetchone()
    return 1 if top is None else int(top) + 1


def _dumps(payload: dict[str, Any]) -> str:
    """A job payload as JSON; a payload that is not JSON-safe is a bug in
    the caller and raises TypeError or ValueError before anything is
    written."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False)


def _check_queue(queue: str) -> str:
    if queue not in ("pending", "scheduled", "dead"):
        raise ValueError(f"queue must be pending, scheduled or dead; got {queue!r}")
    return queue


def _log_stale(action: str, job: Job) -> None:
    # the lease ran out before the work was reported, so another consumer
    # may be working on the job now; a longer lease avoids the double work
    log.warning(
        "store.stale_receipt",
        extra={"action": action, "job": job.id, "key": job.key},
    )
