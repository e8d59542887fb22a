"""The DoiT API emulator over real HTTP: validation, listing, faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from relay.emulator import EmulatorServer, parse_bind

AUTH = {"Authorization": "Bearer any-key"}
TICKET = {
    "subject": "Disk almost full",
    "body": "/var on db-1 is 97% full.",
    "severity": "normal",
    "platform": "amazon_web_services",
    "category": "storage__amazon_s3",
}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _create(
    http: requests.Session, emulator: EmulatorServer, **fields: Any
) -> requests.Response:
    ticket = {**TICKET, **fields}
    return http.post(
        f"{emulator.url}/support/v1/tickets",
        json={"ticket": {k: v for k, v in ticket.items() if v is not None}},
        headers=AUTH,
        timeout=10,
    )


def _list(
    http: requests.Session, emulator: EmulatorServer, **params: Any
) -> requests.Response:
    return http.get(
        f"{emulator.url}/support/v1/tickets", params=params, headers=AUTH, timeout=10
    )


# -- create ------------------------------------------------------------------


def test_create_answers_201_with_a_new_ticket(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    first = _create(http, emulator, requester="sre@example.com")
    second = _create(http, emulator)

    assert first.status_code == 201
    ticket = first.json()
    assert ticket["id"] == 1
    assert second.json()["id"] == 2
    assert ticket["status"] == "new"
    assert ticket["url"] == "https://console.doit.com/support/tickets/1"
    assert isinstance(ticket["createTime"], int)
    assert ticket["createTime"] > 1_600_000_000_000
    assert ticket["requester"] == "sre@example.com"
    assert "body" not in ticket
    assert emulator.tickets()[0]["body"] == TICKET["body"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"subject": None}, "ticket.subject is required"),
        ({"subject": "   "}, "ticket.subject must not be empty"),
        ({"subject": 42}, "ticket.subject must be a string; got int"),
        ({"severity": "critical"}, "ticket.severity must be one of low, normal, "),
        ({"platform": None}, "ticket.platform is required"),
        ({"platform": "gcp-ish"}, "ticket.platform must be one of google_cloud"),
        ({"category": None}, "ticket.category is required"),
        ({"category": ""}, "ticket.category must not be empty"),
        ({"requester": ["a@b"]}, "ticket.requester must be a string"),
    ],
)
def test_create_refuses_invalid_tickets_naming_the_field(
    http: requests.Session,
    emulator: EmulatorServer,
    fields: dict[str, Any],
    message: str,
) -> None:
    response = _create(http, emulator, **fields)

    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert emulator.tickets() == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"severity": None}, {"severity": "low"}),
        ({"category": None, "product": "Amazon S3"}, {"category": "Amazon S3"}),
        ({"platform": "Google Cloud"}, {"platform": "google_cloud_platform"}),
        ({"requester": None}, {"requester": ""}),
    ],
)
def test_create_accepts_documented_variants(
    http: requests.Session,
    emulator: EmulatorServer,
    fields: dict[str, Any],
    expected: dict[str, str],
) -> None:
    response = _create(http, emulator, **fields)

    assert response.status_code == 201
    assert expected.items() <= response.json().items()


@pytest.mark.parametrize(
    "body",
    [
        b'{"subject": "no envelope"}',
        b'{"ticket": "not an object"}',
        b"[1, 2]",
        b"not json at all",
    ],
)
def test_create_requires_the_ticket_envelope(
    http: requests.Session, emulator: EmulatorServer, body: bytes
) -> None:
    response = http.post(
        f"{emulator.url}/support/v1/tickets",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json() == {"error": 'body must be a JSON object {"ticket": {...}}'}


@pytest.mark.parametrize(
    ("server_key", "header", "status"),
    [
        (None, None, 401),
        (None, "Basic dXNlcjpwYXNz", 401),
        (None, "Bearer ", 401),
        (None, "Bearer anything", 201),
        ("right-key", "Bearer wrong-key", 401),
        ("right-key", "Bearer right-key", 201),
    ],
)
def test_create_needs_a_bearer_key(
    http: requests.Session, server_key: str | None, header: str | None, status: int
) -> None:
    headers = {} if header is None else {"Authorization": header}
    with EmulatorServer(api_key=server_key) as server:
        response = http.post(
            f"{server.url}/support/v1/tickets",
            json={"ticket": TICKET},
            headers=headers,
            timeout=10,
        )
        listed = http.get(
            f"{server.url}/support/v1/tickets", headers=headers, timeout=10
        )

    assert response.status_code == status
    assert listed.status_code == (200 if status == 201 else 401)
    if status == 401:
        assert "key" in response.json()["error"]
        assert "right-key" not in response.text


def test_concurrent_creates_get_distinct_increasing_ids(
    emulator: EmulatorServer,
) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def create_ten() -> None:
        with requests.Session() as session:
            for _ in range(10):
                ticket_id = _create(session, emulator).json()["id"]
                with lock:
                    ids.append(ticket_id)

    threads = [threading.Thread(target=create_ten) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(ids) == list(range(1, 81))
    assert [t["id"] for t in emulator.tickets()] == list(range(1, 81))


# -- list --------------------------------------------------------------------


@pytest.fixture
def five_tickets(http: requests.Session, emulator: EmulatorServer) -> None:
    """1 low/gcp, 2 high/gcp, 3 high/aws, 4 urgent/aws, 5 low/aws."""
    for severity, platform in [
        ("low", "google_cloud_platform"),
        ("high", "google_cloud_platform"),
        ("high", "amazon_web_services"),
        ("urgent", "amazon_web_services"),
        ("low", "amazon_web_services"),
    ]:
        _create(http, emulator, severity=severity, platform=platform)


@pytest.mark.usefixtures("five_tickets")
@pytest.mark.parametrize(
    ("filter_", "ids"),
    [
        ("", [5, 4, 3, 2, 1]),
        ("severity:high", [3, 2]),
        ("priority:high", [3, 2]),
        ("severity:high|severity:urgent", [4, 3, 2]),
        ("severity:high|platform:amazon_web_services", [3]),
        ("severity:low|severity:high|platform:google_cloud_platform", [2, 1]),
        ("status:new|platform:google_cloud_platform", [2, 1]),
        ("status:open", []),
        ("severity:[high]", []),
    ],
)
def test_list_filters_or_within_a_key_and_across_keys(
    http: requests.Session, emulator: EmulatorServer, filter_: str, ids: list[int]
) -> None:
    response = _list(http, emulator, filter=filter_)

    assert response.status_code == 200
    body = response.json()
    assert [t["id"] for t in body["tickets"]] == ids
    assert body["rowCount"] == len(ids)
    assert body["pageToken"] == ""


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"filter": "severity:high|severity:low|status:new|status:open"}, "only one"),
        ({"filter": "severity"}, "filter: expected key:value; got 'severity'"),
        ({"filter": "severity:"}, "filter: expected key:value"),
        ({"filter": "colour:red"}, "filter: key must be one of severity"),
        ({"maxResults": "0"}, "maxResults must be between 1 and 100; got 0"),
        ({"maxResults": "101"}, "maxResults must be between 1 and 100; got 101"),
        ({"maxResults": "ten"}, "maxResults must be an integer; got 'ten'"),
        ({"minCreationTime": "yesterday"}, "minCreationTime must be an integer"),
        ({"pageToken": "abc"}, "pageToken is not one this server issued"),
    ],
)
def test_list_refuses_bad_parameters(
    http: requests.Session,
    emulator: EmulatorServer,
    params: dict[str, str],
    message: str,
) -> None:
    response = _list(http, emulator, **params)

    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.usefixtures("five_tickets")
def test_list_pages_newest_first_with_a_token(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    first = _list(http, emulator, maxResults=2).json()
    second = _list(http, emulator, maxResults=2, pageToken=first["pageToken"]).json()
    third = _list(http, emulator, maxResults=2, pageToken=second["pageToken"]).json()

    assert [t["id"] for t in first["tickets"]] == [5, 4]
    assert [t["id"] for t in second["tickets"]] == [3, 2]
    assert [t["id"] for t in third["tickets"]] == [1]
    assert third["pageToken"] == ""
    assert first["rowCount"] == second["rowCount"] == 5


@pytest.mark.usefixtures("five_tickets")
def test_list_pages_are_not_shifted_by_new_tickets(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    first = _list(http, emulator, maxResults=3).json()
    _create(http, emulator)
    second = _list(http, emulator, maxResults=3, pageToken=first["pageToken"]).json()

    assert [t["id"] for t in second["tickets"]] == [2, 1]


def test_list_creation_time_bounds_are_inclusive(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    created = _create(http, emulator).json()["createTime"]

    def ids(**params: Any) -> list[int]:
        return [t["id"] for t in _list(http, emulator, **params).json()["tickets"]]

    assert ids(minCreationTime=created, maxCreationTime=created) == [1]
    assert ids(minCreationTime=created + 1) == []
    assert ids(maxCreationTime=created - 1) == []


# -- control API ---------------------------------------------------------------


def _control(
    http: requests.Session, emulator: EmulatorServer, path: str, body: Any = None
) -> requests.Response:
    url = f"{emulator.url}/_emulator/{path}"
    if body is None and path != "reset":
        return http.get(url, timeout=10)
    return http.post(url, json=body, timeout=10)


def test_faults_are_served_first_queued_first(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    assert _control(http, emulator, "faults", {"count": 2, "status": 503}).ok
    assert (
        _control(
            http, emulator, "faults", {"status": 429, "retry_after": "5"}
        ).status_code
        == 201
    )
    assert _control(http, emulator, "stats").json()["faults_pending"] == 3

    answers = [_create(http, emulator) for _ in range(4)]

    assert [r.status_code for r in answers] == [503, 503, 429, 201]
    assert answers[0].json() == {"error": "emulated fault: 503"}
    assert "Retry-After" not in answers[0].headers
    assert answers[2].headers["Retry-After"] == "5"
    assert _control(http, emulator, "stats").json() == {
        "creates_attempted": 4,
        "lists_attempted": 0,
        "tickets": 1,
        "faults_pending": 0,
    }


def test_a_fault_with_create_makes_the_ticket_and_still_fails(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    _control(http, emulator, "faults", {"status": 504, "create": True})

    response = _create(http, emulator)

    assert response.status_code == 504
    assert len(_control(http, emulator, "tickets").json()) == 1


def test_a_delay_only_fault_answers_late_but_creates(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    _control(http, emulator, "faults", {"delay": 0.3})

    response = _create(http, emulator)

    assert response.status_code == 201
    assert response.elapsed.total_seconds() >= 0.3


def test_list_faults_leave_creates_alone(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    _control(http, emulator, "faults", {"status": 503, "target": "list"})

    assert _create(http, emulator).status_code == 201
    assert _list(http, emulator).status_code == 503
    assert _list(http, emulator).status_code == 200


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"count": 0, "status": 503}, "count must be an integer of 1 or more"),
        ({"status": 999}, "status must be an HTTP status"),
        ({"status": 503, "delay": -1}, "delay must be seconds"),
        ({"count": 1}, "a fault needs a status, a delay or both"),
        ({"status": 503, "colour": "red"}, "unknown fault fields: colour"),
        ({"status": 503, "target": "delete"}, "target must be create or list"),
        ([503], "expected a JSON object"),
    ],
)
def test_fault_specs_are_validated(
    http: requests.Session, emulator: EmulatorServer, spec: Any, message: str
) -> None:
    response = _control(http, emulator, "faults", spec)

    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_control_api_lists_tickets_oldest_first_and_resets(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    _create(http, emulator, subject="first")
    _create(http, emulator, subject="second")
    _control(http, emulator, "faults", {"status": 503})

    listed = _control(http, emulator, "tickets").json()
    reset = _control(http, emulator, "reset")

    assert [t["subject"] for t in listed] == ["first", "second"]
    assert listed[0]["body"] == TICKET["body"]
    assert reset.json() == {
        "creates_attempted": 0,
        "lists_attempted": 0,
        "tickets": 0,
        "faults_pending": 0,
    }
    # ids are never reused, even after a reset
    assert _create(http, emulator).json()["id"] == 3


def test_unknown_paths_and_methods_answer_json(
    http: requests.Session, emulator: EmulatorServer
) -> None:
    missing = http.get(f"{emulator.url}/support/v1/nothing", timeout=10)
    wrong = http.delete(f"{emulator.url}/support/v1/tickets", timeout=10)

    assert missing.status_code == 404
    assert "error" in missing.json()
    assert wrong.status_code == 405
    assert "error" in wrong.json()


@pytest.mark.parametrize(
    ("bind", "parsed"),
    [
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_bind(bind: str, parsed: tuple[str, int]) -> None:
    assert parse_bind(bind) == parsed


@pytest.mark.parametrize("bind", ["8081", ":8081", "host:", "host:port", "h:70000"])
def test_parse_bind_refuses_what_is_not_host_and_port(bind: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_bind(bind)
