"""Shared fixtures: a clean environment for every test, and a real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relay.emulator import EmulatorServer
from relay.store.base import Store
from relay.store.redis import RedisStore
from relay.store.sqlite import SQLiteStore
from tests.servers import REDIS_SERVER, RedisServer, RelayProcess

REDIS_URL = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAY_* or DOIT_* variable from the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith(("RELAY_", "DOIT_")) and name != "RELAY_TEST_REDIS_URL":
            monkeypatch.delenv(name, raising=False)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()
    return True


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test Redis: ``RELAY_TEST_REDIS_URL``, else the one on
    127.0.0.1:6379 (database 15), else a redis-server of the suite's own on a
    free port, so that ``make test`` needs no Redis running beforehand."""
    if "RELAY_TEST_REDIS_URL" in os.environ or _answers(REDIS_URL):
        yield REDIS_URL
        return
    if REDIS_SERVER is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server to start one")
    server = RedisServer(tmp_path_factory.mktemp("redis"), durable=False).start()
    try:
        yield server.url.rsplit("/", 1)[0] + "/15"
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The URL of the test Redis; the test is skipped in no case: a missing
    Redis is a broken test environment and fails loudly."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.ping()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards, so
    tests never flush a database others may be using."""
    prefix = f"relaytest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A running DoiT API emulator on a free loopback port, stopped afterwards.

    It accepts any bearer key. ``emulator.url`` is the base URL for the
    client; ``emulator.fault(503, count=2, retry_after="1")`` queues faults
    for the next creates (``target="list"`` for lists); ``emulator.tickets()``
    and ``emulator.stats()`` read its state without HTTP.
    """
    server = EmulatorServer(host="127.0.0.1", port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A real store of each kind, empty. (The store contract tests define
    their own.)"""
    opened: Store
    if request.param == "sqlite":
        opened = SQLiteStore(str(tmp_path / "relay.db"))
    else:
        prefix = request.getfixturevalue("redis_prefix")
        opened = RedisStore(request.getfixturevalue("redis_url"), prefix=prefix)
    yield opened
    opened.close()


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    """Every relay process a test starts; all stopped (or killed) after it."""
    started: list[RelayProcess] = []
    yield started
    for process in started:
        process.stop()
