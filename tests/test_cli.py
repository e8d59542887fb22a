"""The ``relay`` command line: through click's runner, and as the installed
console script in a subprocess."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from relay.cli import main
from relay.emulator import EmulatorServer

RELAY = Path(sys.executable).parent / "relay"
CREATE = [
    "tickets",
    "create",
    "--subject",
    "Node pool out of capacity",
    "--body",
    "pods pending for 20 minutes",
    "--severity",
    "high",
    "--platform",
    "gcp",
    "--category",
    "containers___kubernetes__google_gke",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No config file from the checkout, and the root logger as it was: the
    CLI configures logging onto the runner's streams, which close after. The
    in-process emulator's access lines would land on the CLI's standard
    error too, so they are silenced."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    emulator_log = logging.getLogger("relay.emulator")
    emulator_level = emulator_log.level
    emulator_log.setLevel(logging.WARNING)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    emulator_log.setLevel(emulator_level)


@pytest.fixture
def api(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """The environment points the CLI at the emulator."""
    monkeypatch.setenv("DOIT_API_URL", emulator.url)
    monkeypatch.setenv("DOIT_API_KEY", "cli-test-key")
    return emulator


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


# -- tickets create -------------------------------------------------------------


def test_tickets_create_prints_the_new_ticket(api: EmulatorServer) -> None:
    result = run(*CREATE)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "created ticket 1 (high, new)",
        "https://console.doit.com/support/tickets/1",
    ]
    ticket = api.tickets()[0]
    assert ticket["platform"] == "google_cloud_platform"
    assert ticket["body"] == "pods pending for 20 minutes"
    assert ticket["requester"] == ""


def test_tickets_create_json_and_default_requester(
    api: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOIT_REQUESTER", "oncall@example.com")

    result = run(*CREATE, "--json")

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["id"] == "1"
    assert printed["requester"] == "oncall@example.com"
    assert "raw" not in printed
    assert api.tickets()[0]["requester"] == "oncall@example.com"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--platform", "mainframe", "expected one of google_cloud_platform"),
        ("--severity", "critical", "'critical' is not one of"),
    ],
)
def test_tickets_create_refuses_bad_values_before_calling(
    api: EmulatorServer, option: str, value: str, message: str
) -> None:
    args = list(CREATE)
    args[args.index(option) + 1] = value

    result = run(*args)

    assert result.exit_code == 2
    assert message in result.stderr
    assert api.stats()["creates_attempted"] == 0


def test_an_api_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with EmulatorServer(api_key="the-right-key") as keyed:
        monkeypatch.setenv("DOIT_API_URL", keyed.url)
        monkeypatch.setenv("DOIT_API_KEY", "a-wrong-key")

        result = run("tickets", "list")

    assert result.exit_code == 1
    assert result.stderr == "error: DoiT API answered 401: invalid API key\n"
    assert result.stdout == ""
    assert "a-wrong-key" not in result.output


def test_a_missing_api_key_is_a_config_error_with_exit_2(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOIT_API_URL", emulator.url)

    result = run("tickets", "list")

    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "doit.api_key" in result.stderr
    assert "Traceback" not in result.output


def test_a_missing_config_file_is_exit_2(api: EmulatorServer) -> None:
    result = run("--config", "nowhere.yaml", "tickets", "list")

    assert result.exit_code == 2
    assert result.stderr == "error: nowhere.yaml: no such file\n"


def test_an_unreachable_api_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"doit:\n  api_url: http://127.0.0.1:{port}\n  api_key: k\n  max_attempts: 1\n",
        encoding="utf-8",
    )

    result = run("--config", str(config), "tickets", "list")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot connect to the DoiT API at ")
    assert result.stderr.rstrip().endswith("connection refused")
    assert "Traceback" not in result.output


# -- tickets list ---------------------------------------------------------------


@pytest.fixture
def three_tickets(api: EmulatorServer) -> EmulatorServer:
    for severity in ("low", "high", "urgent"):
        args = list(CREATE)
        args[args.index("--severity") + 1] = severity
        args[args.index("--subject") + 1] = f"{severity} problem"
        assert run(*args).exit_code == 0
    return api


def test_tickets_list_prints_a_table_newest_first(
    three_tickets: EmulatorServer,
) -> None:
    result = run("tickets", "list")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "CREATED",
        "(UTC)",
        "SEVERITY",
        "STATUS",
        "PLATFORM",
        "SUBJECT",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert lines[1].endswith("urgent problem")
    assert "google_cloud_platform" in lines[1]


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        (["--filter", "severity:high|severity:urgent"], ["3", "2"]),
        (["--limit", "1"], ["3"]),
        (["--limit", "0"], ["3", "2", "1"]),
        (["--since", "1h"], ["3", "2", "1"]),
        (["--until", "2000-01-01T00:00:00Z"], []),
        (["--since", "2000-01-01T00:00:00"], ["3", "2", "1"]),
        (["--until", "30d"], []),
    ],
)
def test_tickets_list_json_with_filters(
    three_tickets: EmulatorServer, args: list[str], ids: list[str]
) -> None:
    result = run("tickets", "list", "--json", *args)

    assert result.exit_code == 0, result.output
    assert [t["id"] for t in json.loads(result.stdout)] == ids


def test_tickets_list_says_so_when_empty(api: EmulatorServer) -> None:
    result = run("tickets", "list")

    assert result.exit_code == 0
    assert result.stdout == "no tickets\n"


@pytest.mark.parametrize("value", ["yesterday", "24", "2024-13-01"])
def test_tickets_list_refuses_a_time_it_cannot_read(
    api: EmulatorServer, value: str
) -> None:
    result = run("tickets", "list", "--since", value)

    assert result.exit_code == 2
    assert "expected an ISO date-time" in result.stderr
    assert api.stats()["lists_attempted"] == 0


def test_text_logs_on_request(api: EmulatorServer) -> None:
    result = run("--log-format", "text", *CREATE)

    assert result.exit_code == 0
    assert "doit.ticket_created" in result.stderr
    assert not result.stderr.lstrip().startswith("{")


# -- the installed console script ------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DOIT_"))}
    return {**env, **extra}


def test_console_script_creates_and_lists_against_the_emulator(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    env = _env(DOIT_API_URL=emulator.url, DOIT_API_KEY="script-key")

    created = subprocess.run(
        [str(RELAY), *CREATE, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    listed = subprocess.run(
        [str(RELAY), "tickets", "list", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["platform"] == "google_cloud_platform"
    assert [t["id"] for t in json.loads(listed.stdout)] == ["1"]
    log_line = json.loads(created.stderr.splitlines()[0])
    assert log_line["event"] == "doit.ticket_created"
    assert "script-key" not in created.stderr


def test_console_script_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    with EmulatorServer(api_key="right") as keyed:
        result = subprocess.run(
            [str(RELAY), *CREATE],
            env=_env(DOIT_API_URL=keyed.url, DOIT_API_KEY="wrong"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 1
    assert result.stderr == "error: DoiT API answered 401: invalid API key\n"


def test_console_script_runs_the_emulator(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(RELAY), "emulator", "--bind", f"127.0.0.1:{port}", "--api-key", "k"],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        response = requests.post(
            f"http://127.0.0.1:{port}/support/v1/tickets",
            json={
                "ticket": {
                    "subject": "s",
                    "platform": "amazon_web_services",
                    "category": "c",
                }
            },
            headers={"Authorization": "Bearer k"},
            timeout=10,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    assert first == f"DoiT API emulator listening on http://127.0.0.1:{port}\n"
    assert response.status_code == 201
