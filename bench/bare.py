"""The ceiling of the stack: Flask under the relay's own gunicorn settings,
doing nothing but parse the webhook's JSON and answer 202.

    python -m bench.bare --config CONFIG

It is started exactly as ``relay serve`` starts gunicorn (the same
:class:`relay.server.RelayServer`, so the same worker class, workers,
threads and timeouts, read from the same configuration; ``RELAY_BIND`` sets
where it listens), only the WSGI application differs. The gap between this
and the relay is what the relay's own work costs.
"""

from __future__ import annotations

import argparse
import json

from flask import Flask, Response, jsonify, request

from relay.config import load_config
from relay.server import RelayServer, prepare_metrics_dir


def create_bare_app() -> Flask:
    """A Flask app that accepts any JSON object on the relay's webhook
    paths, with the relay's statuses: 202 when parsed, 400 when not."""
    app = Flask("bare")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.post("/webhooks/<name>")
    def webhook(name: str) -> tuple[Response, int]:
        try:
            payload = json.loads(request.get_data(cache=False))
        except ValueError:
            return jsonify({"error": "body is not JSON"}), 400
        if not isinstance(payload, dict):
            return jsonify({"error": "body is not a JSON object"}), 400
        return jsonify({"status": "accepted"}), 202

    return app


class BareServer(RelayServer):
    """The relay's gunicorn application with the bare app in its place."""

    def load(self) -> Flask:
        return create_bare_app()


def main(argv: list[str] | None = None) -> None:
    """Serve the bare app until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the relay configuration")
    args = parser.parse_args(argv)
    config = load_config(args.config, require_api_key=False)
    # the gunicorn hooks shared with the relay expect the metrics directory
    prepare_metrics_dir()
    BareServer(config, None).run()


if __name__ == "__main__":
    main()
