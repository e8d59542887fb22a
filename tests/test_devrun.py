"""``make run``: the relay on its defaults, beside the emulator when there is
no API key, relaying an Alertmanager notification into a ticket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
NOTIFICATION = {
    "version": "4",
    "status": "firing",
    "receiver": "doit",
    "groupKey": '{}:{alertname="DiskFull"}',
    "alerts": [
        {
            "status": "firing",
            "fingerprint": "c0ffee0000000001",
            "labels": {"alertname": "DiskFull", "severity": "critical"},
            "annotations": {"summary": "Disk on db-1 is 95% full"},
            "startsAt": "2026-01-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        }
    ],
}


def test_make_run_relays_a_notification_into_an_emulator_ticket() -> None:
    relay_port, emulator_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RELAY_", "DOIT_"))
    }
    env.update(
        RELAY_BIND=f"127.0.0.1:{relay_port}",
        RELAY_EMULATOR_BIND=f"127.0.0.1:{emulator_port}",
        RELAY_WORKERS="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "relay.devrun"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    relay = f"http://127.0.0.1:{relay_port}"
    emulator = f"http://127.0.0.1:{emulator_port}"
    try:

        def up() -> bool:
            try:
                return requests.get(f"{relay}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=60)
        answer = requests.post(
            f"{relay}/webhooks/alertmanager", data=json.dumps(NOTIFICATION), timeout=10
        )
        assert answer.status_code == 202
        assert answer.json()["decisions"][0]["action"] == "queued"

        def tickets() -> list[dict[str, object]]:
            found = requests.get(f"{emulator}/_emulator/tickets", timeout=5).json()
            return list(found["tickets"] if isinstance(found, dict) else found)

        [ticket] = wait_until(tickets, timeout=60)
        assert "DiskFull" in str(ticket["subject"])
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)

    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "DoiT API EMULATOR" in text
    scratch = re.search(r"Dedup state and queue: (\S+)", text)
    assert scratch is not None
    assert not Path(scratch.group(1)).exists()
    assert "Traceback" not in text
