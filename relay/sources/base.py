"""What every webhook source implements.

A source authenticates an inbound request and parses it into a
:class:`relay.alert.Notification`. It knows nothing of Flask, rules, dedup
or the store: the web layer builds an :class:`Inbound` from the request,
and turns the relay's errors into HTTP answers in one place.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.alert import Notification, SourceName
from relay.errors import InputError


@dataclass
class Inbound:
    """One HTTP request, reduced to what a source may look at.

    ``headers`` has lower-case names. ``subpath`` is whatever followed the
    source's endpoint (``/webhooks/cloudwatch/<subpath>``), empty for the
    endpoint itself.
    """

    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    subpath: str = ""
    remote_addr: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object from ``body`` whatever the content type said.

    Raises InputError naming ``what`` was expected and what arrived.
    """
    if not body.strip():
        raise InputError(
            f"expected a JSON {what} in the request body; got an empty body"
        )
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise InputError(
            f"expected a UTF-8 JSON {what}; got undecodable bytes"
        ) from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"expected a JSON {what}; got malformed JSON "
            f"({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"expected a JSON object ({what}); got a JSON {type(data).__name__}"
        )
    return data


class Source(ABC):
    """One webhook source. Instances are built once per process from the
    configuration and must be safe to share between threads."""

    name: SourceName

    @abstractmethod
    def authenticate(self, request: Inbound) -> None:
        """Raise AuthError (401, optionally with a challenge) or
        ForbiddenError (403) unless the request may be processed."""

    @abstractmethod
    def parse(self, request: Inbound) -> Notification:
        """Turn the request into a Notification. Raises InputError for a
        payload that no retry can fix, ForbiddenError for one that is
        refused on principle (a bad signature, a foreign topic)."""

    def warnings(self) -> dict[str, str]:
        """What is allowed but risky in this source's configuration, as
        event name to explanation; logged once when the server starts."""
        return {}

    @property
    def auth_enabled(self) -> bool:
        """Whether the source checks credentials; the relay warns at start
        when it does not."""
        return True
