"""gunicorn settings for running the relay with gunicorn directly:

    gunicorn -c config/gunicorn.conf.py 'relay.server:build_app(None, None)'

``relay serve`` applies the same settings from the relay's own configuration
and is the usual way to start it.
"""

import os

from relay.server import child_exit, prepare_metrics_dir, worker_exit

bind = os.environ.get("RELAY_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("RELAY_WORKERS", "2"))
threads = 4
worker_class = "gthread"
timeout = 30
graceful_timeout = 15
accesslog = None
errorlog = "-"
loglevel = "warning"

prepare_metrics_dir()

__all__ = ["child_exit", "worker_exit"]
