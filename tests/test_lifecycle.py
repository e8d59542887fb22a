"""A problem's life, end to end over HTTP: what CloudWatch and Cloud
Monitoring send as an alarm or incident fires, repeats, resolves and fires
again, and the tickets that come of it in the DoiT API emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from relay.config import Config
from relay.delivery import Delivery, make_client
from relay.emulator import EmulatorServer
from tests.servers import RelayHTTP
from tests.test_sns import Signer

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "lifecycle-token-0123456789"


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(tmp_path / "certs")


def start(
    tmp_path: Path, emulator: EmulatorServer, signer: Signer, reopen_window: str
) -> RelayHTTP:
    config = Config.model_validate(
        {
            "doit": {"api_url": emulator.url, "api_key": "test-key"},
            "store": {"url": f"sqlite:///{tmp_path / 'relay.db'}"},
            "delivery": {"workers": 0},
            "defaults": {"category": "general", "reopen_window": reopen_window},
            "sources": {
                "cloudwatch": {"cert_dir": str(signer.cert_dir)},
                "cloud_monitoring": {"token": TOKEN},
            },
        }
    )
    return RelayHTTP(config).start()


@pytest.fixture
def servers() -> Iterator[list[RelayHTTP]]:
    started: list[RelayHTTP] = []
    yield started
    for server in started:
        server.stop()


def deliver(server: RelayHTTP) -> None:
    client = make_client(server.relay)
    assert client is not None
    try:
        Delivery(server.relay, client).drain()
    finally:
        client.close()


def alarm(signer: Signer, name: str, message_id: str) -> bytes:
    message = (FIXTURES / "cloudwatch" / name).read_text(encoding="utf-8")
    envelope = signer.notification(message, message_id=message_id)
    return json.dumps(envelope).encode("utf-8")


def send_alarm(server: RelayHTTP, body: bytes) -> tuple[int, dict[str, Any]]:
    answer = requests.post(
        f"{server.url}/webhooks/cloudwatch",
        data=body,
        headers={"Content-Type": "text/plain; charset=UTF-8"},
        timeout=30,
    )
    deliver(server)
    return answer.status_code, answer.json()


def actions(answer: dict[str, Any]) -> list[str]:
    return [d["action"] for d in answer.get("decisions", [])]


@pytest.mark.parametrize(("reopen_window", "tickets"), [("24h", 1), ("0s", 2)])
def test_an_alarm_going_alarm_alarm_ok_alarm(
    tmp_path: Path,
    emulator: EmulatorServer,
    signer: Signer,
    servers: list[RelayHTTP],
    reopen_window: str,
    tickets: int,
) -> None:
    server = start(tmp_path, emulator, signer, reopen_window)
    servers.append(server)
    firing = alarm(signer, "alarm_metric.json", "msg-1")

    status, first = send_alarm(server, firing)
    assert (status, actions(first)) == (202, ["queued"])
    assert len(emulator.tickets()) == 1

    # SNS retrying the same message: acknowledged without effect
    status, replay = send_alarm(server, firing)
    assert (status, replay["status"]) == (200, "replay")

    # the same alarm again, in a new message: one ticket all the same
    _, again = send_alarm(server, alarm(signer, "alarm_metric.json", "msg-2"))
    assert actions(again) == ["duplicate"]
    assert again["decisions"][0]["ticket_id"] == str(emulator.tickets()[0]["id"])

    _, ok = send_alarm(server, alarm(signer, "alarm_metric_ok.json", "msg-3"))
    assert actions(ok) == ["resolved"]

    # back to ALARM: inside the reopen window it is the same problem; with
    # no reopen window it is a new one
    _, back = send_alarm(server, alarm(signer, "alarm_metric.json", "msg-4"))
    assert actions(back) == ["duplicate" if tickets == 1 else "queued"]
    assert len(emulator.tickets()) == tickets


def send_incident(server: RelayHTTP, name: str) -> dict[str, Any]:
    answer = requests.post(
        f"{server.url}/webhooks/cloud-monitoring",
        params={"auth_token": TOKEN},
        data=(FIXTURES / "cloud_monitoring" / name).read_bytes(),
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    deliver(server)
    result: dict[str, Any] = answer.json()
    return result


@pytest.mark.parametrize(("reopen_window", "tickets"), [("24h", 1), ("0s", 2)])
def test_an_incident_open_repeat_closed_reopened(
    tmp_path: Path,
    emulator: EmulatorServer,
    signer: Signer,
    servers: list[RelayHTTP],
    reopen_window: str,
    tickets: int,
) -> None:
    server = start(tmp_path, emulator, signer, reopen_window)
    servers.append(server)

    assert actions(send_incident(server, "open_v1_2.json")) == ["queued"]
    assert actions(send_incident(server, "open_v1_2.json")) == ["duplicate"]
    assert len(emulator.tickets()) == 1
    assert actions(send_incident(server, "closed_with_severity.json")) == ["resolved"]

    reopened = send_incident(server, "open_v1_2.json")
    assert actions(reopened) == ["duplicate" if tickets == 1 else "queued"]
    assert len(emulator.tickets()) == tickets
