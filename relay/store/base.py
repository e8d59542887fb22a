"""The store interface: dedup state and the durable delivery queue.

Two implementations pass one contract suite (``tests/store_contract.py``):
SQLite (:mod:`relay.store.sqlite`), the embedded default, and Redis
(:mod:`relay.store.redis`), shared by any number of replicas.

Every method may raise :class:`relay.errors.StoreUnavailable` when the
backing service cannot be reached; no other foreign exception escapes.
Times are seconds since the epoch (floats) and are passed in by the caller,
so that tests can move the clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["queued", "duplicate", "resolved", "ignored", "dropped"]
KeyStateName = Literal["pending", "open", "resolved"]
QueueName = Literal["pending", "scheduled", "dead"]


@dataclass
class Observation:
    """One sighting of a problem, to be decided on and possibly enqueued.

    ``dedup_window`` is how long a pending or open key lives after its last
    sighting; ``reopen_window`` is how long a resolved key keeps suppressing
    re-fires. ``job`` is the JSON-safe payload enqueued, in the same atomic
    step, when the decision is ``queued``.
    """

    key: str
    firing: bool
    rule: str
    severity: str
    dedup_window: float
    reopen_window: float
    job: dict[str, Any] = field(default_factory=dict)


@dataclass
class KeyState:
    """What the store knows of one dedup key."""

    key: str
    state: KeyStateName
    first_seen: float
    last_seen: float
    expires_at: float
    count: int = 1
    severity: str = ""
    rule: str = ""
    ticket_id: str | None = None
    ticket_url: str | None = None


@dataclass
class Outcome:
    """The decision for one observation, the key after it, and the job id
    when a create was enqueued."""

    decision: Decision
    state: KeyState | None = None
    job_id: str | None = None


@dataclass
class Job:
    """A delivery job. ``receipt`` identifies the current lease and is
    opaque to callers; ``enqueued_at`` starts the job's maximum age."""

    id: str
    key: str
    payload: dict[str, Any]
    attempts: int = 0
    enqueued_at: float = 0.0
    next_at: float = 0.0
    last_error: str | None = None
    receipt: str | None = None


@dataclass
class QueueStats:
    pending: int
    scheduled: int
    dead: int
    leased: int
    oldest_pending_age: float


class Store(ABC):
    """Dedup state, the delivery queue and the shared API budget."""

    # dedup state

    @abstractmethod
    def observe(self, obs: Observation, now: float) -> Outcome:
        """Decide on one sighting and enqueue its job, atomically.

        - firing, no live key: record ``pending``, enqueue ``obs.job``:
          ``queued``;
        - firing, key pending or open: count it, extend its life by the
          dedup window: ``duplicate``;
        - firing, key resolved and still inside its reopen window: the same
          problem is back; the key returns to open (pending while it has no
          ticket), extended by the dedup window: ``duplicate``;
        - resolved, key pending or open: mark it resolved, to expire after
          the reopen window: ``resolved``;
        - resolved, no live key or already resolved: ``ignored``.

        An expired key counts as no key.
        """

    @abstractmethod
    def get(self, key: str, now: float) -> KeyState | None:
        """The live state of ``key``, or None when unknown or expired."""

    @abstractmethod
    def attach_ticket(self, key: str, ticket_id: str, url: str | None) -> None:
        """Record the ticket created for ``key``; a pending key becomes open.
        A key that has expired meanwhile is left alone."""

    @abstractmethod
    def message_seen(self, message_id: str, now: float) -> bool:
        """Whether a sender's delivery id was already processed."""

    @abstractmethod
    def remember_message(self, message_id: str, ttl: float, now: float) -> None:
        """Remember a processed delivery id for ``ttl`` seconds."""

    # delivery queue

    @abstractmethod
    def lease(
        self, consumer: str, now: float, lease: float, count: int = 1
    ) -> list[Job]:
        """Lease up to ``count`` due jobs for ``lease`` seconds.

        Due means: never leased, scheduled for ``now`` or earlier, or leased
        by a consumer whose lease has run out (a crashed worker). A job is
        held by one consumer at a time.
        """

    @abstractmethod
    def ack(self, job: Job) -> None:
        """The job is done: remove it."""

    @abstractmethod
    def retry(
        self, job: Job, at: float, error: str, payload: dict[str, Any] | None = None
    ) -> None:
        """Release the job to run again at ``at``, one more attempt counted,
        with ``error`` as its last error and ``payload`` replacing its own
        when given."""

    @abstractmethod
    def dead_letter(self, job: Job, error: str, now: float) -> None:
        """Give up on the job: move it to the dead letters, one more attempt
        counted, with ``error`` as its last error."""

    @abstractmethod
    def jobs(self, queue: QueueName, limit: int = 100) -> list[Job]:
        """The jobs in one queue, oldest first, for operators."""

    @abstractmethod
    def requeue_dead(self, job_id: str | None, now: float) -> int:
        """Move one dead letter (or all, when ``job_id`` is None) back to the
        pending queue with a fresh maximum age. Returns how many moved."""

    @abstractmethod
    def purge(self, queue: QueueName) -> int:
        """Delete every job of one queue. Returns how many were deleted."""

    @abstractmethod
    def stats(self, now: float) -> QueueStats:
        """Queue depths and the age of the oldest due job."""

    # shared API budget

    @abstractmethod
    def take_budget(self, limit_per_minute: int, now: float) -> float:
        """Take one slot of the API budget shared by every replica.

        Returns 0.0 when a slot was taken, otherwise the seconds to wait
        before asking again (nothing taken).
        """

    # lifecycle

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. The store is not used afterwards."""
