"""``relay serve`` as operators run it: gunicorn with several worker
processes, each with its delivery threads, started as a real process.

It answers its probes, its metrics add up every worker's counts, a crash
in the middle of a queue loses and duplicates nothing, and a bad
configuration stops it before it starts, with one line naming the field.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from relay.emulator import EmulatorServer
from relay.store.sqlite import SQLiteStore
from tests.servers import (
    RELAY,
    RelayProcess,
    alertmanager_group,
    free_port,
    metric_total,
    relay_env,
    scrape_metrics,
    tickets_per_group,
    wait_until,
)

TOKEN = "serve-test-token"
CONFIG = f"""
server: {{workers: 2, threads: 4}}
delivery:
  workers: 2
  lease: 3s
  poll_interval: 0.2s
  backoff_initial: 0.2s
  backoff_max: 1s
sources:
  alertmanager: {{auth: {{bearer_token: {TOKEN}}}}}
defaults: {{category: containers___kubernetes__google_gke}}
"""


def serve_env(tmp_path: Path, emulator: EmulatorServer, **extra: str) -> dict[str, str]:
    """The environment of a relay with the test's config file, a SQLite
    store in ``tmp_path`` and the emulator as its DoiT API."""
    config = tmp_path / "relay.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    return relay_env(
        RELAY_CONFIG=str(config),
        RELAY_BIND=f"127.0.0.1:{free_port()}",
        RELAY_STORE=f"sqlite:///{tmp_path / 'relay.db'}",
        DOIT_API_URL=emulator.url,
        DOIT_API_KEY="serve-test-key",
        **extra,
    )


def post_group(url: str, name: str, status: str = "firing") -> requests.Response:
    # a new connection every time, so that gunicorn hands the requests to
    # whichever worker accepts first, as with many senders
    return requests.post(
        f"{url}/webhooks/alertmanager",
        json=alertmanager_group(name, status),
        headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
        timeout=30,
    )


def queue_settled(db: Path) -> bool:
    """Whether no job is left to deliver, none dead."""
    store = SQLiteStore(str(db))
    try:
        stats = store.stats(time.time())
    finally:
        store.close()
    assert stats.dead == 0, "a job was dead-lettered"
    return stats.pending == 0 and stats.scheduled == 0


# -- probes and metrics ----------------------------------------------------


def test_serve_answers_its_probes_and_stops_cleanly(
    tmp_path: Path, emulator: EmulatorServer, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(tmp_path, serve_env(tmp_path, emulator))
    processes.append(relay)
    relay.start()

    health = requests.get(f"{relay.url}/healthz", timeout=10)
    ready = requests.get(f"{relay.url}/readyz", timeout=10)

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    wait_until(lambda: len(relay.children()) == 2, timeout=60)
    # the start-up warnings come once, from the master, not once a worker
    assert relay.log_text().count("cloudwatch.topics_unrestricted") == 1
    # SIGTERM: the workers stop their delivery threads and the master exits
    # 0, removing the metrics directory it made
    metrics_dir = re.search(r'metrics_dir="([^"]+)"', relay.log_text())
    assert metrics_dir is not None
    assert Path(metrics_dir[1]).is_dir()
    assert relay.stop() == 0
    assert not Path(metrics_dir[1]).exists()
    assert "Traceback" not in relay.log_text()


def test_serve_runs_from_the_environment_alone(
    tmp_path: Path, emulator: EmulatorServer, processes: list[RelayProcess]
) -> None:
    # no config file anywhere: the workers must run on what the master
    # checked rather than look for the default file
    env = serve_env(tmp_path, emulator)
    del env["RELAY_CONFIG"]
    relay = RelayProcess(tmp_path / "empty", env)
    processes.append(relay)
    relay.start()

    ready = requests.get(f"{relay.url}/readyz", timeout=10)

    assert ready.status_code == 200, ready.text
    # the second worker may still be booting when the first one answers
    wait_until(lambda: len(relay.children()) == 2, timeout=60)
    assert relay.stop() == 0


def test_metrics_add_up_every_worker_whichever_answers(
    tmp_path: Path, emulator: EmulatorServer, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(tmp_path, serve_env(tmp_path, emulator))
    processes.append(relay)
    relay.start()
    names = [f"Metrics{i:02d}" for i in range(16)]

    for name in names:
        assert post_group(relay.url, name).status_code == 202

    # each scrape is answered by one worker, and every one shows the sum
    for _ in range(10):
        samples = scrape_metrics(relay.url)
        webhooks = metric_total(
            samples, "relay_webhooks_total", source="alertmanager", code="202"
        )
        assert webhooks == len(names)
        assert metric_total(samples, "relay_store_up") == 1
        queues = {
            dict(pairs)["queue"]
            for name, pairs in samples
            if name == "relay_queue_jobs"
        }
        assert queues == {"pending", "scheduled", "leased", "dead"}
        assert ("relay_queue_oldest_pending_age_seconds", ()) in samples

    # tickets are created by the delivery threads of both workers
    wait_until(
        lambda: (
            metric_total(scrape_metrics(relay.url), "relay_tickets_created_total")
            == len(names)
        )
    )
    assert tickets_per_group(emulator.tickets()) == dict.fromkeys(names, 1)
    assert (
        metric_total(scrape_metrics(relay.url), "relay_queue_jobs", queue="pending")
        == 0
    )

    # both workers go, one cleanly (as after a timeout or a restart of
    # workers), one killed: neither takes its counts with it nor breaks the
    # other's, and the counts of processes long gone still add up with
    # those of their replacements
    originals = relay.children()
    for pid, signum in zip(originals, (signal.SIGTERM, signal.SIGKILL), strict=True):
        replace_worker(relay, pid, signum)
        assert post_group(relay.url, f"Metrics-{signum.name}").status_code == 202
    assert not set(originals) & set(relay.children())
    for _ in range(5):
        samples = scrape_metrics(relay.url)
        webhooks = metric_total(samples, "relay_webhooks_total", code="202")
        assert webhooks == len(names) + 2


def replace_worker(relay: RelayProcess, pid: int, signum: signal.Signals) -> None:
    """Signal one of gunicorn's workers and wait for its replacement."""
    os.kill(pid, signum)
    wait_until(lambda: pid not in relay.children() and len(relay.children()) == 2)


# -- a crash in the middle of the queue ------------------------------------


@pytest.mark.parametrize("delivering", ["serve", "worker"])
def test_a_crash_mid_queue_loses_and_duplicates_nothing(
    delivering: str,
    tmp_path: Path,
    emulator: EmulatorServer,
    processes: list[RelayProcess],
) -> None:
    names = [f"Crash{i:02d}" for i in range(12)]
    db = tmp_path / "relay.db"
    # the first creates are slow: the emulator opens the ticket, then
    # answers late, so the crash catches them created but not recorded;
    # the next ones fail, so jobs wait for a retry when the crash comes
    emulator.fault(delay=1.0, count=4)
    emulator.fault(503, count=6, retry_after="1")

    # a killed master cannot remove its metrics directory: keep it here
    metrics_dir = str(tmp_path / "metrics")
    if delivering == "serve":
        env = serve_env(tmp_path, emulator, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
        server = RelayProcess(tmp_path, env, name="serve-1")
    else:
        env = serve_env(
            tmp_path,
            emulator,
            PROMETHEUS_MULTIPROC_DIR=metrics_dir,
            RELAY_DELIVERY_WORKERS="0",
        )
        server = RelayProcess(tmp_path, env, name="serve")
        worker_env = {
            k: v
            for k, v in env.items()
            if k not in ("RELAY_DELIVERY_WORKERS", "RELAY_BIND")
        }
        delivery = RelayProcess(tmp_path, worker_env, "worker", name="worker-1")
        processes.append(delivery)
        delivery.start()
    processes.append(server)
    server.start()

    for name in names:
        assert post_group(server.url, name).status_code == 202
    wait_until(lambda: emulator.stats()["creates_attempted"] >= 4)

    # kill -9 the whole process group while creates are in flight
    if delivering == "serve":
        server.kill()
        server = RelayProcess(tmp_path, env, name="serve-2")
        processes.append(server)
        server.start()
    else:
        delivery.kill()
        # webhooks are still accepted while nothing delivers
        assert post_group(server.url, "Crash-while-down").status_code == 202
        names.append("Crash-while-down")
        delivery = RelayProcess(tmp_path, worker_env, "worker", name="worker-2")
        processes.append(delivery)
        delivery.start()

    wait_until(lambda: len(emulator.tickets()) >= len(names) and queue_settled(db))
    assert tickets_per_group(emulator.tickets()) == dict.fromkeys(names, 1)


# -- refusing to start -----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "env", "field"),
    [
        ("server: {workers: 0}", {}, "server.workers"),
        ("delivery: {lease: soon}", {}, "delivery.lease"),
        ("sever: {workers: 2}", {}, "sever: unknown key"),
        ("", {"RELAY_STORE": "postgres://db/relay"}, "store.url"),
        ("", {"DOIT_API_KEY": ""}, "doit.api_key"),
        (
            "rules: [{name: broken, match: {matchers: ['team=~\"(\"']}}]",
            {},
            "rules[0]",
        ),
    ],
)
def test_serve_refuses_a_bad_config_with_one_line_naming_the_field(
    config: str, env: dict[str, str], field: str, tmp_path: Path
) -> None:
    assert RELAY, "the relay console script is not installed"
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(config)
    environment = relay_env(
        RELAY_CONFIG=str(config_file),
        RELAY_BIND=f"127.0.0.1:{free_port()}",
        RELAY_STORE=f"sqlite:///{tmp_path / 'relay.db'}",
        DOIT_API_URL="http://127.0.0.1:9",
        DOIT_API_KEY="serve-test-key",
    )
    environment.update(env)

    done = subprocess.run(
        [RELAY, "serve"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert field in lines[0]
    assert str(config_file) in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
