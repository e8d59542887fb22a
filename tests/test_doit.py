"""The DoiT client against the emulator over real HTTP; edge cases of the
transport with ``responses``."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
import urllib3.exceptions

from relay.config import DoitConfig
from relay.doit import (
    AmbiguousError,
    DoitClient,
    DoitError,
    PermanentError,
    RetryableError,
    Ticket,
    TicketRequest,
    parse_retry_after,
)
from relay.emulator import EmulatorServer
from relay.errors import RelayError

KEY = "sk-test-0123456789abcdef"
REQUEST = TicketRequest(
    subject="Pod restarts every few minutes",
    body="payments-api in prod-eu restarted 14 times in the last hour.",
    severity="high",
    platform="google_cloud_platform",
    category="containers___kubernetes__google_gke",
    requester="sre@example.com",
)


class Waits(list[float]):
    """A stand-in for time.sleep that records the waits instead."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_client(
    emulator: EmulatorServer, waits: Waits
) -> Iterator[Callable[..., DoitClient]]:
    """Clients of the emulator that record their waits rather than sleep."""
    made: list[DoitClient] = []

    def make(**options: Any) -> DoitClient:
        options.setdefault("sleep", waits)
        client = DoitClient(options.pop("base_url", emulator.url), KEY, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _request(**changes: Any) -> TicketRequest:
    fields = {**REQUEST.__dict__, **changes}
    return TicketRequest(**fields)


# -- create ------------------------------------------------------------------


def test_create_returns_the_ticket_the_api_created(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    ticket = make_client().create_ticket(REQUEST)

    assert ticket.id == "1"
    assert ticket.subject == REQUEST.subject
    assert ticket.severity == "high"
    assert ticket.platform == "google_cloud_platform"
    assert ticket.category == "containers___kubernetes__google_gke"
    assert ticket.status == "new"
    assert ticket.url == "https://console.doit.com/support/tickets/1"
    assert ticket.requester == "sre@example.com"
    assert ticket.created_ms == ticket.raw["createTime"]
    assert emulator.tickets()[0]["body"] == REQUEST.body


def test_create_sends_the_key_the_emulator_demands(waits: Waits) -> None:
    with EmulatorServer(api_key=KEY) as keyed:
        client = DoitClient(keyed.url, KEY, sleep=waits)
        assert client.create_ticket(REQUEST).id == "1"

        wrong = DoitClient(keyed.url, "not-the-key", sleep=waits)
        with pytest.raises(PermanentError, match=r"^DoiT API answered 401: ") as info:
            wrong.create_ticket(REQUEST)
        assert info.value.status == 401
        assert keyed.stats()["creates_attempted"] == 2
        client.close()
        wrong.close()


def test_create_leaves_out_an_empty_requester(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    make_client().create_ticket(_request(requester=""))

    assert emulator.tickets()[0]["requester"] == ""


def test_create_sends_product_when_configured(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    make_client(category_field="product").create_ticket(_request(category="GKE"))

    assert emulator.tickets()[0]["category"] == "GKE"


@responses.activate
def test_create_request_has_envelope_headers_and_no_empty_requester() -> None:
    url = "https://doit.test/support/v1/tickets"
    responses.post(url, json={"id": 7, "status": "new"}, status=200)

    client = DoitClient("https://doit.test/", KEY, tenant_id="cust-42")
    client.create_ticket(_request(requester=""))

    sent = responses.calls[0].request
    assert json.loads(sent.body or b"") == {
        "ticket": {
            "subject": REQUEST.subject,
            "body": REQUEST.body,
            "severity": "high",
            "platform": "google_cloud_platform",
            "category": "containers___kubernetes__google_gke",
        }
    }
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["X-Tenant-Id"] == "cust-42"
    assert sent.headers["User-Agent"].startswith("relay/")
    assert sent.headers["Content-Type"] == "application/json"


@responses.activate
def test_create_without_a_readable_id_is_ambiguous() -> None:
    responses.post(
        "https://doit.test/support/v1/tickets", body="<html>OK</html>", status=200
    )

    with pytest.raises(AmbiguousError, match="without a readable ticket id"):
        DoitClient("https://doit.test", KEY).create_ticket(REQUEST)
    assert len(responses.calls) == 1


def test_ticket_accepts_both_spellings_of_link_and_creation_time() -> None:
    ticket = Ticket.from_api(
        {"id": 12, "urlUI": "https://console/12", "created": 1714557600000}
    )
    listed = Ticket.from_api(
        {"id": "13", "url": "https://console/13", "createTime": "1714557600000"}
    )

    assert (ticket.id, ticket.url, ticket.created_ms) == (
        "12",
        "https://console/12",
        1714557600000,
    )
    assert (listed.id, listed.url, listed.created_ms) == (
        "13",
        "https://console/13",
        1714557600000,
    )
    assert ticket.created_at() == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert Ticket.from_api({"id": 1}).created_ms is None


# -- list --------------------------------------------------------------------


def test_list_follows_page_tokens_until_the_last_page(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    client = make_client()
    for n in range(7):
        client.create_ticket(_request(subject=f"alert {n}"))

    listed = client.list_tickets(page_size=2)

    assert [t.subject for t in listed] == [f"alert {n}" for n in range(6, -1, -1)]
    assert emulator.stats()["lists_attempted"] == 4


def test_list_keeps_the_filter_on_every_page(
    make_client: Callable[..., DoitClient],
) -> None:
    client = make_client()
    for n in range(6):
        client.create_ticket(_request(severity="high" if n % 2 else "low"))

    listed = client.list_tickets(filter="severity:high", page_size=1)

    assert [t.id for t in listed] == ["6", "4", "2"]


def test_list_stops_at_the_limit(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    client = make_client()
    for _ in range(5):
        client.create_ticket(REQUEST)

    listed = client.list_tickets(page_size=2, limit=3)

    assert [t.id for t in listed] == ["5", "4", "3"]
    assert emulator.stats()["lists_attempted"] == 2


def test_list_bounds_are_inclusive_milliseconds(
    make_client: Callable[..., DoitClient],
) -> None:
    client = make_client()
    first = client.create_ticket(REQUEST)
    last = client.create_ticket(REQUEST)
    assert first.created_ms is not None
    assert last.created_ms is not None

    both = client.list_tickets(since_ms=first.created_ms, until_ms=last.created_ms)
    before = client.list_tickets(until_ms=first.created_ms - 1)
    after = client.list_tickets(since_ms=last.created_ms + 1)

    assert [t.id for t in both] == ["2", "1"]
    assert before == []
    assert after == []


@responses.activate
def test_list_stops_when_the_server_repeats_a_page_token() -> None:
    url = "https://doit.test/support/v1/tickets"
    page = {"tickets": [{"id": 1}], "pageToken": "same", "rowCount": 9}
    responses.get(url, json=page)

    listed = DoitClient("https://doit.test", KEY).list_tickets()

    assert [t.id for t in listed] == ["1", "1"]
    assert len(responses.calls) == 2
    assert "pageToken=same" in (responses.calls[1].request.url or "")


@pytest.mark.parametrize("page_size", [0, 101])
def test_list_rejects_a_page_size_the_api_refuses(page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size must be between 1 and 100"):
        DoitClient("https://doit.test", KEY).list_tickets(page_size=page_size)


# -- error families -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "family", "attempts"),
    [
        (400, PermanentError, 1),
        (401, PermanentError, 1),
        (403, PermanentError, 1),
        (404, PermanentError, 1),
        (409, PermanentError, 1),
        (500, PermanentError, 1),
        (502, PermanentError, 1),
        (429, RetryableError, 3),
        (503, RetryableError, 3),
        (504, AmbiguousError, 1),
        (524, AmbiguousError, 1),
    ],
)
def test_create_errors_fall_into_the_family_that_says_what_to_do(
    make_client: Callable[..., DoitClient],
    emulator: EmulatorServer,
    status: int,
    family: type[DoitError],
    attempts: int,
) -> None:
    emulator.fault(status, count=10)

    with pytest.raises(family, match=rf"^DoiT API answered {status}: emulated") as e:
        make_client(max_attempts=3).create_ticket(REQUEST)

    assert type(e.value) is family
    assert isinstance(e.value, RelayError)
    assert e.value.status == status
    assert e.value.api_message == f"emulated fault: {status}"
    assert emulator.stats()["creates_attempted"] == attempts


@pytest.mark.parametrize(
    ("status", "family", "attempts"),
    [
        (400, PermanentError, 1),
        (502, PermanentError, 1),
        (429, RetryableError, 3),
        (503, RetryableError, 3),
        (504, RetryableError, 3),
        (524, RetryableError, 3),
    ],
)
def test_list_errors_fall_into_the_family_that_says_what_to_do(
    make_client: Callable[..., DoitClient],
    emulator: EmulatorServer,
    status: int,
    family: type[DoitError],
    attempts: int,
) -> None:
    emulator.fault(status, count=10, target="list")

    with pytest.raises(family, match=rf"^DoiT API answered {status}: "):
        make_client(max_attempts=3).list_tickets()

    assert emulator.stats()["lists_attempted"] == attempts


def test_a_list_timeout_at_the_gateway_is_retried_to_success(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    make_client().create_ticket(REQUEST)
    emulator.fault(524, count=2, target="list")

    assert [t.id for t in make_client().list_tickets()] == ["1"]
    assert len(waits) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": "tenant_id_required"}, "tenant_id_required"),
        ({"message": "invalid severity"}, "invalid severity"),
        ({"detail": "not found"}, "not found"),
        ({"error": "", "message": "second choice"}, "second choice"),
        ({"error": {"message": "nested"}}, "nested"),
        ("upstream refused\n the request", "upstream refused the request"),
        ("", "Bad Request"),
    ],
)
@responses.activate
def test_error_message_is_read_from_error_then_message_then_detail(
    body: dict[str, Any] | str, message: str
) -> None:
    url = "https://doit.test/support/v1/tickets"
    if isinstance(body, dict):
        responses.post(url, json=body, status=400)
    else:
        responses.post(url, body=body, status=400)

    with pytest.raises(PermanentError) as info:
        DoitClient("https://doit.test", KEY).create_ticket(REQUEST)

    assert str(info.value) == f"DoiT API answered 400: {message}"
    assert info.value.api_message == message


@responses.activate
def test_a_long_error_page_is_shortened() -> None:
    responses.post("https://doit.test/support/v1/tickets", body="x" * 5000, status=502)

    with pytest.raises(PermanentError) as info:
        DoitClient("https://doit.test", KEY).create_ticket(REQUEST)

    assert len(str(info.value)) < 400
    assert str(info.value).endswith("…")


# -- retries -------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(503, count=2, retry_after="7")

    ticket = make_client().create_ticket(REQUEST)

    assert ticket.id == "1"
    assert waits == [7.0, 7.0]
    assert emulator.stats()["creates_attempted"] == 3
    assert len(emulator.tickets()) == 1


@pytest.mark.parametrize(("header", "wait"), [("0", 1.0), ("3600", 20.0)])
def test_retry_after_is_clamped_between_one_second_and_the_ceiling(
    make_client: Callable[..., DoitClient],
    emulator: EmulatorServer,
    waits: Waits,
    header: str,
    wait: float,
) -> None:
    emulator.fault(429, retry_after=header)

    make_client(backoff_max=20.0).create_ticket(REQUEST)

    assert waits == [wait]


def test_retry_after_as_an_http_date_is_honoured(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)
    emulator.fault(503, retry_after=format_datetime(later, usegmt=True))

    make_client().create_ticket(REQUEST)

    assert len(waits) == 1
    assert 20.0 <= waits[0] <= 30.0


def test_backoff_without_retry_after_is_jittered_within_a_doubling_ceiling(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(429, count=6)

    with pytest.raises(RetryableError):
        make_client(
            max_attempts=6, backoff_initial=2.0, backoff_max=10.0
        ).create_ticket(REQUEST)

    ceilings = [4.0, 8.0, 10.0, 10.0, 10.0]
    assert len(waits) == 5
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert 2.0 <= wait <= ceiling


def test_a_502_is_never_retried(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(502, count=3)

    with pytest.raises(PermanentError, match="502"):
        make_client().create_ticket(REQUEST)

    assert waits == []
    assert emulator.stats()["creates_attempted"] == 1


def test_before_attempt_runs_before_every_http_attempt(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer
) -> None:
    calls: list[int] = []
    client = make_client(before_attempt=lambda: calls.append(1))
    emulator.fault(503, count=2)

    client.create_ticket(REQUEST)  # two failures, one success
    client.create_ticket(REQUEST)
    client.list_tickets(page_size=1)  # two pages

    assert len(calls) == 3 + 1 + 2
    assert len(calls) == sum(
        emulator.stats()[k] for k in ("creates_attempted", "lists_attempted")
    )


# -- ambiguous creates ---------------------------------------------------------


def test_a_create_answered_too_late_is_ambiguous_and_never_resent(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(delay=1.0)

    with pytest.raises(AmbiguousError, match="may have been created") as info:
        make_client(read_timeout=0.2).create_ticket(REQUEST)

    assert info.value.status is None
    assert len(emulator.tickets()) == 1
    assert emulator.stats()["creates_attempted"] == 1
    assert waits == []


def test_a_create_the_gateway_timed_out_is_ambiguous_and_never_resent(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(504, create=True, count=3)

    with pytest.raises(AmbiguousError, match=r"^DoiT API answered 504: "):
        make_client().create_ticket(REQUEST)

    assert len(emulator.tickets()) == 1
    assert emulator.stats()["creates_attempted"] == 1
    assert waits == []


def test_a_slow_list_is_retried(
    make_client: Callable[..., DoitClient], emulator: EmulatorServer, waits: Waits
) -> None:
    emulator.fault(delay=1.0, target="list")

    assert make_client(read_timeout=0.2).list_tickets() == []
    assert len(waits) == 1
    assert emulator.stats()["lists_attempted"] == 2


class DroppingServer:
    """Accepts connections, reads a request and hangs up without answering,
    as a proxy does when its upstream dies mid-request."""

    def __init__(self) -> None:
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def dropping_server() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


def test_a_create_whose_connection_dropped_is_ambiguous_and_never_resent(
    make_client: Callable[..., DoitClient],
    dropping_server: DroppingServer,
    waits: Waits,
) -> None:
    client = make_client(base_url=dropping_server.url)

    with pytest.raises(AmbiguousError, match="dropped the connection"):
        client.create_ticket(REQUEST)

    assert dropping_server.requests == 1
    assert waits == []


def test_a_list_whose_connection_dropped_is_retried(
    make_client: Callable[..., DoitClient],
    dropping_server: DroppingServer,
    waits: Waits,
) -> None:
    client = make_client(base_url=dropping_server.url, max_attempts=3)

    with pytest.raises(RetryableError, match="dropped the connection"):
        client.list_tickets()

    assert dropping_server.requests == 3
    assert len(waits) == 2


# -- unreachable API -------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_retried_then_retryable(
    make_client: Callable[..., DoitClient], waits: Waits
) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{_closed_port()}", max_attempts=3)

    with pytest.raises(RetryableError, match="connection refused") as info:
        client.create_ticket(REQUEST)

    assert info.value.status is None
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert len(waits) == 2


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectTimeout("connect timed out"),
        requests.ConnectionError(
            urllib3.exceptions.MaxRetryError(
                None,  # type: ignore[arg-type]
                "/support/v1/tickets",
                urllib3.exceptions.NameResolutionError(
                    "doit.test",
                    None,  # type: ignore[arg-type]
                    socket.gaierror(-2, "Name or service not known"),
                ),
            )
        ),
    ],
    ids=["connect-timeout", "dns"],
)
@responses.activate
def test_a_create_that_never_left_is_retryable(
    failure: Exception, waits: Waits
) -> None:
    responses.post("https://doit.test/support/v1/tickets", body=failure)

    with pytest.raises(RetryableError):
        DoitClient("https://doit.test", KEY, sleep=waits, max_attempts=2).create_ticket(
            REQUEST
        )

    assert len(responses.calls) == 2


@responses.activate
def test_a_read_timeout_on_create_is_ambiguous() -> None:
    responses.post(
        "https://doit.test/support/v1/tickets", body=requests.ReadTimeout("slow")
    )

    with pytest.raises(AmbiguousError):
        DoitClient("https://doit.test", KEY).create_ticket(REQUEST)

    assert len(responses.calls) == 1


# -- secrets, configuration, parsing --------------------------------------------


def test_the_key_never_reaches_a_log_or_an_error(
    make_client: Callable[..., DoitClient],
    emulator: EmulatorServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.fault(503, count=5)
    client = make_client(max_attempts=2)

    with pytest.raises(RetryableError) as info:
        client.create_ticket(REQUEST)
    client.list_tickets()

    assert caplog.records
    assert KEY not in caplog.text
    assert KEY not in str(info.value)
    for record in caplog.records:
        assert KEY not in repr(record.__dict__)


def test_from_config_takes_every_setting_and_overrides(waits: Waits) -> None:
    cfg = DoitConfig(
        api_url="https://doit.test/",
        api_key=KEY,
        category_field="product",
        connect_timeout="2s",
        read_timeout="45s",
        max_attempts=6,
        backoff_initial="1s",
        backoff_max="2m",
    )

    client = DoitClient.from_config(cfg, max_attempts=2, sleep=waits)

    assert client.base_url == "https://doit.test"
    assert client.category_field == "product"
    assert client.timeout == (2.0, 45.0)
    assert client.max_attempts == 2
    assert (client.backoff_initial, client.backoff_max) == (1.0, 120.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
