"""Several ``relay serve`` processes on one Redis, as replicas run in
production: however the same alerts are spread over replicas and worker
processes, each problem opens one ticket; and a Redis outage turns
webhooks away with 503 (so that senders retry) without losing anything
accepted before it.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from relay.emulator import EmulatorServer
from relay.store.redis import RedisStore
from tests.servers import (
    REDIS_SERVER,
    RedisServer,
    RelayProcess,
    alertmanager_group,
    free_port,
    metric_total,
    relay_env,
    scrape_metrics,
    tickets_per_group,
    wait_until,
)

pytestmark = pytest.mark.redis

TOKEN = "replica-test-token"
CONFIG = f"""
server: {{workers: 2, threads: 8}}
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


def start_relay(
    tmp_path: Path,
    name: str,
    emulator: EmulatorServer,
    store_url: str,
    prefix: str,
    processes: list[RelayProcess],
) -> RelayProcess:
    config = tmp_path / "relay.yaml"
    config.write_text(CONFIG)
    env = relay_env(
        RELAY_CONFIG=str(config),
        RELAY_BIND=f"127.0.0.1:{free_port()}",
        RELAY_STORE=store_url,
        RELAY_STORE_PREFIX=prefix,
        DOIT_API_URL=emulator.url,
        DOIT_API_KEY="replica-test-key",
    )
    relay = RelayProcess(tmp_path, env, name=name)
    processes.append(relay)
    return relay.start()


def post_group(url: str, name: str, status: str = "firing") -> requests.Response:
    return requests.post(
        f"{url}/webhooks/alertmanager",
        json=alertmanager_group(name, status),
        headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
        timeout=30,
    )


def queue_settled(store_url: str, prefix: str) -> bool:
    """Whether no job is left to deliver, none dead."""
    store = RedisStore(store_url, prefix=prefix)
    try:
        stats = store.stats(time.time())
    finally:
        store.close()
    assert stats.dead == 0, "a job was dead-lettered"
    return stats.pending == 0 and stats.scheduled == 0


def all_delivered(
    emulator: EmulatorServer, names: list[str], store_url: str, prefix: str
) -> bool:
    return len(emulator.tickets()) >= len(names) and queue_settled(store_url, prefix)


def test_replicas_open_one_ticket_per_group_under_concurrent_repeats(
    tmp_path: Path,
    emulator: EmulatorServer,
    redis_url: str,
    redis_prefix: str,
    processes: list[RelayProcess],
) -> None:
    replicas = [
        start_relay(
            tmp_path, f"replica-{i}", emulator, redis_url, redis_prefix, processes
        )
        for i in range(2)
    ]
    names = [f"Replica{i:02d}" for i in range(12)]
    # every group is sent four times to each replica, a quarter of the
    # sends resolved, in a shuffled order by sixteen senders at once: in
    # any order, the first firing opens the ticket, a resolve before it is
    # ignored and a firing after a resolve is the same problem back
    sends = [
        (replica.url, name, "resolved" if round_ == 1 else "firing")
        for name in names
        for replica in replicas
        for round_ in range(4)
    ]
    random.Random(7).shuffle(sends)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda send: post_group(*send), sends))

    assert {answer.status_code for answer in answers} == {202}
    wait_until(lambda: all_delivered(emulator, names, redis_url, redis_prefix))
    assert tickets_per_group(emulator.tickets()) == dict.fromkeys(names, 1)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_store_outage_answers_503_and_loses_nothing_accepted(
    tmp_path: Path, emulator: EmulatorServer, processes: list[RelayProcess]
) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    prefix = "outage"
    try:
        relay = start_relay(
            tmp_path, "relay", emulator, redis_server.url, prefix, processes
        )
        # creates are slow, then failing, so that jobs are in flight and
        # waiting for a retry when Redis goes away
        emulator.fault(delay=1.0, count=3)
        emulator.fault(503, count=4, retry_after="1")
        before = [f"Before{i:02d}" for i in range(8)]
        for name in before:
            assert post_group(relay.url, name).status_code == 202
        wait_until(lambda: emulator.stats()["creates_attempted"] >= 3)

        redis_server.kill()

        during = [f"During{i:02d}" for i in range(4)]
        for name in during:
            refused = post_group(relay.url, name)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"].isdigit()
            assert "retry" in refused.json()["error"]
        for _ in range(4):
            ready = requests.get(f"{relay.url}/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "unavailable"
            assert requests.get(f"{relay.url}/healthz", timeout=30).status_code == 200
        down = scrape_metrics(relay.url)
        assert metric_total(down, "relay_store_up") == 0
        assert metric_total(down, "relay_webhooks_total", code="503") == len(during)

        redis_server = RedisServer(tmp_path / "redis", redis_server.port).start()

        # the senders retry what was refused; the same relay takes it now
        wait_until(lambda: post_group(relay.url, during[0]).status_code == 202)
        for name in during[1:]:
            assert post_group(relay.url, name).status_code == 202
        after = [f"After{i:02d}" for i in range(4)]
        for name in after:
            assert post_group(relay.url, name).status_code == 202
        assert requests.get(f"{relay.url}/readyz", timeout=30).status_code == 200

        names = before + during + after
        wait_until(lambda: all_delivered(emulator, names, redis_server.url, prefix))
        assert tickets_per_group(emulator.tickets()) == dict.fromkeys(names, 1)
    finally:
        redis_server.stop()
