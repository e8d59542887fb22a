"""Delivery: lease due jobs, render them, create the tickets, record them.

Worker threads run in every server process (``relay serve``) or alone
(``relay worker``). A job is retried with backoff as the DoiT client
classifies its errors, for up to ``delivery.max_age``, then dead-lettered.

The DoiT API has no idempotency key, so a create whose outcome is unknown is
never repeated blindly. Before every create the worker leaves an in-flight
mark in the store; a job that comes back with the mark still there (its
worker crashed mid-create) or that ended in an ambiguous answer is first
reconciled: the worker lists the tickets created since the attempt and
adopts one with the same subject instead of creating another.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay import metrics
from relay.alert import Alert
from relay.doit import (
    AmbiguousError,
    DoitClient,
    DoitError,
    PermanentError,
    RetryableError,
    Ticket,
    TicketRequest,
)
from relay.errors import StoreUnavailable
from relay.store.base import Job

if TYPE_CHECKING:
    from relay.app import Relay
    from relay.render import RenderedTicket, Renderer

log = logging.getLogger(__name__)

# how far back, before the recorded attempt, a reconciliation looks: the
# API's clock and ours may disagree a little
RECONCILE_SLACK = 300.0
# after an ambiguous answer, give the API a moment before listing
AMBIGUOUS_RETRY_DELAY = 5.0
IDLE_SLEEP_MAX = 1.0


class Delivery:
    """Processes delivery jobs of one store. Thread-safe: several threads
    may call :meth:`run_once` on one instance.

    ``client`` is None in dry-run mode: tickets are rendered and logged,
    never sent. ``clock`` is the time every store call is given and
    ``sleep`` how a worker waits for the shared API budget; a test passes a
    fake pair. The default sleep wakes up at once on :meth:`stop`.
    """

    def __init__(
        self,
        relay: Relay,
        client: DoitClient | None,
        *,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.relay = relay
        self.store = relay.store
        self.settings = relay.config.delivery
        self.client = client
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock
        self.stopping = threading.Event()
        self.store_down = threading.Event()
        self.sleep: Callable[[float], None] = sleep or self._wait

    # the loop

    def run_once(self) -> int:
        """Lease and process at most one due job. Returns how many ran."""
        jobs = self.store.lease(self.consumer, self.clock(), self.settings.lease, 1)
        for job in jobs:
            self.process(job)
        return len(jobs)

    def drain(self, limit: int = 10_000) -> int:
        """Process due jobs until none is left (tests and ``relay worker
        --once``). Returns how many ran."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        return done

    def run_forever(self) -> None:
        """Run until :meth:`stop`; a store outage only pauses the loop."""
        idle = 0.05
        while not self.stopping.is_set():
            try:
                ran = self.run_once()
                if self.store_down.is_set():
                    self.store_down.clear()
                    log.info("delivery.store_recovered")
            except StoreUnavailable as e:
                metrics.STORE_ERRORS.labels("lease").inc()
                # once per outage, not once per poll of every thread
                if not self.store_down.is_set():
                    self.store_down.set()
                    log.warning("delivery.store_unavailable", extra={"error": str(e)})
                ran = 0
                idle = self.settings.poll_interval
            except Exception:
                log.exception("delivery.loop_failed")
                ran = 0
            if ran:
                idle = 0.05
                continue
            self.stopping.wait(idle)
            idle = min(max(idle * 2, 0.05), self.settings.poll_interval, IDLE_SLEEP_MAX)

    def stop(self) -> None:
        self.stopping.set()

    # one job

    def process(self, job: Job) -> None:
        """Deliver one leased job; never raises for a delivery failure."""
        payload = job.payload
        key = payload["key"]
        try:
            state = self.store.get(key, self.clock())
            if state is not None and state.ticket_id:
                # created already (a job requeued by hand, or a race lost
                # to another worker): nothing to do
                self.store.ack(job)
                metrics.DELIVERIES.labels("skipped").inc()
                return

            request = self.render(payload)
            if self.client is None:
                self.dry_run(job, request)
                return

            ticket = self.reconcile(job, request)
            adopted = ticket is not None
            if ticket is None:
                ticket = self.create(job, request)
            self.store.attach_ticket(key, ticket.id, ticket.url or None)
            self.store.ack(job)
        except StoreUnavailable as e:
            # the lease runs out and the job comes back; nothing is lost
            metrics.STORE_ERRORS.labels("delivery").inc()
            log.warning(
                "delivery.store_unavailable", extra={"job": job.id, "error": str(e)}
            )
            return
        except AmbiguousError as e:
            self.after_ambiguous(job, request, e)
            return
        except DoitError as e:
            self.after_failure(job, e)
            return
        except Exception as e:
            log.exception("delivery.unexpected", extra={"job": job.id, "key": key})
            self.after_failure(job, e)
            return

        outcome = "adopted" if adopted else "created"
        metrics.DELIVERIES.labels(outcome).inc()
        metrics.TICKETS.labels(payload.get("source", "")).inc()
        log.info(
            f"ticket.{outcome}",
            extra={
                "key": key,
                "rule": payload.get("route", {}).get("rule"),
                "ticket_id": ticket.id,
                "url": ticket.url,
                "attempts": job.attempts + 1,
            },
        )

    def render(self, payload: dict[str, Any]) -> TicketRequest:
        """The ticket a job asks for, rendered now from its templates."""
        fields, rendered = render_payload(self.relay.renderer, payload)
        return TicketRequest(
            subject=rendered.subject,
            body=rendered.body,
            severity=fields["severity"],
            platform=fields["platform"],
            category=fields["category"] or "",
            requester=fields["requester"],
        )

    def dry_run(self, job: Job, request: TicketRequest) -> None:
        log.info(
            "ticket.dry_run",
            extra={
                "key": job.payload["key"],
                "subject": request.subject,
                "body": request.body,
                "severity": request.severity,
                "platform": request.platform,
                "category": request.category,
            },
        )
        self.store.ack(job)
        metrics.DELIVERIES.labels("dry_run").inc()

    def reconcile(self, job: Job, request: TicketRequest) -> Ticket | None:
        """Find the ticket an earlier attempt may have created."""
        since = job.payload.get("ambiguous_since")
        if since is None and self.store.message_seen(self._mark(job), self.clock()):
            since = job.enqueued_at
        if since is None:
            return None
        assert self.client is not None
        since_ms = int((float(since) - RECONCILE_SLACK) * 1000)
        self._take_budget()
        client = self.client
        found: list[Ticket] = self._timed(
            "list", lambda: client.list_tickets(since_ms=since_ms)
        )
        for ticket in found:
            if _same_ticket(ticket, request):
                log.info(
                    "ticket.reconciled",
                    extra={"key": job.payload["key"], "ticket_id": ticket.id},
                )
                return ticket
        log.info("ticket.reconcile_none", extra={"key": job.payload["key"]})
        return None

    def create(self, job: Job, request: TicketRequest) -> Ticket:
        assert self.client is not None
        self._take_budget()
        ttl = self.settings.max_age + self.settings.lease
        self.store.remember_message(self._mark(job), ttl, self.clock())
        client = self.client
        ticket: Ticket = self._timed("create", lambda: client.create_ticket(request))
        return ticket

    # failures

    def after_ambiguous(
        self, job: Job, request: TicketRequest, error: DoitError
    ) -> None:
        now = self.clock()
        if now - job.enqueued_at >= self.settings.max_age:
            # an API that never gives a clear answer must not keep a job
            # (and its list and create calls) alive forever
            self.after_failure(job, error)
            return
        payload = dict(job.payload)
        payload.setdefault("ambiguous_since", now)
        log.warning(
            "ticket.ambiguous",
            extra={"key": payload["key"], "job": job.id, "error": str(error)},
        )
        # backed off like any retry, so that repeated timeouts slow down
        delay = max(AMBIGUOUS_RETRY_DELAY, self.backoff(job.attempts))
        self._reschedule(job, now + delay, str(error), payload)

    def after_failure(self, job: Job, error: Exception) -> None:
        now = self.clock()
        message = str(error) or type(error).__name__
        too_old = now - job.enqueued_at >= self.settings.max_age
        if isinstance(error, PermanentError) or too_old:
            reason = (
                "permanent error" if isinstance(error, PermanentError) else "too old"
            )
            log.error(
                "delivery.dead_letter",
                extra={
                    "key": job.payload["key"],
                    "job": job.id,
                    "error": message,
                    "reason": reason,
                },
            )
            try:
                self.store.dead_letter(job, message, now)
            except StoreUnavailable:
                metrics.STORE_ERRORS.labels("dead_letter").inc()
                return
            metrics.DELIVERIES.labels("dead").inc()
            return

        delay = self.backoff(job.attempts)
        if isinstance(error, RetryableError) and error.retry_after:
            delay = min(max(delay, error.retry_after), self.settings.backoff_max)
        log.warning(
            "delivery.retry",
            extra={
                "key": job.payload["key"],
                "job": job.id,
                "error": message,
                "attempt": job.attempts + 1,
                "delay_seconds": round(delay, 1),
            },
        )
        self._reschedule(job, now + delay, message, None)

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter, capped."""
        base = self.settings.backoff_initial * (2.0 ** min(attempts, 20))
        capped = min(base, self.settings.backoff_max)
        return capped * random.uniform(0.5, 1.0)

    def _reschedule(
        self, job: Job, at: float, error: str, payload: dict[str, Any] | None
    ) -> None:
        try:
            self.store.retry(job, at, error, payload)
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels("retry").inc()
            return
        metrics.DELIVERIES.labels("retry").inc()

    # helpers

    def _mark(self, job: Job) -> str:
        # one mark per attempt: an attempt that failed cleanly (a 503, a
        # refused connection) counts one more attempt, so its mark does not
        # send the next one looking; a crash counts none, so it does
        return f"inflight:{job.id}:{job.attempts}"

    def _wait(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _take_budget(self) -> None:
        """Wait for a slot of the API budget shared by every replica."""
        limit = self.relay.config.doit.rate_limit_per_minute
        while True:
            wait = self.store.take_budget(limit, self.clock())
            if wait <= 0:
                return
            if self.stopping.is_set():
                raise StoreUnavailable("shutting down while waiting for API budget")
            # through self.sleep, so that the wait follows the same clock as
            # the budget: a fake clock that never moved would spin here
            self.sleep(min(wait, 5.0))

    def _timed(self, method: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        status = "error"
        try:
            result = call()
            status = "2xx"
            return result
        except DoitError as e:
            status = str(e.status) if e.status else "error"
            raise
        finally:
            metrics.API_CALLS.labels(method, status).inc()
            metrics.API_LATENCY.labels(method).observe(time.perf_counter() - started)


def render_payload(
    renderer: Renderer, payload: dict[str, Any]
) -> tuple[dict[str, Any], RenderedTicket]:
    """Render a job payload (see :func:`relay.dedup.job_payload`): the
    ticket's fields and its subject and body. Never raises for a template
    problem: the renderer falls back to the default template."""
    route = payload["route"]
    alerts = [Alert.from_dict(a) for a in payload["alerts"]]
    fields = {
        "platform": route["platform"],
        "category": route["category"],
        "severity": route["severity"],
        "requester": route.get("requester") or "",
        "rule": route["rule"],
        "dedup_key": payload["key"],
    }
    context = renderer.build_context(alerts, payload.get("group", {}), fields)
    rendered = renderer.render_ticket(
        route.get("template") or payload["source"],
        route.get("subject"),
        route.get("body"),
        context,
        payload["source"],
    )
    return fields, rendered


def _same_ticket(ticket: Ticket, request: TicketRequest) -> bool:
    """Whether a listed ticket is the one ``request`` would create: the same
    subject, and the same severity and platform where the list shows them."""
    if ticket.subject.strip() != request.subject.strip():
        return False
    if ticket.severity and ticket.severity != request.severity:
        return False
    return not ticket.platform or ticket.platform == request.platform


class WorkerPool:
    """Delivery threads of one process."""

    def __init__(self, delivery: Delivery, threads: int) -> None:
        self.delivery = delivery
        self.threads = [
            threading.Thread(
                target=delivery.run_forever, name=f"relay-delivery-{i}", daemon=True
            )
            for i in range(threads)
        ]

    def start(self) -> WorkerPool:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.delivery.stop()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def make_client(relay: Relay) -> DoitClient | None:
    """The client delivery uses: None in dry-run. The worker schedules its
    own retries through the store, so the client tries each call once."""
    if relay.config.dry_run:
        return None
    return DoitClient.from_config(relay.config.doit, max_attempts=1)


def start_workers(relay: Relay, threads: int | None = None) -> WorkerPool | None:
    """Start the delivery threads of this process (none when configured
    with zero workers)."""
    count = relay.config.delivery.workers if threads is None else threads
    if count <= 0:
        return None
    delivery = Delivery(relay, make_client(relay))
    log.info(
        "delivery.started",
        extra={"threads": count, "dry_run": relay.config.dry_run},
    )
    return WorkerPool(delivery, count).start()
