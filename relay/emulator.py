"""An emulator of the DoiT Support API, for tests, benchmarks and newcomers.

A real HTTP server keeping tickets in memory. It implements the two methods
the relay uses, with the documented validation:

``POST /support/v1/tickets``
    Body ``{"ticket": {...}}``. ``subject``, ``platform`` and ``category``
    (or ``product``) are required; ``severity`` defaults to ``low`` and must
    be one of low, normal, high, urgent; ``requester`` is optional. Answers
    201 with the ticket: an increasing integer ``id``, ``status`` ``new``, a
    console ``url`` and ``createTime`` in ms.
``GET /support/v1/tickets``
    ``filter`` (``key:value`` joined by ``|``; a repeated key is ORed,
    different keys are ANDed, repeating more than one key is an error),
    ``minCreationTime`` / ``maxCreationTime`` (ms, inclusive), ``maxResults``
    (1 to 100) and ``pageToken``. Answers ``{"tickets", "pageToken",
    "rowCount"}``, newest first; ``rowCount`` counts every match.

Both need ``Authorization: Bearer <key>`` (any key, or exactly ``api_key``
when one is set) and answer errors as ``{"error": "..."}``.

The control API under ``/_emulator/`` is unauthenticated, since it exists
only to drive the emulator from tests and benchmarks:

``POST /_emulator/faults``
    Queue a fault for the next ``count`` creates (or lists, with ``"target":
    "list"``), first queued first served. JSON fields: ``count`` (default 1),
    ``status`` (the HTTP status to answer), ``retry_after`` (a
    ``Retry-After`` value), ``delay`` (seconds to wait before answering) and
    ``create`` (create the ticket, then answer ``status`` anyway). A fault
    with a ``delay`` and no ``status`` creates the ticket and answers it
    late, as a server that is slow to reply.
``GET /_emulator/tickets``
    Every ticket, oldest first, with its body.
``GET /_emulator/stats``
    ``{"creates_attempted", "lists_attempted", "tickets", "faults_pending"}``.
``POST /_emulator/reset``
    Forget tickets, faults and counters.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from relay.config import PLATFORMS, SEVERITIES

log = logging.getLogger(__name__)

CONSOLE_URL = "https://console.doit.com/support/tickets/{id}"
FILTER_KEYS = ("severity", "priority", "status", "platform", "category")
MAX_RESULTS = 100
# the documentation's own example sends the display text and gets the id back
_PLATFORM_NAMES = {
    "google cloud": "google_cloud_platform",
    "google cloud platform": "google_cloud_platform",
    "amazon web services": "amazon_web_services",
    "aws": "amazon_web_services",
    "microsoft azure": "microsoft_azure",
    "azure": "microsoft_azure",
    "google workspace": "google_g_suite",
    "microsoft office 365": "microsoft_office_365",
}

Target = Literal["create", "list"]


class _Refusal(Exception):
    """An answer other than success, raised from deep inside a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Fault:
    """A misbehaviour for the next ``count`` calls of one target."""

    count: int = 1
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    create: bool = False
    target: Target = "create"

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """Validate a fault spec from the control API."""
        if not isinstance(data, dict):
            raise _Refusal(400, "expected a JSON object describing the fault")
        unknown = set(data) - {
            "count",
            "status",
            "retry_after",
            "delay",
            "create",
            "target",
        }
        if unknown:
            raise _Refusal(400, f"unknown fault fields: {', '.join(sorted(unknown))}")

        count = data.get("count", 1)
        status = data.get("status")
        delay = data.get("delay", 0)
        target = data.get("target", "create")
        retry_after = data.get("retry_after")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise _Refusal(400, f"count must be an integer of 1 or more; got {count!r}")
        if status is not None and (
            not isinstance(status, int) or not 100 <= status <= 599
        ):
            raise _Refusal(400, f"status must be an HTTP status; got {status!r}")
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise _Refusal(400, f"delay must be seconds, 0 or more; got {delay!r}")
        if target not in ("create", "list"):
            raise _Refusal(400, f"target must be create or list; got {target!r}")
        if status is None and not delay:
            raise _Refusal(400, "a fault needs a status, a delay or both")
        return cls(
            count=count,
            status=status,
            retry_after=None if retry_after is None else str(retry_after),
            delay=float(delay),
            create=bool(data.get("create", False)),
            target=target,
        )


class EmulatorState:
    """Tickets, queued faults and counters, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: list[dict[str, Any]] = []
        self._faults: dict[Target, deque[Fault]] = {"create": deque(), "list": deque()}
        # ids keep increasing across resets so that an id is never reused
        # by a long-running emulator
        self._next_id = 1
        self.creates_attempted = 0
        self.lists_attempted = 0

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults[fault.target].append(fault)

    def take_fault(self, target: Target) -> Fault | None:
        """Count the attempt and take one use of the oldest queued fault."""
        with self._lock:
            if target == "create":
                self.creates_attempted += 1
            else:
                self.lists_attempted += 1
            queue = self._faults[target]
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.popleft()
            return fault

    def create(self, fields: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            ticket_id = self._next_id
            self._next_id += 1
            now = int(time.time() * 1000)
            ticket = {
                "id": ticket_id,
                **fields,
                "status": "new",
                "url": CONSOLE_URL.format(id=ticket_id),
                "createTime": now,
                "updateTime": now,
            }
            self._tickets.append(ticket)
            return dict(ticket)

    def tickets(self) -> list[dict[str, Any]]:
        """Every ticket, oldest first, copied."""
        with self._lock:
            return [dict(t) for t in self._tickets]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "creates_attempted": self.creates_attempted,
                "lists_attempted": self.lists_attempted,
                "tickets": len(self._tickets),
                "faults_pending": sum(
                    f.count for queue in self._faults.values() for f in queue
                ),
            }

    def reset(self) -> None:
        with self._lock:
            self._tickets.clear()
            for queue in self._faults.values():
                queue.clear()
            self.creates_attempted = 0
            self.lists_attempted = 0


# -- validation ------------------------------------------------------------


def _string(ticket: dict[str, Any], name: str, *, required: bool) -> str:
    value = ticket.get(name)
    if value is None:
        if required:
            raise _Refusal(400, f"ticket.{name} is required")
        return ""
    if not isinstance(value, str):
        raise _Refusal(
            400, f"ticket.{name} must be a string; got {type(value).__name__}"
        )
    if required and not value.strip():
        raise _Refusal(400, f"ticket.{name} must not be empty")
    return value


def validate_ticket(payload: Any) -> dict[str, str]:
    """The fields of a valid create request, or a _Refusal naming the field."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ticket"), dict):
        raise _Refusal(400, 'body must be a JSON object {"ticket": {...}}')
    ticket: dict[str, Any] = payload["ticket"]

    subject = _string(ticket, "subject", required=True)
    body = _string(ticket, "body", required=False)
    requester = _string(ticket, "requester", required=False)

    severity = _string(ticket, "severity", required=False) or "low"
    if severity not in SEVERITIES:
        raise _Refusal(
            400,
            f"ticket.severity must be one of {', '.join(SEVERITIES)}; got {severity!r}",
        )

    platform = _string(ticket, "platform", required=True)
    platform = _PLATFORM_NAMES.get(platform.strip().lower(), platform)
    if platform not in PLATFORMS:
        raise _Refusal(
            400,
            f"ticket.platform must be one of {', '.join(PLATFORMS)}; got {platform!r}",
        )

    # the current specification calls the field product
    if "category" not in ticket and "product" not in ticket:
        raise _Refusal(400, "ticket.category is required (or ticket.product)")
    if "category" in ticket:
        category = _string(ticket, "category", required=True)
    else:
        category = _string(ticket, "product", required=True)

    return {
        "subject": subject,
        "body": body,
        "requester": requester,
        "severity": severity,
        "platform": platform,
        "category": category,
    }


def parse_filter(text: str) -> dict[str, set[str]]:
    """``key:value|key:value`` into values per key, with the API's rules."""
    wanted: dict[str, set[str]] = {}
    repeated: set[str] = set()
    for part in text.split("|"):
        key, sep, value = part.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise _Refusal(400, f"filter: expected key:value; got {part!r}")
        if key not in FILTER_KEYS:
            raise _Refusal(
                400,
                f"filter: key must be one of {', '.join(FILTER_KEYS)}; got {key!r}",
            )
        if key == "priority":
            key = "severity"
        if key in wanted:
            repeated.add(key)
        wanted.setdefault(key, set()).add(value)
    if len(repeated) > 1:
        raise _Refusal(
            400,
            "filter: only one key may be repeated; got "
            f"{', '.join(sorted(repeated))} repeated",
        )
    return wanted


def _int_param(
    name: str, low: int | None = None, high: int | None = None
) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _Refusal(400, f"{name} must be an integer; got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Refusal(400, f"{name} must be between {low} and {high}; got {value}")
    return value


def _public(ticket: dict[str, Any]) -> dict[str, Any]:
    """A ticket as the API shows it: without the body."""
    return {k: v for k, v in ticket.items() if k != "body"}


# -- the application -------------------------------------------------------


def create_emulator_app(
    api_key: str | None = None, state: EmulatorState | None = None
) -> Flask:
    """The emulator as a Flask app. ``api_key`` set: only that key is
    accepted; ``None``: any bearer key is."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["doit_emulator"] = emulator = state or EmulatorState()

    def refuse(status: int, message: str, retry_after: str | None = None) -> Response:
        response = jsonify(error=message)
        response.status_code = status
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def authenticate() -> None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _Refusal(401, "missing bearer API key")
        if api_key is not None and not hmac.compare_digest(
            key.strip().encode(), api_key.encode()
        ):
            raise _Refusal(401, "invalid API key")

    def apply(fault: Fault | None, work: Callable[[], Response]) -> Response:
        """Answer through a fault, if one is queued for this call."""
        if fault is None:
            return work()
        log.info(
            "emulator.fault",
            extra={"path": request.path, "status": fault.status, "delay": fault.delay},
        )
        if fault.status is None:
            answer = work()
            time.sleep(fault.delay)
            return answer
        if fault.create:
            work()
        time.sleep(fault.delay)
        return refuse(
            fault.status, f"emulated fault: {fault.status}", fault.retry_after
        )

    @app.errorhandler(_Refusal)
    def on_refusal(e: _Refusal) -> Response:
        return refuse(e.status, e.message)

    @app.errorhandler(HTTPException)
    def on_http_error(e: HTTPException) -> Response:
        return refuse(e.code or 500, e.description or e.name)

    @app.post("/support/v1/tickets")
    def create_ticket() -> Response | tuple[Response, int]:
        fault = emulator.take_fault("create")

        def work() -> Response:
            authenticate()
            fields = validate_ticket(request.get_json(force=True, silent=True))
            response = jsonify(_public(emulator.create(fields)))
            response.status_code = 201
            return response

        return apply(fault, work)

    @app.get("/support/v1/tickets")
    def list_tickets() -> Response:
        fault = emulator.take_fault("list")

        def work() -> Response:
            authenticate()
            wanted = (
                parse_filter(request.args["filter"])
                if request.args.get("filter")
                else {}
            )
            since = _int_param("minCreationTime")
            until = _int_param("maxCreationTime")
            size = _int_param("maxResults", 1, MAX_RESULTS) or MAX_RESULTS
            # the token is the id of the last ticket sent, so that tickets
            # created between pages neither repeat nor shift later pages
            token = request.args.get("pageToken", "")
            if token and not token.isdigit():
                raise _Refusal(
                    400, f"pageToken is not one this server issued: {token!r}"
                )

            matches = [
                t
                for t in reversed(emulator.tickets())
                if (since is None or t["createTime"] >= since)
                and (until is None or t["createTime"] <= until)
                and all(str(t.get(k, "")) in v for k, v in wanted.items())
            ]
            rest = [t for t in matches if not token or t["id"] < int(token)]
            page = rest[:size]
            more = len(rest) > size
            return jsonify(
                tickets=[_public(t) for t in page],
                pageToken=str(page[-1]["id"]) if more else "",
                rowCount=len(matches),
            )

        return apply(fault, work)

    # -- control API: unauthenticated, see the module docstring --

    @app.post("/_emulator/faults")
    def add_fault() -> tuple[Response, int]:
        fault = Fault.from_json(request.get_json(force=True, silent=True))
        emulator.add_fault(fault)
        return jsonify(queued=fault.count, **emulator.stats()), 201

    @app.get("/_emulator/tickets")
    def all_tickets() -> Response:
        return jsonify(emulator.tickets())

    @app.get("/_emulator/stats")
    def stats() -> Response:
        return jsonify(emulator.stats())

    @app.post("/_emulator/reset")
    def reset() -> Response:
        emulator.reset()
        return jsonify(emulator.stats())

    return app


# -- serving ---------------------------------------------------------------


class _RequestHandler(WSGIRequestHandler):
    """Access lines through the relay's logging (JSON or text, as
    configured) rather than werkzeug's own coloured lines."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info(
            "emulator.request",
            extra={
                "method": getattr(self, "command", ""),
                "path": getattr(self, "path", ""),
                "status": int(code) if str(code).isdigit() else str(code),
            },
        )

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.ERROR if type == "error" else logging.INFO
        log.log(level, "emulator.server", extra={"detail": message % args})


def _make_server(host: str, port: int, app: Flask) -> BaseWSGIServer:
    return make_server(host, port, app, threaded=True, request_handler=_RequestHandler)


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8081`` for IPv6) into its parts."""
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8081; got {bind!r}")
    return host, int(port)


class EmulatorServer:
    """The emulator on a background thread, for tests and benchmarks.

    ``port=0`` picks a free port; ``url`` says where it listens once
    started. ``state`` is the live store, and the helpers below reach it
    directly, without HTTP.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.state = EmulatorState()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give the client, e.g. ``http://127.0.0.1:40123``."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._server.port}"

    def start(self) -> EmulatorServer:
        app = create_emulator_app(self.api_key, self.state)
        self._server = _make_server(self.host, self.port, app)
        # a short poll keeps stop() quick, which adds up over a test suite
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="doit-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fault(
        self,
        status: int | None = None,
        *,
        count: int = 1,
        retry_after: str | None = None,
        delay: float = 0.0,
        create: bool = False,
        target: Target = "create",
    ) -> None:
        """Queue a fault, as ``POST /_emulator/faults`` does."""
        spec: dict[str, Any] = {
            "count": count,
            "status": status,
            "retry_after": retry_after,
            "delay": delay,
            "create": create,
            "target": target,
        }
        self.state.add_fault(Fault.from_json(spec))

    def tickets(self) -> list[dict[str, Any]]:
        """Every ticket, oldest first, with its body."""
        return self.state.tickets()

    def stats(self) -> dict[str, int]:
        return self.state.stats()


def serve(
    bind: str,
    api_key: str | None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the emulator in the foreground until interrupted. ``on_ready``
    receives the base URL once the socket listens."""
    host, port = parse_bind(bind)
    app = create_emulator_app(api_key)
    server = _make_server(host, port, app)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.port}"
    log.info("emulator.listening", extra={"url": url, "keyed": api_key is not None})
    if on_ready is not None:
        on_ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
