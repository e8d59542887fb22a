"""``relay serve``: the relay under gunicorn, with delivery in every worker.

gunicorn forks the worker processes; each builds the application with
:func:`relay.app.create_app` and starts its own delivery threads, so one
process serves webhooks and drains the queue. Metrics from every worker are
added up through prometheus_client's multiprocess mode, in a directory
created when the server starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from relay.app import build_sources, warn_at_start
from relay.config import Config

log = logging.getLogger(__name__)


def prepare_metrics_dir() -> str:
    """Point prometheus_client at a fresh directory for this server's
    worker processes, unless one was given."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    else:
        folder = tempfile.mkdtemp(prefix="relay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from relay import metrics

    metrics.use_multiprocess_values()
    return folder


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: forget a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: let the delivery threads finish their current job."""
    app = getattr(worker, "wsgi", None)
    pool = getattr(app, "extensions", {}).get("relay.delivery") if app else None
    if pool is not None:
        pool.stop()


def build_app(
    config_path: str | None, log_format: str | None, config: Config | None = None
) -> Flask:
    """Build one worker's application, from ``config`` when given (the one
    ``relay serve`` validated), else from the configuration read again."""
    from relay import logs
    from relay.app import create_app
    from relay.config import load_config

    checked = config is not None
    config = config or load_config(config_path)
    logs.configure(
        log_format or config.server.log_format,  # type: ignore[arg-type]
        config.server.log_level,
    )
    # `relay serve` gives the start-up warnings once, in the master
    return create_app(config, start_delivery=True, warn=not checked)


class RelayServer(BaseApplication):  # type: ignore[misc]
    """gunicorn, configured from the relay's own configuration."""

    def __init__(self, config: Config, log_format: str | None) -> None:
        self.relay_config = config
        self.log_format = log_format
        super().__init__()

    def load_config(self) -> None:
        server = self.relay_config.server
        settings = {
            "bind": [server.bind],
            "workers": server.workers,
            "threads": server.threads,
            "worker_class": "gthread",
            "timeout": int(server.timeout),
            "graceful_timeout": 15,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "child_exit": child_exit,
            "worker_exit": worker_exit,
            "limit_request_line": 8190,
            "forwarded_allow_ips": "127.0.0.1",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # the configuration checked at start, not the file read again: a
        # configuration from the environment alone has no file to read
        # (its path names the default, which need not exist), and a file
        # edited since must not give the workers a configuration nobody
        # checked
        return build_app(None, self.log_format, self.relay_config)


def serve(config: Config, log_format: str | None = None) -> None:
    """Run the server until it is stopped."""
    # only a directory made here is removed afterwards, never an operator's
    own_folder = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    master = os.getpid()
    folder = prepare_metrics_dir()
    log.info(
        "server.starting",
        extra={
            "bind": config.server.bind,
            "workers": config.server.workers,
            "store": _store_label(config.store.url),
            "api_url": config.doit.api_url,
            "dry_run": config.dry_run,
            "metrics_dir": folder,
        },
    )
    warn_at_start(config, build_sources(config))
    try:
        RelayServer(config, log_format).run()
    finally:
        # a worker leaves gunicorn by raising SystemExit through this very
        # frame (it was forked inside run()); only the master may remove
        # the directory, which the other workers are still writing to
        if own_folder and os.getpid() == master:
            shutil.rmtree(folder, ignore_errors=True)


def _store_label(url: str) -> str:
    """The store URL without any password in it."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://[redacted]@{rest.split('@', 1)[1]}"
    return url
