"""The Redis store: the production store, shared by any number of replicas.

Every decision that reads and then writes runs as one Lua script (EVALSHA
through redis-py's :class:`~redis.commands.core.Script`, which loads the
script again by itself when a restarted server answers ``NOSCRIPT``), so
that replicas never race each other. A duplicate alert costs one round trip.

Layout, every key under one hash tag so that a script's keys always share a
Cluster slot (``P`` is the configured prefix)::

    {P}:key:<dedup key>     hash   dedup state; expires_at in the callers'
                                   clock, a Redis TTL only to collect garbage
    {P}:msg:<message id>    string a processed delivery id; value expires_at
    {P}:job:<job id>        hash   one job: key, payload (JSON), attempts,
                                   enqueued_at, next_at, last_error, where it
                                   is (pending/scheduled/dead), its stream
                                   entry, lease token and consumer
    {P}:queue               stream pending jobs, one entry per job, read
                                   through the consumer group ``relay``
    {P}:leases              zset   stream entry -> lease deadline
    {P}:scheduled           zset   job id -> time the retry is due
    {P}:dead                stream dead letters, one entry per job
    {P}:budget              zset   API calls of the last minute (sliding)

Leases. New entries are read with ``XREADGROUP``; an entry whose lease ran
out is taken over with ``XCLAIM`` (which moves it in the group's pending
entries list and counts the delivery). Lease deadlines are kept in a sorted
set rather than left to ``XAUTOCLAIM``'s idle time because the store
contract measures time with the caller's clock, and because each lease
carries its own duration. Each lease increments a token on the job; the
receipt is ``<entry id>|<token>``, and ack, retry and dead-letter act only
when both still match, so a worker whose lease was taken over cannot
clobber the new holder's work.

Connections. ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs go
through :meth:`redis.Redis.from_url`, with short connect and socket timeouts
and a connection health check, so that an outage surfaces within a few
seconds as :class:`~relay.errors.StoreUnavailable` instead of a hang. A
command is retried once after a connection error (a pooled connection may
have died with a restarted server); a timeout is not retried, because the
command may have run. Should a connection die after a script ran but before
its reply arrived, the retry sees the script's effect: an observation then
reads ``duplicate`` although its job was queued, and a lease's jobs wait
for the lease to run out; nothing is lost or enqueued twice. The store
recovers by itself once Redis answers again.

``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]``
asks the listed Sentinels for the current master of ``service`` and follows
fail-overs; the password is the master's (Sentinels are reached without
one). Redis Cluster is not supported: the key layout is ready for it (one
hash tag, so every key of a prefix lives in one slot, and the scripts also
touch job keys they could not declare in advance, which Cluster allows
within one slot), but the store opens a plain client, not a Cluster one.
One prefix therefore lives on one shard whichever way it is deployed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry
from redis.sentinel import Sentinel

from relay.errors import ConfigError, StoreUnavailable
from relay.store import redis_scripts as lua
from relay.store.base import (
    Decision,
    Job,
    KeyState,
    KeyStateName,
    Observation,
    Outcome,
    QueueName,
    QueueStats,
    Store,
)

log = logging.getLogger(__name__)

GROUP = "relay"
BUDGET_WINDOW = 60.0  # seconds; the API budget is counted per minute
# Redis TTLs only collect garbage; the callers' clock decides expiry. The
# grace keeps a key a little past its logical end so that a replica whose
# clock lags slightly still sees it.
TTL_GRACE_MS = 60_000
# operator commands and the move of due retries work in bounded batches so
# that no single script blocks Redis for long
BATCH = 500

# every consumer name ever used stays in the group until removed; names
# that hold nothing and have been idle this long are removed, checked at
# most once per interval by each store (milliseconds, seconds)
CONSUMER_IDLE_MS = 3_600_000
PRUNE_INTERVAL = 300.0

# how quickly an outage is noticed: connecting, any reply, and the PING sent
# on a connection idle for longer than the interval (all in seconds)
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 3.0
HEALTH_CHECK_INTERVAL = 5

_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": SOCKET_TIMEOUT,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
    "retry": Retry(
        ExponentialBackoff(cap=0.5, base=0.1),
        retries=1,
        supported_errors=(redis.ConnectionError,),
    ),
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A flat ``[field, value, …]`` reply as a dict of strings."""
    items = [_text(v) for v in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _ttl_ms(window: float) -> int:
    return max(1, math.ceil(window * 1000)) + TTL_GRACE_MS


def _key_state(key: str, fields: Mapping[str, str]) -> KeyState:
    return KeyState(
        key=key,
        state=cast(KeyStateName, fields["state"]),
        first_seen=float(fields["first_seen"]),
        last_seen=float(fields["last_seen"]),
        expires_at=float(fields["expires_at"]),
        count=int(fields["count"]),
        severity=fields.get("severity", ""),
        rule=fields.get("rule", ""),
        ticket_id=fields.get("ticket_id") or None,
        ticket_url=fields.get("ticket_url") or None,
    )


def _job(fields: Mapping[str, str], receipt: str | None = None) -> Job:
    return Job(
        id=fields["id"],
        key=fields["key"],
        payload=json.loads(fields["payload"]),
        attempts=int(fields.get("attempts", "0")),
        enqueued_at=float(fields.get("enqueued_at", "0")),
        next_at=float(fields.get("next_at", "0")),
        last_error=fields.get("last_error") or None,
        receipt=receipt,
    )


def _dump(payload: Mapping[str, Any]) -> str:
    # JSON only: a job must never carry anything that needs unpickling
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def _check_queue(queue: str) -> None:
    if queue not in ("pending", "scheduled", "dead"):
        raise ValueError(f"queue must be pending, scheduled or dead; got {queue!r}")


def _sentinel_client(url: str) -> redis.Redis:
    """A client for the master that Sentinel names, following fail-overs."""
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if not parts.netloc or not path or len(path) > 2:
        raise ConfigError(
            "expected redis+sentinel://[[user]:password@]host[:port][,host"
            f"[:port]…]/service[/db]; got a URL with path {parts.path!r}"
        )
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.partition(":")
        if not host or (port and not port.isdigit()):
            raise ConfigError(
                f"expected Sentinel addresses as host[:port]; got {item!r}"
            )
        sentinels.append((host, int(port or 26379)))
    if len(path) == 2 and not path[1].isdigit():
        raise ConfigError(f"expected a database number; got {path[1]!r}")

    timeouts = {k: v for k, v in _CLIENT_OPTIONS.items() if k.startswith("socket_")}
    # Sentinels get the same short timeouts, so a dead one is skipped quickly
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels, sentinel_kwargs=timeouts
    )
    master = sentinel.master_for(  # type: ignore[no-untyped-call]
        unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **_CLIENT_OPTIONS,
    )
    return cast(redis.Redis, master)


def _connect(url: str) -> redis.Redis:
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url)
    # redis-py reads a database path it cannot parse as database 0; a typo
    # must not point the relay at another database
    if url.startswith(("redis://", "rediss://")):
        db = urlsplit(url).path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(
                f"expected a database number as the path of the Redis URL; got {db!r}"
            )
    try:
        return redis.Redis.from_url(url, **_CLIENT_OPTIONS)
    except ValueError as e:
        # the message of a bad URL names the scheme, never the password
        raise ConfigError(
            f"expected a redis://, rediss://, unix:// or redis+sentinel:// URL; {e}"
        ) from e


def _describe(client: redis.Redis) -> str:
    """Where the store points, without credentials, for error messages."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"Redis at {kwargs['path']} db {kwargs.get('db', 0)}"
    if "service_name" in kwargs or hasattr(client.connection_pool, "service_name"):
        name = getattr(client.connection_pool, "service_name", "?")
        return f"Redis master {name!r} db {kwargs.get('db', 0)}"
    host = kwargs.get("host", "localhost")
    return f"Redis at {host}:{kwargs.get('port', 6379)} db {kwargs.get('db', 0)}"


class RedisStore(Store):
    """The :class:`~relay.store.base.Store` in Redis at ``url``.

    Every key lives under ``{prefix}:`` (the prefix is the hash tag).
    ``client`` replaces the client the URL would open; it is the caller's to
    configure and to close. Thread-safe: redis-py keeps a pool of
    connections. Any Redis error becomes
    :class:`~relay.errors.StoreUnavailable`, and the store works again as soon
    as Redis does, without a restart.
    """

    def __init__(
        self, url: str, prefix: str = "relay", *, client: redis.Redis | None = None
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                "the Redis key prefix must be non-empty text without braces "
                f"(it becomes the hash tag); got {prefix!r}"
            )
        self.prefix = prefix
        self._own_client = client is None
        self._client = client if client is not None else _connect(url)
        self._where = _describe(self._client)

        tag = "{" + prefix + "}:"
        self._key_prefix = tag + "key:"
        self._msg_prefix = tag + "msg:"
        self._job_prefix = tag + "job:"
        self._queue = tag + "queue"
        self._leases = tag + "leases"
        self._scheduled = tag + "scheduled"
        self._dead = tag + "dead"
        self._budget = tag + "budget"
        self._queue_keys = [self._queue, self._leases, self._scheduled, self._dead]

        def register(script: str) -> Script:
            return self._client.register_script(script.replace("$GROUP", GROUP))

        self._observe = register(lua.OBSERVE)
        self._attach = register(lua.ATTACH)
        self._lease = register(lua.LEASE)
        self._release = register(lua.RELEASE)
        self._list = register(lua.LIST)
        self._requeue = register(lua.REQUEUE)
        self._purge = register(lua.PURGE)
        self._stats = register(lua.STATS)
        self._take_budget = register(lua.BUDGET)
        self._prune = register(lua.PRUNE)
        self._next_prune = 0.0

    @contextmanager
    def _redis(self, what: str) -> Iterator[None]:
        """Translate every redis-py error into StoreUnavailable."""
        try:
            yield
        except redis.RedisError as e:
            raise StoreUnavailable(
                f"{self._where} could not {what}: {type(e).__name__}: {e}"
            ) from e

    # dedup state

    def observe(self, obs: Observation, now: float) -> Outcome:
        """Decide, update the key and enqueue in one script, atomic across
        every replica: one round trip for a duplicate, two for a new problem
        (the job is only sent when it is needed). See :meth:`Store.observe`."""
        job_id = uuid.uuid4().hex
        key = self._key_prefix + obs.key
        args = [
            repr(now),
            "1" if obs.firing else "0",
            obs.rule,
            obs.severity,
            repr(now + obs.dedup_window),
            _ttl_ms(obs.dedup_window),
            repr(now + obs.reopen_window),
            _ttl_ms(obs.reopen_window),
            job_id,
            "",
            obs.key,
            self._job_prefix,
            BATCH,
        ]
        keys = [key, self._job_prefix + job_id, self._queue, self._scheduled]
        with self._redis("record an observation"):
            # first without the job: a duplicate (the storm case) is decided
            # in one round trip and never encodes or ships it; a new problem
            # takes a second call that decides again, atomically, with it
            reply = self._observe(keys=keys, args=args)
            if _text(reply[0]) == "need_job":
                args[9] = _dump(obs.job)
                reply = self._observe(keys=keys, args=args)

        decision = _text(reply[0])
        fields = _pairs(reply[2])
        return Outcome(
            decision=cast(Decision, decision),
            state=_key_state(obs.key, fields) if fields else None,
            job_id=_text(reply[1]) or None,
        )

    def get(self, key: str, now: float) -> KeyState | None:
        """The live state of ``key``, or None when unknown or expired."""
        with self._redis("read a dedup key"):
            raw = self._client.hgetall(self._key_prefix + key)
        fields = {_text(k): _text(v) for k, v in cast(dict[Any, Any], raw).items()}
        if not fields or float(fields["expires_at"]) <= now:
            return None
        return _key_state(key, fields)

    def attach_ticket(self, key: str, ticket_id: str, url: str | None) -> None:
        """Record the ticket created for ``key``; a pending key becomes open.
        A key Redis has already dropped is not created again."""
        with self._redis("record a ticket"):
            self._attach(keys=[self._key_prefix + key], args=[ticket_id, url or ""])

    def message_seen(self, message_id: str, now: float) -> bool:
        """Whether a sender's delivery id was already processed."""
        with self._redis("look up a delivery id"):
            value = self._client.get(self._msg_prefix + message_id)
        return value is not None and float(_text(value)) > now

    def remember_message(self, message_id: str, ttl: float, now: float) -> None:
        """Remember a processed delivery id for ``ttl`` seconds (again: the
        time is extended)."""
        with self._redis("remember a delivery id"):
            self._client.set(
                self._msg_prefix + message_id, repr(now + ttl), px=_ttl_ms(ttl)
            )

    # delivery queue

    def lease(
        self, consumer: str, now: float, lease: float, count: int = 1
    ) -> list[Job]:
        """Lease up to ``count`` due jobs: lapsed leases first, then new
        stream entries, in the order they became due; due retries join the
        stream in the same script."""
        if count < 1:
            return []
        args: list[str | int] = [
            consumer,
            repr(now),
            repr(now + lease),
            count,
            self._job_prefix,
            BATCH,
        ]
        with self._redis("lease jobs"):
            # before the lease, so that a failure here cannot strand jobs
            # leased to a caller that never saw them
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL
                self._prune(keys=[self._queue], args=[CONSUMER_IDLE_MS])
            reply = self._lease(keys=self._queue_keys[:3], args=args)
        return [
            _job(_pairs(fields), receipt=f"{_text(entry)}|{_text(token)}")
            for entry, token, fields in reply
        ]

    def _release_job(
        self,
        action: str,
        job: Job,
        at: float = 0.0,
        error: str = "",
        payload: dict[str, Any] | None = None,
    ) -> None:
        entry, _, token = (job.receipt or "").partition("|")
        args = [
            action,
            entry,
            token,
            repr(at),
            error,
            _dump(payload) if payload is not None else "",
            job.id,
        ]
        keys = [self._queue, self._leases, self._job_prefix + job.id]
        with self._redis(f"{action} a job"):
            done = self._release(keys=keys + self._queue_keys[2:], args=args)
        if not done:
            # the lease ran out and another consumer holds the job now, or
            # an operator purged it: its new holder's work must stand
            log.warning(
                "store.stale_receipt",
                extra={"action": action, "job": job.id, "key": job.key},
            )

    def ack(self, job: Job) -> None:
        """The job is done: remove it. A no-op (logged) when the lease has
        passed to another consumer or the job is gone."""
        self._release_job("ack", job)

    def retry(
        self, job: Job, at: float, error: str, payload: dict[str, Any] | None = None
    ) -> None:
        """Schedule the job for ``at``, one more attempt counted. A no-op
        (logged) when the lease has passed to another consumer."""
        self._release_job("retry", job, at, error, payload)

    def dead_letter(self, job: Job, error: str, now: float) -> None:
        """Move the job to the dead-letter stream, one more attempt counted.
        A no-op (logged) when the lease has passed to another consumer."""
        self._release_job("dead", job, now, error)

    def jobs(self, queue: QueueName, limit: int = 100) -> list[Job]:
        """The jobs of one queue, oldest first (scheduled ones soonest due
        first), without receipts."""
        _check_queue(queue)
        if limit < 1:
            return []
        with self._redis("list jobs"):
            reply = self._list(
                keys=[self._queue, self._scheduled, self._dead],
                args=[queue, limit, self._job_prefix],
            )
        return [_job(_pairs(fields)) for fields in reply]

    def requeue_dead(self, job_id: str | None, now: float) -> int:
        """Move one dead letter (or all) back to the pending queue with a
        fresh maximum age and a fresh count of attempts; the last error is
        kept for the record. Returns how many moved."""
        moved = 0
        with self._redis("requeue dead letters"):
            while True:
                done, seen = self._requeue(
                    keys=[self._dead, self._queue],
                    args=[repr(now), self._job_prefix, job_id or "", BATCH],
                )
                moved += int(done)
                if job_id is not None or int(seen) < BATCH:
                    return moved

    def purge(self, queue: QueueName) -> int:
        """Delete every job of one queue, leased ones included, a batch per
        script. Returns how many were deleted."""
        _check_queue(queue)
        deleted = 0
        with self._redis(f"purge the {queue} queue"):
            while True:
                done, seen = self._purge(
                    keys=self._queue_keys, args=[queue, self._job_prefix, BATCH]
                )
                deleted += int(done)
                if int(seen) < BATCH:
                    return deleted

    def stats(self, now: float) -> QueueStats:
        """Queue depths (leased jobs count in ``pending`` too), the jobs
        under a lease that still runs, and how long the longest-waiting due
        job has waited."""
        with self._redis("read queue statistics"):
            reply = self._stats(
                keys=self._queue_keys, args=[repr(now), self._job_prefix]
            )
        pending, scheduled, dead, leased, oldest = reply
        oldest_text = _text(oldest)
        return QueueStats(
            pending=int(pending),
            scheduled=int(scheduled),
            dead=int(dead),
            leased=int(leased),
            oldest_pending_age=max(0.0, now - float(oldest_text))
            if oldest_text
            else 0.0,
        )

    # shared API budget

    def take_budget(self, limit_per_minute: int, now: float) -> float:
        """Take one slot of the API budget, a sliding minute shared by every
        replica; returns 0.0, or the seconds until the oldest call in the
        window leaves it."""
        if limit_per_minute < 1:
            raise ValueError(
                f"limit_per_minute must be at least 1; got {limit_per_minute}"
            )
        args: list[str | int] = [
            repr(now),
            repr(now - BUDGET_WINDOW),
            limit_per_minute,
            uuid.uuid4().hex,
            _ttl_ms(BUDGET_WINDOW),
        ]
        with self._redis("take from the API budget"):
            oldest = _text(self._take_budget(keys=[self._budget], args=args))
        if not oldest:
            return 0.0
        # the oldest call leaves the window one minute after it was made
        return max(float(oldest) + BUDGET_WINDOW - now, 0.001)

    # lifecycle

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        with self._redis("answer a ping"):
            self._client.ping()

    def close(self) -> None:
        """Close the connections this store opened; an injected client is
        left to its owner."""
        if self._own_client:
            with self._redis("close its connections"):
                self._client.close()
