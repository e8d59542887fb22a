"""The relay's benchmark: ``make bench`` (``python -m bench.run``).

Starts, on loopback only, the DoiT API emulator, a Redis (the one on
127.0.0.1:6379 db 15 under a fresh key prefix, or a redis-server of its own
when none answers), the relay under gunicorn (``relay serve``) and the bare
Flask app of :mod:`bench.bare` under the very same gunicorn settings, then
drives both with ``wrk``:

- the duplicate path (an alert storm: one group, primed once, sent again
  and again), relay against bare;
- the duplicate path paced at half of the relay's peak, for its latency;
- the new-alert path (a group never seen before in every request), relay
  against bare;
- the drain of the queue that the new-alert run left, into the emulator;
- the resident memory of the gunicorn workers before and after, and with
  ``BENCH_SOAK=SECONDS`` a duplicate-path soak sampled every 30 seconds.

Everything it starts runs in its own process group and is stopped in a
``finally`` block; the Redis keys of its prefix are deleted at the end.
Results are printed and written to ``bench/results/latest.json``.

Knobs (environment): BENCH_DURATION (seconds a phase, default 10),
BENCH_ROUNDS (rounds of the duplicate path, best taken, default 3),
BENCH_CONNECTIONS (wrk connections, default 16), BENCH_WRK_THREADS (1),
BENCH_WORKERS / BENCH_THREADS (gunicorn, default 2 / 4), BENCH_SOAK (0),
BENCH_DRAIN_MAX (seconds to wait for the queue to empty, default 120),
BENCH_REDIS_URL (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results" / "latest.json"
VENV_BIN = Path(sys.executable).parent

# DoiT allows 1,000 API calls a minute; the bench lifts the relay's own
# budget so that the drain measures the relay, not the budget
BENCH_RATE_LIMIT = 1_000_000
CATEGORY = "containers___kubernetes__google_gke"
SOAK_SAMPLE_EVERY = 30.0
WARMUP_SECONDS = 3


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"{name}: expected a whole number; got {raw!r}")
    if value < 0:
        sys.exit(f"{name}: expected zero or more; got {value}")
    return value


@dataclass
class Settings:
    """What one run uses; printed and saved with the results."""

    duration: int = field(default_factory=lambda: _env_int("BENCH_DURATION", 10))
    rounds: int = field(default_factory=lambda: max(1, _env_int("BENCH_ROUNDS", 3)))
    connections: int = field(default_factory=lambda: _env_int("BENCH_CONNECTIONS", 16))
    wrk_threads: int = field(default_factory=lambda: _env_int("BENCH_WRK_THREADS", 1))
    workers: int = field(default_factory=lambda: _env_int("BENCH_WORKERS", 2))
    threads: int = field(default_factory=lambda: _env_int("BENCH_THREADS", 4))
    worker_class: str = "gthread"
    delivery_workers_per_process: int = 2
    log_level: str = "info"
    rate_limit_per_minute: int = BENCH_RATE_LIMIT
    soak: int = field(default_factory=lambda: _env_int("BENCH_SOAK", 0))
    drain_max: int = field(default_factory=lambda: _env_int("BENCH_DRAIN_MAX", 120))
    redis_url: str = field(
        default_factory=lambda: os.environ.get(
            "BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"
        )
    )
    prefix: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}")
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass
class WrkResult:
    """One wrk run, from the ``done()`` hook of the bench's Lua scripts."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: dict[str, int]

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        for line in output.splitlines():
            if line.startswith("BENCH_RESULT "):
                raw = json.loads(line.removeprefix("BENCH_RESULT "))
                seconds = raw["duration_us"] / 1e6
                return cls(
                    requests=raw["requests"],
                    seconds=round(seconds, 3),
                    rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
                    p50_ms=raw["p50_us"] / 1000,
                    p90_ms=raw["p90_us"] / 1000,
                    p99_ms=raw["p99_us"] / 1000,
                    p999_ms=raw["p999_us"] / 1000,
                    max_ms=raw["max_us"] / 1000,
                    errors={
                        k: raw[k]
                        for k in (
                            "connect_errors",
                            "read_errors",
                            "write_errors",
                            "status_errors",
                            "timeouts",
                        )
                    },
                )
        raise RuntimeError(f"wrk printed no result line:\n{output}")

    def show(self) -> str:
        return f"{self.rps:.0f} rps, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


# -- processes -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A child process in its own process group, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], logs: Path
    ) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}:\n"
                + self.tail()
            )

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """TERM the whole group, then KILL whatever is left of it."""
        try:
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=20)
            # workers may outlive a master that was killed: sweep the group
            _signal_group(self.proc.pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
        finally:
            self._log.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_http(url: str, service: Service, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200, or fail with the service's log."""
    deadline = time.monotonic() + timeout
    while True:
        service.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{service.name} did not answer {url} within {timeout:.0f}s:\n"
                + service.tail()
            )
        time.sleep(0.2)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def post_json(url: str, body: bytes, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# -- memory ----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after it
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(master: int) -> float:
    """User and system CPU time the master's workers have used so far."""
    ticks = 0
    for pid in _children(master):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class RssSample:
    """Resident memory of a gunicorn master's workers, in MiB."""

    at: float
    workers_mib: float
    per_worker_mib: list[float]
    master_mib: float

    @classmethod
    def take(cls, master: int, started: float) -> RssSample:
        workers = [_rss_kib(pid) / 1024 for pid in _children(master)]
        return cls(
            at=round(time.monotonic() - started, 1),
            workers_mib=round(sum(workers), 1),
            per_worker_mib=[round(w, 1) for w in workers],
            master_mib=round(_rss_kib(master) / 1024, 1),
        )

    def show(self) -> str:
        each = ", ".join(f"{w:.1f}" for w in self.per_worker_mib)
        return (
            f"workers {self.workers_mib:.1f} MiB ({each}); master {self.master_mib:.1f}"
        )


# -- wrk -------------------------------------------------------------------


def wrk(
    url: str,
    script: str,
    args: list[str],
    *,
    seconds: int,
    connections: int,
    threads: int,
) -> WrkResult:
    """One bounded wrk run against a loopback URL."""
    argv = _wrk_argv(url, script, args, seconds, connections, threads)
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        start_new_session=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stderr}")
    return WrkResult.parse(done.stdout)


def _wrk_argv(
    url: str, script: str, args: list[str], seconds: int, connections: int, threads: int
) -> list[str]:
    """The wrk command line: bounded in time, with a per-request timeout."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH / script),
        url,
        "--",
        *args,
    ]


@contextmanager
def wrk_background(
    url: str,
    script: str,
    args: list[str],
    *,
    seconds: int,
    connections: int,
    threads: int,
) -> Iterator[Callable[[], WrkResult]]:
    """A wrk run in the background; the block gets a function that waits for
    it and returns the result. Killed if the block fails."""
    argv = _wrk_argv(url, script, args, seconds, connections, threads)
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def finish() -> WrkResult:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{err}")
        return WrkResult.parse(out)

    try:
        yield finish
    finally:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# -- set-up ----------------------------------------------------------------


def open_redis(settings: Settings, stack: ExitStack, logs: Path) -> redis.Redis:
    """The shared Redis when it answers; otherwise a redis-server of our own
    on a free loopback port, stopped with the rest."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        client.ping()
        return client
    except redis.RedisError:
        client.close()
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(
            f"no Redis answers at {settings.redis_url} and redis-server is not "
            "installed (apt-get install redis-server)"
        )
    port = free_port()
    service = Service(
        "redis",
        [
            server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        dict(os.environ),
        logs,
    )
    stack.callback(service.stop)
    settings.redis_url = f"redis://127.0.0.1:{port}/15"
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    deadline = time.monotonic() + 15
    while True:
        service.check_alive()
        try:
            client.ping()
            return client
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key of this run's prefix (and nothing else)."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match="{" + prefix + "}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


def write_config(settings: Settings, folder: Path) -> Path:
    """The shipped configuration with the bench's settings on top: the
    category DoiT requires, the token Alertmanager would send, fixed
    gunicorn settings and a lifted API budget."""
    data = yaml.safe_load((ROOT / "config" / "relay.yaml").read_text())
    data.setdefault("doit", {})["rate_limit_per_minute"] = (
        settings.rate_limit_per_minute
    )
    data.setdefault("defaults", {})["category"] = CATEGORY
    alertmanager = data.setdefault("sources", {}).setdefault("alertmanager", {})
    alertmanager["auth"] = {"bearer_token": settings.token}
    server = data.setdefault("server", {})
    server.update(
        workers=settings.workers, threads=settings.threads, log_level=settings.log_level
    )
    data.setdefault("delivery", {})["workers"] = settings.delivery_workers_per_process
    path = folder / "relay.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any RELAY_/DOIT_ setting of the caller's,
    so that nothing but the bench's configuration applies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "DOIT_", "PROMETHEUS_MULTIPROC_DIR"))
    }
    env.update(extra)
    return env


# -- phases ----------------------------------------------------------------


def duplicate_body() -> bytes:
    """The body duplicate.lua sends, read from the script itself so that the
    prime and the storm are the same group."""
    text = (BENCH / "duplicate.lua").read_text()
    body = text.split("wrk.body = [[", 1)[1].split("]]", 1)[0]
    return body.encode()


def say(text: str = "") -> None:
    print(text, flush=True)


def queue_depth(store: Any) -> tuple[int, int, int]:
    stats = store.stats(time.time())
    return stats.pending, stats.scheduled, stats.dead


def wait_queue_empty(
    store: Any, emulator_url: str, limit: float
) -> tuple[bool, float, int]:
    """Wait until nothing is pending or scheduled; returns (emptied, seconds,
    tickets created meanwhile)."""
    before = get_json(f"{emulator_url}/_emulator/stats")["tickets"]
    started = time.monotonic()
    while True:
        pending, scheduled, _ = queue_depth(store)
        elapsed = time.monotonic() - started
        if pending == 0 and scheduled == 0:
            emptied = True
            break
        if elapsed > limit:
            emptied = False
            break
        time.sleep(0.25)
    after = get_json(f"{emulator_url}/_emulator/stats")["tickets"]
    return emptied, elapsed, after - before


def calibrate_delay(
    url: str,
    settings: Settings,
    target: float,
    base_latency_ms: float,
) -> int:
    """The mean pause (ms) between a connection's requests that offers about
    ``target`` requests a second: up to three short trials, each correcting
    the last by what a request was seen to cost a connection; the closest
    one wins (a correction may overshoot when latency grows with load)."""
    conns = settings.connections
    # each connection sends one request every pause + latency
    delay = max(1, round(conns / target * 1000 - base_latency_ms))
    tried: dict[int, float] = {}
    for _ in range(3):
        if delay in tried:
            break
        trial = wrk(
            url,
            "duplicate.lua",
            [settings.token, str(delay)],
            seconds=4,
            connections=conns,
            threads=settings.wrk_threads,
        )
        tried[delay] = trial.rps
        if trial.rps <= 0 or abs(trial.rps - target) / target < 0.05:
            break
        overhead = max(0.0, conns / trial.rps * 1000 - delay)
        delay = max(1, round(conns / target * 1000 - overhead))
    return min(tried, key=lambda d: abs(tried[d] - target))


# -- the run ---------------------------------------------------------------


@dataclass
class Target:
    """One server under test: the relay or the bare app."""

    name: str
    url: str
    service: Service


@dataclass
class Measured:
    """A wrk run and what the target's workers spent on it."""

    wrk: WrkResult
    cpu_us_per_request: float

    def show(self) -> str:
        return f"{self.wrk.show()}, {self.cpu_us_per_request:.0f} µs CPU/request"


def main() -> int:
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it, then run `make bench` again:\n"
            "  Debian/Ubuntu: sudo apt-get install wrk\n"
            "  macOS:         brew install wrk",
            file=sys.stderr,
        )
        return 2
    settings = Settings()
    if settings.duration < 1:
        sys.exit("BENCH_DURATION: expected at least 1 second")

    # a TERM (from make, or a CI timeout) unwinds through the finally blocks
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp,
        ExitStack() as stack,
    ):
        work = Path(tmp)
        redis_client = open_redis(settings, stack, work)
        stack.callback(redis_client.close)
        stack.callback(
            lambda: say(
                f"deleted {delete_prefix(redis_client, settings.prefix)} Redis "
                f"keys of prefix {settings.prefix}"
            )
        )
        results = run(settings, work, stack, redis_client, started)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    say(f"results written to {RESULTS.relative_to(ROOT)}")
    return 0


def start_services(
    settings: Settings, work: Path, stack: ExitStack
) -> tuple[str, Target, Target]:
    """The emulator, the relay and the bare app, each stopped by ``stack``;
    returns the emulator's URL and the two targets once all answer."""
    config = write_config(settings, work)
    relay_bin = str(VENV_BIN / "relay")
    emulator_port, relay_port, bare_port = free_port(), free_port(), free_port()
    emulator_bind = f"127.0.0.1:{emulator_port}"
    emulator_url = f"http://{emulator_bind}"

    emulator = Service(
        "emulator",
        [relay_bin, "--log-level", "warning", "emulator", "--bind", emulator_bind],
        base_env({}),
        work,
    )
    stack.callback(emulator.stop)
    relay_env = {
        "RELAY_BIND": f"127.0.0.1:{relay_port}",
        "DOIT_API_URL": emulator_url,
        "DOIT_API_KEY": "bench-key",
        "RELAY_STORE": settings.redis_url,
        "RELAY_STORE_PREFIX": settings.prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics-relay"),
    }
    relay = Service(
        "relay",
        [relay_bin, "--config", str(config), "serve"],
        base_env(relay_env),
        work,
    )
    stack.callback(relay.stop)
    bare_env = {
        "RELAY_BIND": f"127.0.0.1:{bare_port}",
        "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics-bare"),
    }
    bare = Service(
        "bare",
        [sys.executable, "-m", "bench.bare", "--config", str(config)],
        base_env(bare_env),
        work,
    )
    stack.callback(bare.stop)
    wait_http(f"{emulator_url}/_emulator/stats", emulator)
    targets = (
        Target("relay", f"http://127.0.0.1:{relay_port}", relay),
        Target("bare", f"http://127.0.0.1:{bare_port}", bare),
    )
    for target in targets:
        wait_http(f"{target.url}/healthz", target.service)
    return emulator_url, *targets


def run(
    settings: Settings,
    work: Path,
    stack: ExitStack,
    redis_client: redis.Redis,
    started: float,
) -> dict[str, Any]:
    from relay.store import open_store

    load_before = os.getloadavg()[0]
    say("relay benchmark (loopback only)")
    say(f"  machine: nproc {os.cpu_count()}, Python {platform.python_version()}")
    say(
        f"  gunicorn: worker_class={settings.worker_class} "
        f"workers={settings.workers} threads={settings.threads} "
        "(relay and bare alike)"
    )
    say(
        f"  relay: Redis store {settings.redis_url} prefix {settings.prefix}, "
        f"{settings.delivery_workers_per_process} delivery threads a worker, "
        f"log level {settings.log_level} (JSON lines to a file)"
    )
    say(
        "  DoiT budget lifted for the bench: doit.rate_limit_per_minute="
        f"{settings.rate_limit_per_minute:,} (the real API allows 1,000/minute)"
    )
    say(
        f"  wrk: {settings.wrk_threads} thread(s), {settings.connections} "
        f"connections, {settings.duration}s a phase; load average before: "
        f"{load_before:.2f}"
    )
    say()

    emulator_url, relay, bare = start_services(settings, work, stack)
    store = open_store(settings.redis_url, settings.prefix)
    stack.callback(store.close)
    hook = "/webhooks/alertmanager"

    def tickets() -> int:
        return int(get_json(f"{emulator_url}/_emulator/stats")["tickets"])

    def measure(
        target: Target,
        script: str,
        args: list[str],
        seconds: int,
        connections: int | None = None,
    ) -> Measured:
        before = cpu_seconds(target.service.pid)
        result = wrk(
            target.url + hook,
            script,
            [settings.token, *args],
            seconds=seconds,
            connections=connections or settings.connections,
            threads=settings.wrk_threads,
        )
        spent = cpu_seconds(target.service.pid) - before
        target.service.check_alive()
        if result.failed:
            raise RuntimeError(
                f"{target.name} {script}: requests failed: {result.errors}"
            )
        per_request = spent / result.requests * 1e6 if result.requests else 0.0
        return Measured(result, round(per_request, 1))

    rss = {"relay_idle": RssSample.take(relay.service.pid, started)}
    say(f"relay RSS after start: {rss['relay_idle'].show()}")

    # prime the storm's group: every measured request is then a duplicate
    for expected in ("queued", "duplicate"):
        status, answer = post_json(relay.url + hook, duplicate_body(), settings.token)
        decisions = answer.get("decisions") if isinstance(answer, dict) else None
        action = decisions[0].get("action") if status == 202 and decisions else None
        if action != expected:
            raise RuntimeError(
                f"priming the storm's group: expected 202 {expected}; "
                f"got {status} {answer}"
            )

    say(f"warming up ({WARMUP_SECONDS}s each)")
    for target in (bare, relay):
        measure(target, "duplicate.lua", [], WARMUP_SECONDS)
    rss["relay_start"] = RssSample.take(relay.service.pid, started)
    rss["bare_start"] = RssSample.take(bare.service.pid, started)
    say(f"relay RSS after warm-up: {rss['relay_start'].show()}")

    phases: dict[str, dict[str, Any]] = {}

    # -- the duplicate path: rounds of bare then relay, so that both meet
    # the same share of whatever else the machine is doing; the best round
    # of each is the figure, every round is kept in the results
    rounds: dict[str, list[Measured]] = {"bare": [], "relay": []}
    for number in range(1, settings.rounds + 1):
        for target in (bare, relay):
            say(f"duplicate path, round {number}/{settings.rounds}: {target.name}")
            done = measure(target, "duplicate.lua", [], settings.duration)
            rounds[target.name].append(done)
            say(f"  {done.show()}")
    dup = {name: max(runs, key=lambda m: m.wrk.rps) for name, runs in rounds.items()}
    wait_queue_empty(store, emulator_url, 30)
    if tickets() != 1:
        raise RuntimeError(
            f"the storm of one group opened {tickets()} tickets; expected 1"
        )
    say("  the storm's group has its one ticket in the emulator, and no other")
    phases["duplicate"] = phase_entry(dup)
    phases["duplicate"]["rounds"] = {
        name: [{"rps": m.wrk.rps, "p99_ms": m.wrk.p99_ms} for m in runs]
        for name, runs in rounds.items()
    }

    # -- the duplicate path at half the relay's peak
    target_rps = dup["relay"].wrk.rps / 2
    conns = settings.connections
    say(f"duplicate path paced at half the relay's peak ({target_rps:.0f} rps)")
    delay = calibrate_delay(
        relay.url + hook, settings, target_rps, dup["relay"].wrk.p50_ms
    )
    paced = measure(
        relay, "duplicate.lua", [str(delay)], settings.duration, connections=conns
    )
    say(
        f"  offered ~{target_rps:.0f} rps ({conns} connections, mean pause "
        f"{delay} ms): achieved {paced.show()}"
    )
    phases["duplicate_half_peak"] = {
        "relay": asdict(paced.wrk),
        "relay_cpu_us_per_request": paced.cpu_us_per_request,
        "target_rps": round(target_rps, 1),
        "mean_delay_ms": delay,
        "connections": conns,
    }

    # -- the new-alert path, then the drain of what it queued
    run_id = secrets.token_hex(3)
    new: dict[str, Measured] = {}
    say("new-alert path: bare")
    new["bare"] = measure(bare, "new_alert.lua", [run_id], settings.duration)
    say(f"  {new['bare'].show()}")
    say("new-alert path: relay (delivery into the emulator runs meanwhile)")
    tickets_before = tickets()
    new["relay"] = measure(relay, "new_alert.lua", [run_id], settings.duration)
    created_during = tickets() - tickets_before
    say(f"  {new['relay'].show()}")
    pending, scheduled, _ = queue_depth(store)
    say(
        f"  {created_during} tickets created during the run; "
        f"{pending + scheduled} jobs left in the queue"
    )
    phases["new_alert"] = phase_entry(new)
    phases["new_alert"]["tickets_during_run"] = created_during
    phases["new_alert"]["queue_after_run"] = pending + scheduled

    say(f"drain: waiting up to {settings.drain_max}s for the queue to empty")
    emptied, drain_seconds, drained = wait_queue_empty(
        store, emulator_url, settings.drain_max
    )
    pending, scheduled, dead = queue_depth(store)
    # wrk counts the answers it read; requests still in flight when it
    # stopped were recorded too, so the groups are counted in the store
    groups = count_keys(redis_client, settings.prefix, "key")
    total = tickets()
    rate = drained / drain_seconds if drain_seconds > 0 else 0.0
    say(
        f"  {'emptied' if emptied else 'NOT emptied'}: {drained} tickets in "
        f"{drain_seconds:.1f}s = {rate:.0f} tickets/s; {total} tickets for "
        f"{groups} groups recorded; {dead} dead letters"
    )
    if emptied and (total != groups or dead):
        raise RuntimeError(
            f"{total} tickets for {groups} groups ({dead} dead): expected one each"
        )
    drain = {
        "emptied": emptied,
        "seconds": round(drain_seconds, 2),
        "tickets": drained,
        "tickets_per_second": round(rate, 1),
        "tickets_total": total,
        "groups_total": groups,
        "left_in_queue": pending + scheduled,
        "dead": dead,
    }

    rss["relay_end"] = RssSample.take(relay.service.pid, started)
    rss["bare_end"] = RssSample.take(bare.service.pid, started)
    say(f"relay RSS at the end of the runs: {rss['relay_end'].show()}")

    soak = run_soak(settings, relay, hook, started) if settings.soak else None
    results = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": round(load_before, 2),
        },
        "settings": {
            k: v for k, v in asdict(settings).items() if k not in ("token", "prefix")
        },
        "phases": phases,
        "drain": drain,
        "rss": {name: asdict(sample) for name, sample in rss.items()},
        "soak": soak,
    }
    report(settings, results)
    return results


def phase_entry(measured: dict[str, Measured]) -> dict[str, Any]:
    relay, bare = measured["relay"], measured["bare"]
    return {
        "relay": asdict(relay.wrk),
        "bare": asdict(bare.wrk),
        "ratio": round(relay.wrk.rps / bare.wrk.rps, 3) if bare.wrk.rps else 0.0,
        "relay_cpu_us_per_request": relay.cpu_us_per_request,
        "bare_cpu_us_per_request": bare.cpu_us_per_request,
    }


def count_keys(client: redis.Redis, prefix: str, kind: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{{{prefix}}}:{kind}:*", count=1000))


def run_soak(
    settings: Settings, relay: Target, hook: str, started: float
) -> dict[str, Any]:
    """The duplicate path at full speed for ``settings.soak`` seconds, the
    workers' memory sampled every 30 seconds."""
    every = SOAK_SAMPLE_EVERY
    say(f"soak: duplicate path for {settings.soak}s, RSS every {every:.0f}s")
    master = relay.service.pid
    samples = [RssSample.take(master, started)]
    say(f"  {0:>5.0f}s  {samples[0].show()}")
    soak_start = time.monotonic()
    with wrk_background(
        relay.url + hook,
        "duplicate.lua",
        [settings.token],
        seconds=settings.soak,
        connections=settings.connections,
        threads=settings.wrk_threads,
    ) as finish:
        next_at = soak_start + every
        while next_at <= soak_start + settings.soak:
            time.sleep(max(0.0, next_at - time.monotonic()))
            relay.service.check_alive()
            samples.append(RssSample.take(master, started))
            say(f"  {next_at - soak_start:>5.0f}s  {samples[-1].show()}")
            next_at += every
        result = finish()
    if result.failed:
        raise RuntimeError(f"soak: requests failed: {result.errors}")
    first = samples[1] if len(samples) > 1 else samples[0]
    growth = samples[-1].workers_mib - first.workers_mib
    say(
        f"  {result.requests} requests, {result.show()}; workers' RSS "
        f"{first.workers_mib:.1f} -> {samples[-1].workers_mib:.1f} MiB "
        f"({growth:+.1f} MiB after the first {every:.0f}s)"
    )
    return {
        "seconds": settings.soak,
        "wrk": asdict(result),
        "samples": [asdict(s) for s in samples],
        "growth_after_first_sample_mib": round(growth, 1),
    }


def report(settings: Settings, results: dict[str, Any]) -> None:
    """The side-by-side table and the figures around it."""
    phases = results["phases"]

    def ms(r: dict[str, Any]) -> str:
        return f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}"

    rows = [
        [
            "phase",
            "relay rps",
            "bare rps",
            "relay/bare",
            "relay p50/p99 ms",
            "bare p50/p99 ms",
            "CPU µs/req relay/bare",
        ]
    ]
    labels = (
        ("duplicate", f"duplicate (best of {settings.rounds})"),
        ("new_alert", "new alert"),
    )
    for name, label in labels:
        entry = phases[name]
        relay, bare = entry["relay"], entry["bare"]
        rows.append(
            [
                label,
                f"{relay['rps']:.0f}",
                f"{bare['rps']:.0f}",
                f"{entry['ratio']:.0%}",
                ms(relay),
                ms(bare),
                f"{entry['relay_cpu_us_per_request']:.0f} / "
                f"{entry['bare_cpu_us_per_request']:.0f}",
            ]
        )
    half = phases["duplicate_half_peak"]
    rows.append(
        [
            f"duplicate, {half['target_rps']:.0f} rps offered",
            f"{half['relay']['rps']:.0f}",
            "-",
            "-",
            ms(half["relay"]),
            "-",
            f"{half['relay_cpu_us_per_request']:.0f} / -",
        ]
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    say()
    say("results")
    for row in rows:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        say("  " + "  ".join(cells))
    say(
        "  CPU µs/req: the gunicorn workers' user+system time per answered "
        "request; on the new-alert path the relay's includes delivering the "
        "tickets meanwhile"
    )
    say()
    drain = results["drain"]
    say(
        f"drain into the emulator: {drain['tickets_per_second']:.0f} tickets/s "
        f"({drain['tickets']} tickets in {drain['seconds']:.1f}s, queue "
        f"{'emptied' if drain['emptied'] else 'NOT emptied'}); the DoiT API "
        "allows 1,000/minute (16.7/s), lifted here"
    )
    rss = results["rss"]
    say(
        f"relay workers' RSS: {rss['relay_idle']['workers_mib']:.1f} MiB idle, "
        f"{rss['relay_start']['workers_mib']:.1f} after warm-up, "
        f"{rss['relay_end']['workers_mib']:.1f} at the end "
        f"(bare: {rss['bare_start']['workers_mib']:.1f} -> "
        f"{rss['bare_end']['workers_mib']:.1f})"
    )
    soak = results["soak"]
    if soak:
        say(
            f"soak of {soak['seconds']}s: workers' RSS "
            f"{soak['growth_after_first_sample_mib']:+.1f} MiB after the first "
            "sample"
        )
    ratio_ok = phases["duplicate"]["ratio"] >= 0.6
    p99_ok = half["relay"]["p99_ms"] < 50
    say(
        f"targets: duplicate path >= 60% of bare: "
        f"{'met' if ratio_ok else 'MISSED'}; p99 < 50 ms at half the peak: "
        f"{'met' if p99_ok else 'MISSED'}"
    )
    machine = results["machine"]
    say(
        f"settings: gunicorn {settings.worker_class} workers={settings.workers} "
        f"threads={settings.threads}; wrk -t{settings.wrk_threads} "
        f"-c{settings.connections} -d{settings.duration}s, "
        f"{settings.rounds} rounds of the duplicate path; "
        f"doit.rate_limit_per_minute={settings.rate_limit_per_minute:,} "
        "(bench only)"
    )
    say(
        f"machine: nproc {machine['nproc']}, Python {machine['python']}, "
        f"{machine['platform']}; load average before the run "
        f"{machine['load_average_before']} (other work on the machine lowers "
        "every figure)"
    )
    say("reproduce: make bench   (with a five-minute soak: BENCH_SOAK=300 make bench)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
