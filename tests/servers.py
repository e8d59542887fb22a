"""Real servers for integration tests: the relay over HTTP, and Alertmanager.

Everything listens on 127.0.0.1 on a free port and is stopped by the test
that started it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests
import yaml
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
