"""Real servers for integration tests: the relay over HTTP, and Alertmanager.

Everything listens on 127.0.0.1 on a free port and is stopped by the test
that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import BaseWSGIServer, make_server

from relay.app import create_app
from relay.config import Config
from relay.store.base import Store


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail loudly
    after ``timeout`` seconds (generous: this is not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last value {last!r}")


class RelayHTTP:
    """The relay application served over real HTTP in a background thread."""

    def __init__(
        self, config: Config, store: Store | None = None, *, delivery: bool = False
    ) -> None:
        self.app = create_app(config, store=store, start_delivery=delivery)
        self.port = free_port()
        self.server: BaseWSGIServer = make_server(
            "127.0.0.1", self.port, self.app, threaded=True
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def relay(self) -> Any:
        return self.app.extensions["relay"]

    def start(self) -> RelayHTTP:
        self.thread.start()
        return self

    def stop(self) -> None:
        pool = self.app.extensions.get("relay.delivery")
        if pool is not None:
            pool.stop()
        self.server.shutdown()
        self.server.server_close()


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    """A real Alertmanager process (Debian's prometheus-alertmanager)."""

    def __init__(
        self,
        workdir: Path,
        webhook_url: str,
        token: str,
        *,
        cluster_port: int | None = None,
        peers: list[int] | None = None,
        group_interval: str = "2s",
        repeat_interval: str = "4s",
    ) -> None:
        assert ALERTMANAGER, "prometheus-alertmanager is not installed"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "route": {
                "receiver": "relay",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "relay",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {"authorization": {"credentials": token}},
                        }
                    ],
                }
            ],
        }
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.args = [
            ALERTMANAGER,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",
        ]
        if cluster_port is None:
            self.args.append("--cluster.listen-address=")
        else:
            self.args += [
                f"--cluster.listen-address=127.0.0.1:{cluster_port}",
                f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
                "--cluster.peer-timeout=1s",
                "--cluster.gossip-interval=100ms",
                "--cluster.pushpull-interval=1s",
                "--cluster.settle-timeout=5s",
            ]
            for peer in peers or []:
                self.args.append(f"--cluster.peer=127.0.0.1:{peer}")
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def start(self) -> Alertmanager:
        self.log = open(self.workdir / "alertmanager.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(self._ready, timeout=30)
        return self

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        answer = requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        assert answer.status_code == 200, answer.text

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()

    def log_text(self) -> str:
        path = self.workdir / "alertmanager.log"
        return path.read_text(errors="replace") if path.exists() else ""


# -- the relay and Redis as real processes ---------------------------------

RELAY = shutil.which("relay", path=str(Path(sys.executable).parent)) or shutil.which(
    "relay"
)
REDIS_SERVER = shutil.which("redis-server")


def relay_env(**overrides: str) -> dict[str, str]:
    """The environment for a relay subprocess: the test's own (already
    cleared of RELAY_* and DOIT_* by the autouse fixture), without any
    metrics directory of the caller's, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(overrides)
    return env


class RelayProcess:
    """``relay serve`` (or ``relay worker``, or any other command) as a real
    process in a process group of its own, so that the test can kill it
    whole, gunicorn's master and workers together, as a crash would."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *args: str,
        name: str = "relay",
    ) -> None:
        assert RELAY, "the relay console script is not installed"
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.env = env
        self.args = [RELAY, "--log-format", "text", *(args or ("serve",))]
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        if "RELAY_BIND" in env:
            self.url = f"http://{env['RELAY_BIND']}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, *, wait: bool = True) -> RelayProcess:
        """Start the process; with ``wait`` and a ``RELAY_BIND``, return once
        it answers ``/healthz``."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait and self.url:
            wait_until(self._healthy, timeout=60)
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.args[3:]} exited with {self.process.returncode}:\n"
                + self.log_text()[-4000:]
            )
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL every process of the group: no hook, no clean-up runs."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        # the workers are reaped by init once their master is gone; wait
        # until none of the group is left, so that a restart never races them
        wait_until(lambda: not _group_alive(self.pid), timeout=30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an orchestrator stops it; SIGKILL for whatever is
        left after ``timeout``. Returns the exit status (None if killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        if _group_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        return self.process.returncode

    def children(self) -> list[int]:
        """The pids of the processes this one started (gunicorn's workers)."""
        return [pid for pid, ppid in _processes() if ppid == self.pid]

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def _processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process, from /proc."""
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
        found.append((int(entry.name), int(fields[1])))
    return found


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process remains in the group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class RedisServer:
    """A throwaway redis-server on a free loopback port, with its append-only
    file in ``workdir`` so that a restart on the same port and folder finds
    everything it had acknowledged."""

    def __init__(
        self, workdir: Path, port: int | None = None, *, durable: bool = True
    ) -> None:
        assert REDIS_SERVER, "redis-server is not installed"
        self.binary = REDIS_SERVER
        self.durable = durable
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.workdir),
        ]
        if self.durable:
            # every write on disk before its reply: a SIGKILL then loses
            # nothing Redis acknowledged, as the relay's promise assumes
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        with open(self.workdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, timeout=30)
        except BaseException:
            self.kill()
            raise
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                "redis-server exited:\n"
                + (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
            )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to save or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill()


def alertmanager_group(name: str, status: str = "firing") -> dict[str, Any]:
    """An Alertmanager v4 notification for a group of one alert called
    ``name`` (grouped by alertname, as Alertmanager does by default)."""
    return {
        "version": "4",
        "status": status,
        "receiver": "relay",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "severity": "warning"},
        "commonAnnotations": {"summary": f"{name} is broken"},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, "severity": "warning"},
                "annotations": {"summary": f"{name} is broken"},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z"
                if status == "firing"
                else "2024-05-01T12:30:00Z",
                "generatorURL": "http://prometheus.example:9090/graph",
                "fingerprint": f"fp-{name}",
            }
        ],
    }


def tickets_per_group(tickets: list[dict[str, Any]]) -> dict[str, int]:
    """How many tickets each group got, by the alert name in the subject
    (``[FIRING:1] <name>``) of tickets opened for :func:`alertmanager_group`."""
    counts: dict[str, int] = {}
    for ticket in tickets:
        name = str(ticket["subject"]).partition("] ")[2]
        counts[name] = counts.get(name, 0) + 1
    return counts


# one scrape: sample value by sample name and its sorted label pairs
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(url: str) -> Samples:
    """One scrape of the relay's ``/metrics``, parsed."""
    answer = requests.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (found, pairs), value in samples.items()
        if found == name and set(labels.items()) <= set(pairs)
    )
