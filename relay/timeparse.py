"""Time parsing for inbound payloads.

Senders write times in more shapes than :meth:`datetime.fromisoformat`
accepts on every Python version: Go's RFC 3339 with nanoseconds
(``2020-02-06T00:17:58.432911368Z``), offsets other than UTC (``-05:00``),
CloudWatch's offsets without a colon (``+0000``), Go's zero time
(``0001-01-01T00:00:00Z``) standing for "no time", and Unix epoch seconds.
Every function here returns a timezone-aware datetime in UTC (or None for
"no time") and raises ValueError with a message that says what was expected
and what arrived, for the caller to prefix with the field's name.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

# RFC 3339 section 5.6, plus two forms real senders use: an offset without a
# colon (CloudWatch's "+0000") and a space instead of "T" (allowed by the RFC's
# note on readability). Any number of fraction digits: Go writes nanoseconds.
_RFC3339 = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    [Tt\x20]
    (?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})
    (?:\.(?P<fraction>\d+))?
    (?P<offset>[Zz]|(?P<sign>[+-])(?P<off_h>\d{2}):?(?P<off_m>\d{2}))
    """,
    re.VERBOSE,
)

# values are echoed in error messages; a huge one is cut so that a log line
# stays readable
_ECHO_LIMIT = 64


def parse_rfc3339(value: str | None) -> datetime | None:
    """Parse an RFC 3339 timestamp into an aware datetime in UTC.

    Returns None for None and for Go's zero time (``0001-01-01T00:00:00``
    at any offset), which Alertmanager sends for "not set". Fractions finer
    than a microsecond are truncated, never rounded, so that a time never
    moves into the next second. Raises ValueError for anything else that is
    not an RFC 3339 time, including a time without a UTC offset, whose
    instant cannot be known.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 time; got {describe_value(value)}")
    match = _RFC3339.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"expected an RFC 3339 time; got {describe_value(value)}")
    part = match.groupdict()

    if _is_go_zero(part):
        return None

    if part["sign"] is None:
        tz = UTC
    else:
        hours, minutes = int(part["off_h"]), int(part["off_m"])
        if hours > 23 or minutes > 59:
            raise ValueError(
                f"expected an RFC 3339 time; got {describe_value(value)} "
                "(the UTC offset is out of range)"
            )
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if part["sign"] == "-" else delta)

    microsecond = int((part["fraction"] or "0")[:6].ljust(6, "0"))
    try:
        parsed = datetime(
            int(part["year"]),
            int(part["month"]),
            int(part["day"]),
            int(part["hour"]),
            int(part["minute"]),
            int(part["second"]),
            microsecond,
            tzinfo=tz,
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise ValueError(
            f"expected an RFC 3339 time; got {describe_value(value)} ({e})"
        ) from None


def _is_go_zero(part: dict[str, str | None]) -> bool:
    # Go's zero time.Time, whatever offset a proxy re-rendered it with
    fields = ("year", "month", "day", "hour", "minute", "second")
    digits = tuple(int(part[name] or 0) for name in fields)
    return digits == (1, 1, 1, 0, 0, 0) and not (part["fraction"] or "").strip("0")


def parse_epoch(value: int | float | str | None) -> datetime | None:
    """Parse Unix epoch seconds (a number or a numeric string) into an aware
    datetime in UTC. Returns None for None and for the empty string."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected Unix epoch seconds; got {describe_value(value)}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(
            f"expected Unix epoch seconds; got {describe_value(value)}"
        ) from None
    if not math.isfinite(seconds):
        raise ValueError(f"expected Unix epoch seconds; got {describe_value(value)}")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"expected Unix epoch seconds; got {describe_value(value)} (out of range)"
        ) from None


def parse_time(value: object) -> datetime | None:
    """Parse either an RFC 3339 string or epoch seconds (a JSON number or a
    string of digits), for senders whose format varies between versions.
    Returns None for None, the empty string and Go's zero time."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a time; got {describe_value(value)}")
    if isinstance(value, int | float):
        return parse_epoch(value)
    if isinstance(value, str):
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
            return parse_epoch(value.strip())
        return parse_rfc3339(value)
    raise ValueError(f"expected a time; got {describe_value(value)}")


def describe_value(value: object) -> str:
    """Describe a received JSON value for an error message: strings quoted
    and cut to a readable length, containers by kind only."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        if len(value) > _ECHO_LIMIT:
            return repr(value[:_ECHO_LIMIT] + "…")
        return repr(value)
    return str(value)
