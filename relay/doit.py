"""Client of the DoiT Support API: ``tickets.create`` and ``tickets.list``.

Every failure leaves this module as one of three :class:`DoitError`
families, chosen by what a caller may safely do next:

* :class:`RetryableError`: nothing was created; the same call may be repeated.
* :class:`PermanentError`: repeating the call cannot help (bad input, bad key,
  the support system refused).
* :class:`AmbiguousError`: a create may or may not have reached DoiT. The API
  has no idempotency key, so sending it again could open a second ticket; the
  caller looks for the ticket with :meth:`DoitClient.list_tickets` instead.

Retryable failures are retried inside a call, with exponential backoff and
full jitter, honouring ``Retry-After``. The API key never appears in a log
line or an error message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3.exceptions

from relay import __version__
from relay.errors import RelayError
from relay.logs import redact

if TYPE_CHECKING:
    from relay.config import DoitConfig

log = logging.getLogger(__name__)

TICKETS_PATH = "/support/v1/tickets"
MAX_PAGE_SIZE = 100
# an error body is quoted in messages and logs; a proxy's HTML page is not
# worth more than this
_MAX_MESSAGE_CHARS = 300
# a server that keeps answering the same page token would loop forever
_MAX_PAGES = 10_000

Operation = Literal["create", "list"]


# -- errors ----------------------------------------------------------------


class DoitError(RelayError):
    """A DoiT API call failed. Base of the three families below.

    ``status`` is the HTTP status (``None`` when no answer arrived),
    ``api_message`` the error text the API sent, and ``retry_after`` the
    wait in seconds the API asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        api_message: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.api_message = api_message
        self.retry_after = retry_after


class RetryableError(DoitError):
    """A retry helps: the API was busy or unreachable, and nothing was created."""


class PermanentError(DoitError):
    """A retry never helps: the request, the key or the permission is wrong."""


class AmbiguousError(DoitError):
    """A retry may duplicate: the create may have succeeded; look it up instead."""


# -- values ----------------------------------------------------------------


@dataclass(frozen=True)
class TicketRequest:
    """What to send to ``tickets.create``. An empty ``requester`` is left out
    of the request, as a personal API key requires."""

    subject: str
    body: str
    severity: str
    platform: str
    category: str
    requester: str = ""


@dataclass(frozen=True)
class Ticket:
    """A ticket as the API returned it. ``id`` is a string whatever JSON type
    the API used; ``created_ms`` is milliseconds since the epoch, when known;
    ``raw`` is the whole object."""

    id: str
    subject: str
    severity: str
    platform: str
    category: str
    status: str
    url: str
    requester: str
    created_ms: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Ticket:
        """Build a ticket from an API object, accepting both spellings of the
        link (``url``, ``urlUI``) and of the creation time (``created``,
        ``createTime``)."""

        def text(*names: str) -> str:
            for name in names:
                value = data.get(name)
                if value is not None and value != "":
                    return str(value)
            return ""

        created = data.get("created", data.get("createTime"))
        return cls(
            id=text("id"),
            subject=text("subject"),
            severity=text("severity", "priority"),
            platform=text("platform"),
            category=text("category", "product"),
            status=text("status"),
            url=text("url", "urlUI"),
            requester=text("requester"),
            created_ms=_milliseconds(created),
            raw=data,
        )

    def created_at(self) -> datetime | None:
        """The creation time as an aware UTC datetime, when known."""
        if self.created_ms is None:
            return None
        return datetime.fromtimestamp(self.created_ms / 1000, UTC)


def _milliseconds(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(float(str(value)))
    except ValueError:
        return None


# -- client ----------------------------------------------------------------


class DoitClient:
    """A client of the DoiT Support API over one pooled HTTP session.

    ``before_attempt`` is called before every HTTP attempt, retries and list
    pages included; the delivery worker uses it to take a slot of the rate
    budget shared by every replica. ``sleep`` is how the client waits between
    attempts (a test passes a recorder). Calls keep no state of their own;
    they share the pooled session, which sets no cookies here. Call
    :meth:`close` when done.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        tenant_id: str = "",
        category_field: Literal["category", "product"] = "category",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_initial: float = 2.0,
        backoff_max: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        before_attempt: Callable[[], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more; got {max_attempts}")
        self.base_url = base_url.rstrip("/")
        self.category_field = category_field
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self._sleep = sleep
        self._before_attempt = before_attempt
        self._owns_session = session is None
        self._session = session or requests.Session()
        self._session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"relay/{__version__}",
            }
        )
        if tenant_id:
            self._session.headers["X-Tenant-Id"] = tenant_id

    @classmethod
    def from_config(cls, cfg: DoitConfig, **overrides: Any) -> DoitClient:
        """A client built from the ``doit`` section of the configuration;
        keyword arguments override it (``sleep``, ``before_attempt``, …)."""
        options: dict[str, Any] = {
            "tenant_id": cfg.tenant_id,
            "category_field": cfg.category_field,
            "connect_timeout": cfg.connect_timeout,
            "read_timeout": cfg.read_timeout,
            "max_attempts": cfg.max_attempts,
            "backoff_initial": cfg.backoff_initial,
            "backoff_max": cfg.backoff_max,
        }
        options.update(overrides)
        return cls(cfg.api_url, cfg.api_key, **options)

    def close(self) -> None:
        """Release the pooled connections (of a session this client made)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> DoitClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the two API methods --

    def create_ticket(self, req: TicketRequest) -> Ticket:
        """Open a ticket and return it as the API answered.

        Raises RetryableError when nothing was created after every attempt,
        PermanentError when the API refused, and AmbiguousError, at once and
        without another attempt, when the ticket may have been created.
        """
        ticket: dict[str, str] = {
            "subject": req.subject,
            "body": req.body,
            "severity": req.severity,
            "platform": req.platform,
            self.category_field: req.category,
        }
        if req.requester:
            ticket["requester"] = req.requester

        response = self._call("create", "POST", json={"ticket": ticket})
        data = _json_object(response)
        # the documentation answers the Ticket itself; tolerate an envelope
        if (
            data is not None
            and "id" not in data
            and isinstance(data.get("ticket"), dict)
        ):
            data = data["ticket"]
        if data is None or data.get("id") in (None, ""):
            # the API said yes but the ticket id is unreadable: sending again
            # would open a second ticket, so the caller must look it up
            raise AmbiguousError(
                f"DoiT API answered {response.status_code} to a create without a "
                f"readable ticket id: {_excerpt(response.text)}",
                status=response.status_code,
            )

        created = Ticket.from_api(data)
        log.info(
            "doit.ticket_created",
            extra={"ticket_id": created.id, "severity": created.severity},
        )
        return created

    def list_tickets(
        self,
        *,
        filter: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
        limit: int | None = None,
    ) -> list[Ticket]:
        """Tickets newest first, following ``pageToken`` until the API
        returns none, or until ``limit`` tickets were read.

        ``filter`` is the API's ``key:value|key:value`` syntax; ``since_ms``
        and ``until_ms`` bound the creation time (ms, inclusive).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(
                f"page_size must be between 1 and {MAX_PAGE_SIZE}; got {page_size}"
            )
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be zero or more; got {limit}")

        params: dict[str, str | int] = {}
        if filter:
            params["filter"] = filter
        if since_ms is not None:
            params["minCreationTime"] = since_ms
        if until_ms is not None:
            params["maxCreationTime"] = until_ms

        tickets: list[Ticket] = []
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            wanted = (
                page_size if limit is None else min(page_size, limit - len(tickets))
            )
            if wanted <= 0:
                break
            params["maxResults"] = wanted

            response = self._call("list", "GET", params=params)
            data = _json_object(response)
            items = data.get("tickets") if data is not None else None
            if data is None or not isinstance(items, list | None):
                raise PermanentError(
                    f"DoiT API answered {response.status_code} with something "
                    f"other than a ticket list: {_excerpt(response.text)}",
                    status=response.status_code,
                )
            tickets += [Ticket.from_api(i) for i in items or [] if isinstance(i, dict)]

            # the same filter goes with every page; only the token changes
            token = data.get("pageToken")
            if not token or not isinstance(token, str) or token in seen_tokens:
                break
            seen_tokens.add(token)
            params["pageToken"] = token

        return tickets if limit is None else tickets[:limit]

    # -- transport --

    def _call(
        self, operation: Operation, method: str, **kwargs: Any
    ) -> requests.Response:
        """Send one API request, retrying only what is safe to retry."""
        url = self.base_url + TICKETS_PATH
        attempt = 1
        while True:
            if self._before_attempt is not None:
                self._before_attempt()
            started = time.monotonic()
            try:
                response = self._send(operation, method, url, **kwargs)
                _raise_for_status(operation, response)
            except RetryableError as e:
                if attempt >= self.max_attempts:
                    raise
                wait = self._backoff(attempt, e.retry_after)
                log.warning(
                    "doit.retry",
                    extra={
                        "operation": operation,
                        "attempt": attempt,
                        "status": e.status,
                        "wait_s": round(wait, 3),
                        "error": str(e),
                    },
                )
                self._sleep(wait)
                attempt += 1
                continue

            log.debug(
                "doit.response",
                extra={
                    "operation": operation,
                    "status": response.status_code,
                    "attempt": attempt,
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                },
            )
            return response

    def _send(
        self, operation: Operation, method: str, url: str, **kwargs: Any
    ) -> requests.Response:
        """One HTTP exchange; ``requests`` errors become DoitErrors here."""
        try:
            return self._session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.ConnectTimeout as e:
            raise RetryableError(
                f"DoiT API at {self.base_url} did not accept a connection within "
                f"{self.timeout[0]:g} s"
            ) from e
        except requests.ReadTimeout as e:
            message = (
                f"DoiT API at {self.base_url} did not answer within "
                f"{self.timeout[1]:g} s"
            )
            if operation == "create":
                raise AmbiguousError(
                    message + " after the ticket was sent; it may have been created"
                ) from e
            raise RetryableError(message) from e
        except requests.exceptions.SSLError as e:
            raise PermanentError(
                f"TLS with the DoiT API at {self.base_url} failed: {_reason(e)}"
            ) from e
        except requests.exceptions.ProxyError as e:
            raise RetryableError(
                f"the proxy to the DoiT API at {self.base_url} failed: {_reason(e)}"
            ) from e
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as e:
            if _never_sent(e):
                raise RetryableError(
                    f"cannot connect to the DoiT API at {self.base_url}: {_reason(e)}"
                ) from e
            message = f"the DoiT API at {self.base_url} dropped the connection"
            if operation == "create":
                raise AmbiguousError(
                    message + " after the ticket was sent; it may have been created"
                ) from e
            raise RetryableError(f"{message}: {_reason(e)}") from e
        except requests.RequestException as e:
            raise PermanentError(
                f"cannot call the DoiT API at {self.base_url}: {_reason(e)}"
            ) from e

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``.

        The API's ``Retry-After`` wins, clamped to 1 s .. backoff_max so that
        a hostile or broken value can neither spin nor stall the caller.
        Otherwise full jitter between backoff_initial and a ceiling that
        doubles per attempt up to backoff_max, so that replicas which failed
        together do not retry together.
        """
        if retry_after is not None:
            return min(max(retry_after, 1.0), self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_initial * 2**attempt)
        return random.uniform(self.backoff_initial, ceiling)


# -- translation helpers -----------------------------------------------------


def _raise_for_status(operation: Operation, response: requests.Response) -> None:
    """Turn a non-2xx answer into the DoitError family a caller can act on."""
    status = response.status_code
    if 200 <= status < 300:
        return

    api_message = error_message(response)
    message = f"DoiT API answered {status}: {api_message}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    details: dict[str, Any] = {
        "status": status,
        "api_message": api_message,
        "retry_after": retry_after,
    }
    if status in (429, 503):
        raise RetryableError(message, **details)
    if status in (504, 524):
        # a gateway gave up waiting; the server behind it may still have
        # created the ticket
        if operation == "create":
            raise AmbiguousError(message, **details)
        raise RetryableError(message, **details)
    # 400, 401, 403, 404, 502 (the support system refused) and anything else
    # unexpected: repeating the same request would get the same answer
    raise PermanentError(message, **details)


def error_message(response: requests.Response) -> str:
    """The API's error text: JSON ``error``, then ``message``, then
    ``detail``, else the raw body, shortened."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for name in ("error", "message", "detail"):
            value = data.get(name)
            if isinstance(value, dict):
                # some gateways nest {"error": {"message": ...}}
                value = value.get("message") or json.dumps(value)
            if value:
                return _excerpt(str(value))
    text = response.text.strip()
    return _excerpt(text) if text else (response.reason or "no error text")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP
    date. ``None`` when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
    return redact(text)


def _never_sent(error: requests.RequestException) -> bool:
    """Whether a connection error happened before any byte of the request
    left: refused, unresolvable or timed-out connections. A dropped
    connection or a broken answer means the request may have arrived."""
    cause = error.args[0] if error.args else None
    if isinstance(cause, urllib3.exceptions.MaxRetryError):
        cause = cause.reason
    return isinstance(
        cause,
        urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError,
    )


def _reason(error: requests.RequestException) -> str:
    """A short cause, without urllib3's pool and object descriptions."""
    cause: Any = error.args[0] if error.args else error
    if isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason:
        cause = cause.reason
    if isinstance(cause, urllib3.exceptions.NameResolutionError):
        return "the host name does not resolve"
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        text = str(cause).lower()
        if "refused" in text:
            return "connection refused"
        return _excerpt(str(cause).split(": ", 1)[-1])
    return _excerpt(str(cause))
