"""Amazon SNS message verification.

An SNS HTTP(S) subscription authenticates nothing but the JSON body: each
message carries an RSA signature over a fixed selection of its fields and
the URL of the certificate that signed it. :class:`SnsVerifier` rebuilds
the string that was signed, checks the certificate URL *before* anything is
fetched (so that a forged message cannot make the relay request an address
of the attacker's choosing), obtains the certificate from an operator's
directory, its cache or AWS, and verifies the signature.

:func:`is_aws_url` is the same host check, shared with the handling of a
``SubscribeURL``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.errors import ForbiddenError, RelayError

log = logging.getLogger(__name__)

DEFAULT_CERT_HOST_PATTERN = r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$"

# the fields each message type signs, in the byte-wise order AWS uses
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": (
        "Message",
        "MessageId",
        "Subject",
        "Timestamp",
        "TopicArn",
        "Type",
    ),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]
# Subject is the one signed field SNS leaves out when it was not published
OPTIONAL_SIGNED_FIELDS = frozenset({"Subject"})

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}
# a real SNS certificate is about 2 KiB; anything far larger is not one
MAX_CERT_BYTES = 64 * 1024
CERT_CACHE_SIZE = 32
FETCH_TIMEOUT = (3.05, 5.0)  # connect, read (seconds)
# characters a URL from AWS never needs; a backslash or a space is how
# parsers are made to disagree about where the host ends
_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")
_CERT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pem$")


class UpstreamUnavailable(RelayError):
    """An AWS endpoint (a signing certificate, a subscription confirmation)
    could not be reached or answered badly. Retrying later may help (503),
    and SNS does retry a 5xx, so a network blip never loses an alarm."""

    status = 503


Fetch = Callable[[str], bytes]


def url_problem(url: Any, host_pattern: str | re.Pattern[str]) -> str | None:
    """Why ``url`` is not an https URL on an AWS host, or None when it is.

    The hostname is parsed, never searched for, and must match
    ``host_pattern`` in full; userinfo, an explicit port and characters
    that URL parsers disagree on are refused outright.
    """
    if not isinstance(url, str) or not url:
        return "expected an https URL; got nothing"
    if not _URL_CHARS.match(url):
        return "the URL contains spaces, control or non-ASCII characters"
    if "\\" in url:
        return "the URL contains a backslash"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"the URL cannot be parsed ({e})"
    if parts.scheme != "https":
        return f"expected the https scheme; got {parts.scheme or 'none'!r}"
    if "@" in parts.netloc or parts.username is not None:
        return "the URL carries userinfo before its host"
    if port is not None or ":" in parts.netloc:
        return "the URL names an explicit port"
    host = parts.hostname or ""
    if parts.netloc.lower() != host:
        return "the URL's host part is not a plain hostname"
    pattern = (
        re.compile(host_pattern) if isinstance(host_pattern, str) else host_pattern
    )
    if not pattern.fullmatch(host):
        return f"host {host!r} is not an AWS SNS host ({pattern.pattern})"
    return None


def is_aws_url(url: Any, host_pattern: str | re.Pattern[str]) -> bool:
    """Whether ``url`` is an https URL whose host fully matches
    ``host_pattern``, with no userinfo or port."""
    return url_problem(url, host_pattern) is None


def cert_url_problem(url: Any, host_pattern: str | re.Pattern[str]) -> str | None:
    """Why ``url`` is not acceptable as a ``SigningCertURL``, or None."""
    problem = url_problem(url, host_pattern)
    if problem is not None:
        return problem
    parts = urlsplit(str(url))
    if not parts.path.endswith(".pem"):
        return "the certificate URL's path does not end in .pem"
    if parts.query or parts.fragment:
        return "the certificate URL carries a query or fragment"
    return None


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The exact bytes SNS signed for ``message``.

    ``Key\\nValue\\n`` over the type's signed fields in order, skipping an
    absent ``Subject``; values are used as decoded, newlines included,
    never re-serialised. Raises ForbiddenError for an unknown type or a
    missing or non-string signed field, since nothing can be verified then.
    """
    kind = message.get("Type")
    fields = SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ForbiddenError(
            f"cannot verify an SNS message of Type {kind!r}; expected one of "
            f"{', '.join(SIGNED_FIELDS)}"
        )
    out: list[str] = []
    for name in fields:
        if name not in message and name in OPTIONAL_SIGNED_FIELDS:
            continue
        value = message.get(name)
        if not isinstance(value, str):
            found = "nothing" if value is None else type(value).__name__
            raise ForbiddenError(
                f"SNS {kind} field {name} must be a string to verify; got {found}"
            )
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


def http_fetch(url: str) -> bytes:
    """GET ``url`` with short timeouts, no redirects and a size bound.

    Raises UpstreamUnavailable for any network failure or non-200 answer.
    The caller has already checked that ``url`` is an AWS URL.
    """
    try:
        with requests.get(
            url, timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True
        ) as response:
            if response.status_code != 200:
                raise UpstreamUnavailable(
                    f"GET {_where(url)} answered HTTP {response.status_code}; "
                    "expected 200"
                )
            body = response.raw.read(MAX_CERT_BYTES + 1, decode_content=True)
    except requests.RequestException as e:
        raise UpstreamUnavailable(
            f"GET {_where(url)} failed: {type(e).__name__}"
        ) from e
    if len(body) > MAX_CERT_BYTES:
        raise UpstreamUnavailable(
            f"GET {_where(url)} returned more than {MAX_CERT_BYTES} bytes"
        )
    return bytes(body)


def _where(url: str) -> str:
    # scheme, host and path only: a query may hold a confirmation token
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{parts.path}"


class SnsVerifier:
    """Verifies SNS message signatures (SignatureVersion 1 and 2).

    Certificates are looked up first in ``cert_dir`` by the file name at the
    end of the ``SigningCertURL`` (``SimpleNotificationService-<hash>.pem``),
    so that hosts without egress, and tests, work offline; then in a small
    in-memory cache keyed by URL; and only then fetched over HTTPS. The URL
    is checked before any of these. Thread-safe.

    The certificate's issuer and subject are deliberately not checked: a
    certificate is only ever taken from the operator's directory or over
    verified TLS from an AWS host, which is the trust the official AWS
    validators rely on, while AWS has changed the issuing CA over the years.
    """

    def __init__(
        self,
        cert_host_pattern: str = DEFAULT_CERT_HOST_PATTERN,
        cert_dir: str | Path | None = None,
        *,
        fetch: Fetch | None = None,
        check_expiry: bool = True,
        cache_size: int = CERT_CACHE_SIZE,
    ) -> None:
        self.host_pattern = re.compile(cert_host_pattern)
        self.cert_dir = Path(cert_dir) if cert_dir else None
        self.check_expiry = check_expiry
        self._fetch = fetch or http_fetch
        self._cache: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def verify(self, message: Mapping[str, Any]) -> None:
        """Return when ``message`` carries a valid SNS signature.

        Raises ForbiddenError saying what was wrong (never the signature
        itself), or UpstreamUnavailable when the certificate could not be
        fetched.
        """
        version = message.get("SignatureVersion")
        if version not in _HASHES:
            raise ForbiddenError(
                f"unsupported SNS SignatureVersion {version!r}; expected '1' or '2'"
            )
        signature = self._signature(message.get("Signature"))
        data = string_to_sign(message)
        certificate = self.certificate(message.get("SigningCertURL"))

        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ForbiddenError("the SNS signing certificate does not hold an RSA key")
        try:
            key.verify(signature, data, padding.PKCS1v15(), _HASHES[version]())
        except InvalidSignature:
            raise ForbiddenError(
                "the SNS signature does not match the message and its certificate"
            ) from None

    def check_cert_url(self, url: Any) -> str:
        """Return ``url`` when it is an acceptable ``SigningCertURL``, else
        raise ForbiddenError naming the problem."""
        problem = cert_url_problem(url, self.host_pattern)
        if problem is not None:
            raise ForbiddenError(f"SigningCertURL refused: {problem}")
        return str(url)

    def certificate(self, url: Any) -> x509.Certificate:
        """The certificate behind ``url``, from the directory, the cache or
        AWS; checked for expiry unless disabled."""
        checked = self.check_cert_url(url)
        with self._lock:
            certificate = self._cache.get(checked)
            if certificate is not None:
                self._cache.move_to_end(checked)
        if certificate is None:
            certificate = self._load(checked)
            with self._lock:
                self._cache[checked] = certificate
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)

        if self.check_expiry:
            now = datetime.now(UTC)
            if not (
                certificate.not_valid_before_utc
                <= now
                <= certificate.not_valid_after_utc
            ):
                raise ForbiddenError(
                    "the SNS signing certificate is outside its validity period "
                    f"({certificate.not_valid_before_utc:%Y-%m-%d} to "
                    f"{certificate.not_valid_after_utc:%Y-%m-%d})"
                )
        return certificate

    def _load(self, url: str) -> x509.Certificate:
        name = PurePosixPath(urlsplit(url).path).name
        if self.cert_dir is not None and _CERT_FILE.match(name):
            path = self.cert_dir / name
            if path.is_file():
                return _parse_pem(path.read_bytes(), str(path))

        try:
            pem = self._fetch(url)
        except UpstreamUnavailable as e:
            # name the file an operator without egress should put in cert_dir
            log.error(
                "sns.certificate_unavailable",
                extra={"url": url, "file": name, "reason": str(e)},
            )
            raise
        log.info("sns.certificate_fetched", extra={"url": url})
        return _parse_pem(pem, url)

    @staticmethod
    def _signature(value: Any) -> bytes:
        if not isinstance(value, str) or not value:
            raise ForbiddenError("the SNS message carries no Signature")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ForbiddenError("the SNS Signature is not valid base64") from None


def _parse_pem(pem: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ForbiddenError(
            f"the SNS signing certificate from {where} is not a PEM certificate"
        ) from None
