"""The relay's exception family.

Every error the relay raises derives from :class:`RelayError`. The families
tell a caller what to do next: bad input is never worth retrying, a store
outage always is, and the DoiT client's errors (in :mod:`relay.doit`) say
whether a retry is safe.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error raised by the relay."""


class ConfigError(RelayError, ValueError):
    """The configuration is invalid; start-up stops. Retrying cannot help."""


class InputError(RelayError, ValueError):
    """A webhook payload is malformed; the sender must not retry it (HTTP 400)."""

    status = 400


class AuthError(RelayError):
    """Credentials are missing or wrong (HTTP 401).

    ``challenge`` is the ``WWW-Authenticate`` value to send back, when the
    sender only presents credentials after being challenged.
    """

    status = 401

    def __init__(self, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class ForbiddenError(RelayError):
    """The message is authentic-looking but refused: a bad signature or a
    topic outside the allow-list (HTTP 403). Retrying cannot help."""

    status = 403


class PayloadTooLarge(InputError):
    """The body exceeds the configured limit (HTTP 413)."""

    status = 413


class StoreUnavailable(RelayError):
    """The store cannot be reached or did not answer; retry later (HTTP 503)."""

    status = 503
