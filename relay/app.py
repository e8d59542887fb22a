"""The application factory: one place that builds the relay's parts.

``create_app`` builds the configuration, the store, the rules, the renderer
and the sources once per process and registers the views. gunicorn (through
``relay serve``), ``relay worker`` and the tests all use it.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from relay import metrics
from relay.config import Config, load_config
from relay.dedup import AlertDecision, RecentKeys, decide
from relay.errors import (
    AuthError,
    ForbiddenError,
    InputError,
    RelayError,
    StoreUnavailable,
)
from relay.render import Renderer
from relay.rules import Rules
from relay.sources.base import Inbound, Source
from relay.store import open_store
from relay.store.base import Store

log = logging.getLogger(__name__)


def templates_dir(config: Config) -> Path:
    """Where the templates are: the configured folder, else the project's
    own ``templates/`` (a source checkout or the container), else the copy
    installed with the package."""
    if config.templates_dir:
        return Path(config.templates_dir)
    beside = Path(__file__).resolve().parent.parent / "templates"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "relay" / "templates"


def build_sources(config: Config) -> dict[str, Source]:
    """The enabled sources, by their endpoint name."""
    from relay.sources.alertmanager import AlertmanagerSource
    from relay.sources.cloud_monitoring import CloudMonitoringSource
    from relay.sources.cloudwatch import CloudWatchSource

    sources: dict[str, Source] = {}
    if config.sources.alertmanager.enabled:
        sources["alertmanager"] = AlertmanagerSource(config)
    if config.sources.cloudwatch.enabled:
        sources["cloudwatch"] = CloudWatchSource(config)
    if config.sources.cloud_monitoring.enabled:
        sources["cloud-monitoring"] = CloudMonitoringSource(config)
    return sources


@dataclass
class Relay:
    """The parts of one relay process, shared by its views and workers."""

    config: Config
    store: Store
    rules: Rules
    renderer: Renderer
    sources: dict[str, Source] = field(default_factory=dict)
    recent: RecentKeys | None = None

    @classmethod
    def build(cls, config: Config, store: Store | None = None) -> Relay:
        # one renderer (one Jinja environment and its compiled templates)
        # serves the rules' values and the tickets alike
        renderer = Renderer(templates_dir(config))
        return cls(
            config=config,
            store=store or open_store(config.store.url, config.store.prefix),
            rules=Rules(config, renderer.templates_dir, renderer=renderer),
            renderer=renderer,
            sources=build_sources(config),
            recent=RecentKeys(config.store.duplicate_memory),
        )


def warn_at_start(config: Config, sources: dict[str, Source]) -> None:
    """Say once at start what is allowed but risky: a source that accepts
    anyone or any topic, or no default category (DoiT refuses a ticket
    without one, so alerts no rule gives a category would end as dead
    letters)."""
    if not config.defaults.category:
        log.warning(
            "config.no_default_category",
            extra={
                "hint": "set defaults.category (RELAY_DEFAULT_CATEGORY) or give "
                "every rule a category; DoiT refuses tickets without one"
            },
        )
    for name, source in sources.items():
        if not source.auth_enabled:
            log.warning(
                "source.unauthenticated",
                extra={"source": name, "hint": "configure credentials for it"},
            )
        for event, detail in source.warnings().items():
            log.warning(event, extra={"source": name, "detail": detail})


def create_app(
    config: Config | None = None,
    *,
    store: Store | None = None,
    start_delivery: bool = False,
    warn: bool = True,
) -> Flask:
    """Build the WSGI application.

    With ``start_delivery`` the process also runs delivery worker threads
    (``relay serve`` does; tests usually drive delivery themselves).
    """
    config = config or load_config()
    relay = Relay.build(config, store)
    app = Flask("relay")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.extensions["relay"] = relay
    if warn:
        warn_at_start(relay.config, relay.sources)
    _register_views(app, relay)

    if start_delivery:
        from relay.delivery import start_workers

        app.extensions["relay.delivery"] = start_workers(relay)
    return app


def _error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": message, **extra}), status


def _register_views(app: Flask, relay: Relay) -> None:
    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            relay.store.ping()
        except StoreUnavailable as e:
            return jsonify({"status": "unavailable", "store": str(e)}), 503
        path = relay.config.path
        shown = path if path and Path(path).is_file() else "embedded defaults"
        return jsonify({"status": "ready", "config": shown}), 200

    @app.get("/metrics")
    def metrics_view() -> Response:
        return Response(metrics.render(relay.store), mimetype=metrics.CONTENT_TYPE)

    @app.post("/webhooks/<name>")
    @app.post("/webhooks/<name>/<path:subpath>")
    def webhook(name: str, subpath: str = "") -> tuple[Response, int]:
        source = relay.sources.get(name)
        if source is None:
            return _error(404, f"no enabled source called {name!r}")
        answer, status, headers = receive(relay, source, subpath)
        metrics.count(metrics.WEBHOOKS, name, str(status))
        response = jsonify(answer)
        response.headers.update(headers)
        return response, status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
        return _error(413, _too_large(relay))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        response, status = _error(error.code or 500, error.description or error.name)
        # keep what the error says beside its text: a 405 names the methods
        # that are allowed (Allow), as HTTP requires
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        log.error("request.failed", exc_info=error, extra={"path": request.path})
        return _error(500, "internal error; the request was not recorded")


def receive(
    relay: Relay, source: Source, subpath: str
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Authenticate, parse, decide and record one webhook call.

    Returns the JSON answer, the status and extra headers. Store first,
    then answer: 202 only once every alert is durably recorded, 503 when it
    could not be (so that the sender retries), 4xx only for what no retry
    can fix.
    """
    try:
        body = _read_body()
        inbound = Inbound(
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            args=request.args.to_dict(),
            subpath=subpath,
            remote_addr=request.remote_addr or "",
        )
        source.authenticate(inbound)
        notification = source.parse(inbound)
    except RequestEntityTooLarge:
        return {"error": _too_large(relay)}, 413, {}
    except AuthError as e:
        headers = {"WWW-Authenticate": e.challenge} if e.challenge else {}
        log.info("webhook.unauthorized", extra={"source": source.name, "why": str(e)})
        return {"error": str(e)}, 401, headers
    except ForbiddenError as e:
        log.warning("webhook.forbidden", extra={"source": source.name, "why": str(e)})
        return {"error": str(e)}, 403, {}
    except InputError as e:
        log.info("webhook.invalid", extra={"source": source.name, "why": str(e)})
        return {"error": str(e)}, e.status, {}
    except StoreUnavailable as e:
        return _unavailable(source.name, "parse", e)
    except RelayError as e:
        # a dependency of the source (an AWS certificate, say) is out of
        # reach: answer 5xx so that the sender retries later
        status = int(getattr(e, "status", 503))
        status = status if status >= 500 else 503
        log.warning("webhook.upstream", extra={"source": source.name, "why": str(e)})
        return {"error": str(e)}, status, {"Retry-After": "10"}

    now = time.time()
    store = relay.store
    try:
        if notification.message_id and store.message_seen(notification.message_id, now):
            log.info(
                "webhook.replay",
                extra={"source": source.name, "message_id": notification.message_id},
            )
            return {"status": "replay", "message_id": notification.message_id}, 200, {}
        answer: dict[str, Any]
        decisions: list[AlertDecision]
        if not notification.alerts:
            answer = {"status": "acknowledged", "note": notification.note or ""}
            decisions = []
        else:
            decisions = decide(
                notification, relay.rules, relay.renderer, store, now, relay.recent
            )
            answer = {
                "status": "accepted",
                "decisions": [d.to_dict() for d in decisions],
            }
            if notification.note:
                answer["note"] = notification.note
        if notification.message_id:
            store.remember_message(
                notification.message_id, relay.config.delivery.message_id_ttl, now
            )
    except StoreUnavailable as e:
        return _unavailable(source.name, "record", e)

    for decision in decisions:
        metrics.count(metrics.ALERTS, source.name, decision.action, decision.rule)
    return answer, 202 if decisions else 200, {}


def _too_large(relay: Relay) -> str:
    limit = relay.config.server.max_body_bytes
    return f"request body exceeds the limit of {limit} bytes"


def _read_body() -> bytes:
    """The request body, or RequestEntityTooLarge above the configured limit.

    A body with a Content-Length over the limit is refused before it is
    read. A streamed body (chunked, no Content-Length) is cut at the limit
    by werkzeug without a word; reading one byte past the cut tells a body
    of exactly the limit from a longer one, which must be refused rather
    than parsed short.
    """
    body = request.get_data(cache=False)
    limit = request.max_content_length
    if (
        limit is not None
        and request.content_length is None
        and len(body) >= limit
        and request.environ.get("wsgi.input_terminated")
        and request.input_stream.read(1)
    ):
        raise RequestEntityTooLarge()
    return body


def _unavailable(
    source: str, step: str, error: StoreUnavailable
) -> tuple[dict[str, Any], int, dict[str, str]]:
    metrics.STORE_ERRORS.labels(step).inc()
    log.error(
        "webhook.store_unavailable", extra={"source": source, "error": str(error)}
    )
    answer = {"error": "the store is unavailable; nothing was recorded, retry later"}
    return answer, 503, {"Retry-After": "5"}
