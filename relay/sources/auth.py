"""Inbound credentials: bearer tokens, basic auth and URL tokens, compared in
constant time. Failures never say which part was wrong and never echo what
was sent."""

from __future__ import annotations

import base64
import binascii
import hmac

from relay.config import InboundAuth
from relay.errors import AuthError
from relay.sources.base import Inbound


def same(given: str, expected: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_inbound(auth: InboundAuth, request: Inbound) -> None:
    """Accept the request when it carries the configured bearer token or
    basic credentials (either, when both are configured); do nothing when
    neither is configured.

    With basic auth configured, a refusal carries ``WWW-Authenticate:
    Basic`` so that senders which only authenticate after a challenge (Cloud
    Monitoring) try again with their credentials.
    """
    if not auth.enabled:
        return
    header = request.header("authorization")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    ok = False
    if auth.bearer_token and scheme.lower() == "bearer":
        ok = same(value, auth.bearer_token)
    elif auth.basic is not None and scheme.lower() == "basic":
        ok = _basic_matches(value, auth.basic.username, auth.basic.password)

    if ok:
        return
    realm = auth.realm.replace('"', "")
    hint = f'Basic realm="{realm}", charset="UTF-8"' if auth.basic is not None else None
    raise AuthError(
        "invalid credentials" if header else "credentials required", challenge=hint
    )


def _basic_matches(value: str, username: str, password: str) -> bool:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, secret = decoded.partition(":")
    # evaluate both comparisons so that timing does not tell which failed
    user_ok = same(user, username)
    secret_ok = same(secret, password)
    return bool(sep) and user_ok and secret_ok
