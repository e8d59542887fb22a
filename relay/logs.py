"""Logging: JSON lines by default, plain text on request, never a secret.

Configure once at process start with :func:`configure`. Modules log through
``logging.getLogger(__name__)`` with an event name as the message and the
facts as ``extra=`` fields::

    log.info("ticket.created", extra={"key": key, "ticket_id": 42})

Fields whose name looks like a credential are replaced by ``[redacted]``,
and so are bearer tokens, basic credentials and ``auth_token`` query values
found in any string, so that a secret cannot leak even through an error
message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

LogFormat = Literal["json", "text"]

# attributes every LogRecord has; anything else came in through extra=
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SECRET_NAMES = re.compile(
    r"(pass(word)?|secret|token|api_?key|authorization|signature|credential)",
    re.IGNORECASE,
)
_SECRET_VALUES = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (
        # lower-case keys only: the relay's own secrets travel that way
        # (auth_token=), while the capitalised Token= of an SNS SubscribeURL
        # is what an operator must read to confirm a subscription by hand
        re.compile(r"\b(auth_token|token|access_token|api_key|apikey)=([^&\s\"']+)"),
        r"\1=[redacted]",
    ),
    (re.compile(r"(?i)(https?://[^:/\s@]+):([^@\s/]+)@"), r"\1:[redacted]@"),
]
REDACTED = "[redacted]"


# Every request logs a line whose values mostly repeat (sources, rules,
# decisions, the keys of an alert storm): short values are redacted once and
# remembered, which spares the pattern scans on the hot path. Longer ones
# (error messages, bodies) are rarer and would make the cache's size
# unbounded in bytes, so they are always scanned.
_CACHED_UP_TO = 256


def redact(text: str) -> str:
    """Remove credentials from free text."""
    if len(text) <= _CACHED_UP_TO:
        return _redact_short(text)
    return _redact(text)


def _redact(text: str) -> str:
    for pattern, replacement in _SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


_redact_short = lru_cache(maxsize=4096)(_redact)


@lru_cache(maxsize=1024)
def _secret_name(name: str) -> bool:
    """Whether a field's name says it holds a credential (names come from
    the code, a small set, so each is checked once)."""
    return _SECRET_NAMES.search(name) is not None


def _clean(name: str, value: Any) -> Any:
    if _secret_name(name) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(name, v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: _clean(key, value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        entry.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = redact(
                f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            )
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger event key=value …`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        parts = [
            time,
            f"{record.levelname.lower():7}",
            record.name,
            redact(record.getMessage()),
        ]
        parts += [
            f"{k}={json.dumps(v, default=str, ensure_ascii=False)}"
            for k, v in _fields(record).items()
        ]
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(
                redact(f"error={record.exc_info[0].__name__}: {record.exc_info[1]}")
            )
        return " ".join(parts)


def configure(fmt: LogFormat = "json", level: str = "info") -> None:
    """Send the relay's logs to standard error in ``fmt``. Safe to call more
    than once: the handler is replaced, not added again."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_relay", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._relay = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs request lines at debug level; keep it quiet so that no URL
    # with a credential in it ever reaches the log
    logging.getLogger("urllib3").setLevel(logging.WARNING)
