"""The Redis store: the store contract, plus what only Redis has (the key
layout, the cost of a duplicate, replicas sharing one server, outages)."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot

from relay.errors import ConfigError, StoreUnavailable
from relay.store import open_store
from relay.store.base import Observation, Store
from relay.store.redis import RedisStore
from tests.store_contract import *  # noqa: F403
from tests.store_contract import LEASE, T0, _obs, _queue_job


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    opened = RedisStore(redis_url, prefix=redis_prefix)
    yield opened
    opened.close()


@pytest.fixture
def store_factory(redis_url: str, redis_prefix: str) -> Callable[[], Store]:
    return functools.partial(RedisStore, redis_url, redis_prefix)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test database, for looking behind the store."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll until ``condition`` is truthy; generous, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


class CountingConnection(redis.Connection):
    """A connection that counts what it writes to the socket: one write of
    packed commands is one round trip (a health-check PING counts too)."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        super().send_packed_command(command, check_health)


class RedisServer:
    """A throwaway ``redis-server`` of the test's own, on 127.0.0.1, with an
    append-only file so that its data survives a restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.port = port or _free_port()
        self.socket = workdir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--unixsocket", str(self.socket),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_until(self._answers)

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """Stop at once, as a crash would: nothing is flushed at exit."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    own = RedisServer(tmp_path)
    own.start()
    yield own
    own.kill()


# key layout


def test_every_key_lives_under_the_prefix_in_one_slot(
    store: RedisStore, redis_prefix: str, raw: redis.Redis
) -> None:
    # touch every kind of key the store keeps
    for n in range(3):
        _queue_job(store, f"k{n}")
    store.observe(_obs("k0", firing=False), T0 + 1)
    store.remember_message("sns-1", 60, T0)
    store.take_budget(10, T0)
    first, second, _held = store.lease("w1", T0, LEASE, count=3)
    store.retry(first, T0 + 100, "later")
    store.dead_letter(second, "gave up", T0)

    keys = list(raw.scan_iter(match=f"*{redis_prefix}*", count=1000))

    tag = "{" + redis_prefix + "}:"
    assert len(keys) >= 10
    assert all(key.startswith(tag) for key in keys), keys
    assert {key_slot(key.encode()) for key in keys} == {key_slot(tag.encode())}
    kinds = {key[len(tag) :].split(":")[0] for key in keys}
    assert kinds == {
        "key",
        "msg",
        "job",
        "queue",
        "leases",
        "scheduled",
        "dead",
        "budget",
    }


def test_job_bodies_are_stored_as_json(
    store: RedisStore, redis_prefix: str, raw: redis.Redis
) -> None:
    payload = {"subject": "Disk full ✓", "n": [1, 2.5, None]}
    job_id = _queue_job(store, "k1", payload=payload)

    body = raw.hgetall("{" + redis_prefix + "}:job:" + job_id)

    assert json.loads(body["payload"]) == payload
    assert body["key"] == "k1"


def test_a_dedup_key_gets_a_redis_ttl_beyond_its_window(
    store: RedisStore, redis_prefix: str, raw: redis.Redis
) -> None:
    store.observe(_obs("k1", dedup=120), T0)

    ttl = raw.pttl("{" + redis_prefix + "}:key:k1")

    # the callers' clock decides expiry; the TTL only collects garbage, a
    # little after the window so that a replica whose clock lags still
    # finds the key
    assert 120_000 < ttl <= 120_000 + 61_000


@pytest.mark.parametrize("prefix", ["", "re{lay", "relay}"])
def test_a_prefix_that_cannot_be_a_hash_tag_is_refused(
    redis_url: str, prefix: str
) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        RedisStore(redis_url, prefix=prefix)


def test_open_store_understands_redis_urls(redis_url: str, redis_prefix: str) -> None:
    opened = open_store(redis_url, prefix=redis_prefix)
    try:
        assert isinstance(opened, RedisStore)
        opened.ping()
    finally:
        opened.close()


# cost


def test_a_duplicate_costs_one_round_trip_and_a_new_problem_two(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(
        redis_url, connection_class=CountingConnection, health_check_interval=10
    )
    store = RedisStore(redis_url, redis_prefix, client=client)
    try:
        # the first call loads the script into the server
        store.observe(_obs("warm-up"), T0)

        CountingConnection.writes = 0
        queued = store.observe(_obs("k1"), T0)
        after_queued = CountingConnection.writes
        duplicate = store.observe(_obs("k1"), T0 + 1)
        after_duplicate = CountingConnection.writes
    finally:
        store.close()
        client.close()

    assert (queued.decision, duplicate.decision) == ("queued", "duplicate")
    # a new problem: a probe without the job, then the call that enqueues it
    assert after_queued == 2
    # the storm case: one call, and the job is never sent
    assert after_duplicate - after_queued == 1


def test_idle_consumers_holding_nothing_are_removed_from_the_group(
    store: RedisStore,
    redis_prefix: str,
    raw: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = "{" + redis_prefix + "}:queue"
    _queue_job(store, "k1")
    _queue_job(store, "k2")
    [done] = store.lease("finished", T0, LEASE)
    store.ack(done)
    store.lease("busy", T0, LEASE)
    assert {c["name"] for c in raw.xinfo_consumers(queue, "relay")} == {
        "finished",
        "busy",
    }

    monkeypatch.setattr("relay.store.redis.CONSUMER_IDLE_MS", 0)
    store._next_prune = 0.0
    _queue_job(store, "k3")
    assert len(store.lease("newcomer", T0 + 1, LEASE)) == 1

    # the busy consumer still holds a job: removing it would lose the job
    names = {c["name"] for c in raw.xinfo_consumers(queue, "relay")}
    assert names == {"busy", "newcomer"}


# replicas


def test_replicas_observing_the_same_keys_queue_one_job_per_key(
    redis_url: str, redis_prefix: str
) -> None:
    replicas = [RedisStore(redis_url, redis_prefix) for _ in range(2)]
    keys = [f"shared-{n}" for n in range(10)]
    threads = 12
    barrier = threading.Barrier(threads)
    decisions: dict[str, list[str]] = {key: [] for key in keys}
    errors: list[BaseException] = []

    def fire(index: int) -> None:
        replica = replicas[index % 2]
        # each thread walks the keys in its own order
        order = keys[index % len(keys) :] + keys[: index % len(keys)]
        try:
            barrier.wait(timeout=30)
            for _ in range(3):
                for key in order:
                    decisions[key].append(replica.observe(_obs(key), T0).decision)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=fire, args=(n,)) for n in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        pending = replicas[0].jobs("pending", limit=100)
    finally:
        for replica in replicas:
            replica.close()

    assert errors == []
    for key in keys:
        assert sorted(decisions[key]) == ["duplicate"] * (3 * threads - 1) + ["queued"]
    assert sorted(job.key for job in pending) == sorted(keys)


# outages


def test_a_dead_port_raises_store_unavailable_promptly() -> None:
    store = RedisStore(f"redis://:s3cret@127.0.0.1:{_free_port()}/0")
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1") as caught:
            store.observe(_obs("k1"), T0)
    finally:
        store.close()

    # generous: refused connections fail at once; this only rules out a hang
    assert time.monotonic() - started < 20
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    assert "s3cret" not in str(caught.value)


def test_a_server_that_never_answers_raises_store_unavailable() -> None:
    # the kernel accepts the connection, but nothing ever replies
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises(StoreUnavailable, match="Timeout") as caught:
                store.ping()
        finally:
            store.close()

    assert isinstance(caught.value.__cause__, redis.TimeoutError)


class _FailingClient:
    """Stands in for redis.Redis in a unit test: every command fails with
    the given error, as a server could fail."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.connection_pool = redis.ConnectionPool()

    def register_script(self, script: str) -> Callable[..., Any]:
        def run(**_: Any) -> Any:
            raise self.error

        return run

    def ping(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.ResponseError("ERR Error running script"),
        redis.AuthenticationError("invalid username-password pair"),
        redis.ReadOnlyError("You can't write against a read only replica."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_redis_error_becomes_store_unavailable(error: Exception) -> None:
    client = cast(redis.Redis, _FailingClient(error))
    store = RedisStore("redis://127.0.0.1:1/0", client=client)

    with pytest.raises(StoreUnavailable, match=type(error).__name__) as caught:
        store.observe(_obs("k1"), T0)
    assert caught.value.__cause__ is error
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_the_store_recovers_when_redis_comes_back(server: RedisServer) -> None:
    store = RedisStore(server.url, "relay")
    try:
        ids = [_queue_job(store, f"k{n}", payload={"n": n}) for n in range(5)]
        [held] = store.lease("w1", T0, LEASE)
        store.retry(held, T0 + 10, "HTTP 503")

        server.kill()
        with pytest.raises(StoreUnavailable):
            store.observe(_obs("k9"), T0 + 1)
        with pytest.raises(StoreUnavailable):
            store.lease("w1", T0 + 1, LEASE)
        with pytest.raises(StoreUnavailable):
            store.ping()

        # same port, same folder: the append-only file brings the data back,
        # but not the script cache, which the store must refill by itself
        server.start()
        assert store.observe(_obs("k0"), T0 + 2).decision == "duplicate"
        stats = store.stats(T0 + 20)
        leased = store.lease("w2", T0 + 20, LEASE, count=10)
    finally:
        store.close()

    assert (stats.pending, stats.scheduled, stats.dead) == (4, 1, 0)
    assert sorted(job.id for job in leased) == sorted(ids)
    assert {job.id: job.attempts for job in leased}[held.id] == 1


def test_a_unix_socket_url_works(server: RedisServer) -> None:
    store = RedisStore(f"unix://{server.socket}?db=1", "relay")
    try:
        assert store.observe(_obs("k1"), T0).decision == "queued"
        assert [job.key for job in store.lease("w1", T0, LEASE)] == ["k1"]
    finally:
        store.close()


# Sentinel


def test_a_sentinel_url_finds_the_master(server: RedisServer, tmp_path: Path) -> None:
    port = _free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\n"
        f"sentinel monitor relaymaster 127.0.0.1 {server.port} 1\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        store = RedisStore(f"redis+sentinel://127.0.0.1:{port}/relaymaster/2", "r")
        try:
            # Sentinel needs a moment to take up its master
            _wait_until(lambda: _answers(store))
            assert store.observe(_obs("k1"), T0).decision == "queued"
        finally:
            store.close()
        direct = redis.Redis(port=server.port, db=2)
        assert direct.exists("{r}:key:k1") == 1
        direct.close()
    finally:
        sentinel.kill()
        sentinel.wait(timeout=30)


def _answers(store: RedisStore) -> bool:
    try:
        store.ping()
    except StoreUnavailable:
        return False
    return True


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service"),
        ("redis+sentinel://127.0.0.1:26379/a/b/c", "service"),
        ("redis+sentinel://127.0.0.1:port/master", "host"),
        ("redis+sentinel://127.0.0.1:26379/master/zero", "database"),
        ("redis://127.0.0.1:6379/notadb", "database number"),
        ("redis://127.0.0.1:notaport/0", "Port"),
        ("http://127.0.0.1:6379/0", "redis://"),
    ],
)
def test_a_malformed_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisStore(url)


# the client


def test_an_injected_client_is_left_open(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisStore(redis_url, redis_prefix, client=client)
        store.observe(Observation("k1", True, "r", "low", 60, 60), T0)
        store.close()

        assert client.ping() is True
    finally:
        client.close()
