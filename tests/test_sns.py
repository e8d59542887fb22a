"""SNS message verification: the string-to-sign, certificate URLs, the
certificate directory and cache, and the real signed AWS samples."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from relay.errors import ForbiddenError
from relay.sources.sns import (
    SnsVerifier,
    UpstreamUnavailable,
    cert_url_problem,
    http_fetch,
    is_aws_url,
    string_to_sign,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
HOST = r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$"
CERT_NAME = "SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
CERT_URL = f"https://sns.us-east-1.amazonaws.com/{CERT_NAME}"
REAL_CERT_NAME = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
REAL_SIGNED = [
    "sns_notification_sigv1_real_1.json",
    "sns_notification_sigv2_real_1.json",
    "sns_subscription_confirmation_signed_real_1.json",
    "sns_cloudwatch_alarm_signed_real_1.json",
    "sns_cloudwatch_composite_alarm_signed_real_1.json",
]


# signing helpers, shared with the source's tests -----------------------------


@lru_cache(maxsize=4)
def _key(index: int = 0) -> rsa.RSAPrivateKey:
    # one key per index for the whole run: RSA key generation is the slow part
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_certificate(
    key: rsa.RSAPrivateKey, *, valid_from: datetime | None = None, days: int = 30
) -> bytes:
    """A self-signed PEM certificate for ``key``, shaped like SNS's."""
    start = valid_from or datetime.now(UTC) - timedelta(days=1)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Relay Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class Signer:
    """Signs SNS messages with a test key whose certificate sits in
    ``cert_dir`` under the file name its ``SigningCertURL`` ends in."""

    def __init__(self, cert_dir: Path, *, key_index: int = 0) -> None:
        self.key = _key(key_index)
        self.cert_dir = cert_dir
        self.cert_url = CERT_URL
        cert_dir.mkdir(parents=True, exist_ok=True)
        (cert_dir / CERT_NAME).write_bytes(make_certificate(self.key))

    def sign(self, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
        signed = dict(message)
        signed["SignatureVersion"] = version
        signed.setdefault("SigningCertURL", self.cert_url)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(string_to_sign(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode("ascii")
        return signed

    def notification(
        self,
        message: str,
        *,
        topic: str = "arn:aws:sns:eu-central-1:210987654321:ops-alerts",
        subject: str | None = "ALARM: test",
        message_id: str = "5f0c2a7e-9d3b-5c1a-8e4f-7a6b5c4d3e2f",
        version: str = "1",
    ) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic,
            "Message": message,
            "Timestamp": "2024-03-04T10:15:42.400Z",
        }
        if subject is not None:
            envelope["Subject"] = subject
        envelope["UnsubscribeURL"] = (
            "https://sns.eu-central-1.amazonaws.com/?Action=Unsubscribe"
            f"&SubscriptionArn={topic}:0d9e8f7a"
        )
        return self.sign(envelope, version)

    def confirmation(
        self,
        *,
        kind: str = "SubscriptionConfirmation",
        topic: str = "arn:aws:sns:eu-central-1:210987654321:ops-alerts",
        subscribe_url: str | None = None,
    ) -> dict[str, Any]:
        url = subscribe_url or (
            "https://sns.eu-central-1.amazonaws.com/?Action=ConfirmSubscription"
            f"&TopicArn={topic}&Token=2336412f37fb687f"
        )
        return self.sign(
            {
                "Type": kind,
                "MessageId": "8c1d2e3f-4a5b-4c6d-9e7f-0a1b2c3d4e5f",
                "Token": "2336412f37fb687f",
                "TopicArn": topic,
                "Message": f"You have chosen to subscribe to the topic {topic}.\n"
                "To confirm the subscription, visit the SubscribeURL included in "
                "this message.",
                "SubscribeURL": url,
                "Timestamp": "2024-03-04T09:00:00.000Z",
            }
        )


class RecordingFetch:
    """A fetch callable that records every URL and serves fixed bytes."""

    def __init__(self, answer: bytes = b"") -> None:
        self.answer = answer
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        return self.answer


class CountingServer(ThreadingHTTPServer):
    """A loopback HTTP server that counts every connection it accepts,
    whatever is sent on it (a TLS hello counts too)."""

    connections = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.paths: list[str] = []

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    server: CountingServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target")
            self.end_headers()
            return
        body = b"x" * (70 * 1024) if self.path == "/big" else b"pem bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def counting_listener() -> Iterator[CountingServer]:
    """A real HTTP listener on 127.0.0.1 that counts its connections."""
    server = CountingServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def listener() -> Iterator[CountingServer]:
    """A loopback listener that the code under test must never contact."""
    with counting_listener() as server:
        yield server


def bad_urls(port: int) -> list[str]:
    """Certificate or confirmation URLs that must never be fetched; the
    first ones point at the loopback listener."""
    aws = "sns.us-east-1.amazonaws.com"
    return [
        f"http://127.0.0.1:{port}/{CERT_NAME}",
        f"https://127.0.0.1:{port}/{CERT_NAME}",
        f"https://{aws}@127.0.0.1:{port}/{CERT_NAME}",
        f"http://{aws}@127.0.0.1:{port}/{CERT_NAME}",
        f"https://{aws}:443@127.0.0.1:{port}/{CERT_NAME}",
        f"https://127.0.0.1:{port}/{aws}/{CERT_NAME}",
        f"https://127.0.0.1:{port}/x.pem?host={aws}",
        f"https://{aws}:{port}/{CERT_NAME}",
        f"https://{aws}\\@127.0.0.1:{port}/{CERT_NAME}",
        f"http://{aws}/{CERT_NAME}",
        f"https://{aws}.evil.example/{CERT_NAME}",
        f"https://evil.com/{aws}/x.pem",
        f"https://{aws}@evil.example/x.pem",
        f"https://user:pass@{aws}/{CERT_NAME}",
        f"https://sns.us-east-1.amazonaws.com.cn.evil.example/{CERT_NAME}",
        f"https://xsns.us-east-1.amazonaws.com/{CERT_NAME}",
        f"https://sns.amazonaws.com/{CERT_NAME}",
        f"https://s3.us-east-1.amazonaws.com/{CERT_NAME}",
        f"https://sns.us-east-1.amazonaws.com%2eevil.example/{CERT_NAME}",
        f"https://sns.us-east-1.amazonaws.com\n/{CERT_NAME}",
        f"ftp://{aws}/{CERT_NAME}",
        f"//{aws}/{CERT_NAME}",
        "",
    ]


# the string to sign ------------------------------------------------------------


def test_string_to_sign_orders_fields_and_skips_an_absent_subject() -> None:
    message = {
        "Type": "Notification",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Timestamp": "2024-01-01T00:00:00.000Z",
        "MessageId": "m",
        "Message": "a\r\nb",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?x",
    }

    assert string_to_sign(message) == (
        b"Message\na\r\nb\nMessageId\nm\nTimestamp\n2024-01-01T00:00:00.000Z\n"
        b"TopicArn\narn:aws:sns:us-east-1:1:t\nType\nNotification\n"
    )
    with_subject = string_to_sign({**message, "Subject": "s"})
    assert b"MessageId\nm\nSubject\ns\nTimestamp\n" in with_subject


def test_string_to_sign_of_a_confirmation_includes_token_and_subscribe_url() -> None:
    data = string_to_sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "m",
            "Token": "t",
            "TopicArn": "a",
            "Message": "hi",
            "SubscribeURL": "u",
            "Timestamp": "ts",
        }
    )
    assert data == (
        b"Message\nhi\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\n"
        b"Token\nt\nTopicArn\na\nType\nSubscriptionConfirmation\n"
    )


def test_string_to_sign_refuses_a_missing_signed_field() -> None:
    with pytest.raises(ForbiddenError, match="field TopicArn must be a string"):
        string_to_sign(
            {"Type": "Notification", "Message": "m", "MessageId": "i", "Timestamp": "t"}
        )


# verification with the test key -------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_notification_verifies_offline(tmp_path: Path, version: str) -> None:
    signer = Signer(tmp_path)
    fetch = RecordingFetch()
    verifier = SnsVerifier(HOST, tmp_path, fetch=fetch)

    verifier.verify(signer.notification("hello", version=version))

    assert fetch.calls == []


def test_a_multiline_message_verifies(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())

    verifier.verify(signer.notification("Hello\r\nworld!\n", subject=None))


def test_subscription_and_unsubscribe_confirmations_verify(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())

    verifier.verify(signer.confirmation())
    verifier.verify(signer.confirmation(kind="UnsubscribeConfirmation"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Message", "hello!"),
        ("MessageId", "another"),
        ("Subject", "OK: test"),
        ("Timestamp", "2024-03-04T10:15:42.401Z"),
        ("TopicArn", "arn:aws:sns:eu-central-1:210987654321:other"),
        ("SignatureVersion", "2"),
    ],
)
def test_changing_a_signed_field_fails(tmp_path: Path, field: str, value: str) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())
    message = signer.notification("hello")
    message[field] = value

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(message)


def test_dropping_the_subject_fails(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())
    message = signer.notification("hello")
    del message["Subject"]

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(message)


def test_changing_an_unsigned_field_does_not_matter(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())
    message = signer.notification("hello")
    message["UnsubscribeURL"] = "https://sns.eu-central-1.amazonaws.com/?other"

    verifier.verify(dict(reversed(list(message.items()))))


def test_a_message_signed_by_another_key_fails(tmp_path: Path) -> None:
    Signer(tmp_path / "dir")
    other = Signer(tmp_path / "other", key_index=1)
    verifier = SnsVerifier(HOST, tmp_path / "dir", fetch=RecordingFetch())

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(other.notification("hello"))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"SignatureVersion": "3"}, "unsupported SNS SignatureVersion '3'"),
        ({"SignatureVersion": None}, "unsupported SNS SignatureVersion None"),
        ({"Signature": ""}, "carries no Signature"),
        ({"Signature": "not base64!"}, "not valid base64"),
        ({"Type": "Other"}, "Type 'Other'"),
        ({"SigningCertURL": "https://example.com/x.pem"}, "SigningCertURL refused"),
    ],
)
def test_a_malformed_signature_is_refused(
    tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    signer = Signer(tmp_path)
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch())
    message = {**signer.notification("hello"), **change}

    with pytest.raises(ForbiddenError, match=error) as caught:
        verifier.verify(message)
    assert signer.notification("hello")["Signature"] not in str(caught.value)


def test_an_expired_certificate_is_refused_unless_expiry_checks_are_off(
    tmp_path: Path,
) -> None:
    signer = Signer(tmp_path)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    (tmp_path / CERT_NAME).write_bytes(make_certificate(signer.key, valid_from=old))
    message = signer.notification("hello")

    with pytest.raises(ForbiddenError, match="outside its validity period"):
        SnsVerifier(HOST, tmp_path, fetch=RecordingFetch()).verify(message)
    SnsVerifier(HOST, tmp_path, fetch=RecordingFetch(), check_expiry=False).verify(
        message
    )


# certificate sources ------------------------------------------------------------


def test_a_certificate_missing_from_the_directory_is_fetched_once_and_cached(
    tmp_path: Path,
) -> None:
    signer = Signer(tmp_path / "signer")
    fetch = RecordingFetch((tmp_path / "signer" / CERT_NAME).read_bytes())
    verifier = SnsVerifier(HOST, tmp_path / "empty", fetch=fetch)

    verifier.verify(signer.notification("one"))
    verifier.verify(signer.notification("two"))

    assert fetch.calls == [CERT_URL]


def test_the_certificate_cache_is_bounded(tmp_path: Path) -> None:
    signer = Signer(tmp_path)
    pem = (tmp_path / CERT_NAME).read_bytes()
    fetch = RecordingFetch(pem)
    verifier = SnsVerifier(HOST, None, fetch=fetch, cache_size=2)
    urls = [f"https://sns.us-east-{n}.amazonaws.com/{CERT_NAME}" for n in (1, 2, 3)]

    for url in [*urls, urls[0]]:
        verifier.verify({**signer.notification("x"), "SigningCertURL": url})

    # the first URL was evicted by the third and had to be fetched again
    assert fetch.calls == [*urls, urls[0]]


def test_a_fetched_answer_that_is_not_a_certificate_is_refused(tmp_path: Path) -> None:
    signer = Signer(tmp_path / "signer")
    verifier = SnsVerifier(HOST, None, fetch=RecordingFetch(b"<html>nope</html>"))

    with pytest.raises(ForbiddenError, match="not a PEM certificate"):
        verifier.verify(signer.notification("x"))


def test_an_unreachable_certificate_is_a_retryable_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Signer(tmp_path / "signer")

    def failing(url: str) -> bytes:
        raise UpstreamUnavailable("GET failed: ConnectTimeout")

    with pytest.raises(UpstreamUnavailable) as caught:
        SnsVerifier(HOST, None, fetch=failing).verify(signer.notification("x"))
    assert caught.value.status == 503
    # the log names the file an operator can put in cert_dir
    [record] = [
        r for r in caplog.records if r.getMessage() == "sns.certificate_unavailable"
    ]
    assert record.file == CERT_NAME  # type: ignore[attr-defined]


def test_the_default_fetch_reads_over_real_http(listener: CountingServer) -> None:
    port = listener.server_address[1]

    assert http_fetch(f"http://127.0.0.1:{port}/cert.pem") == b"pem bytes"


@pytest.mark.parametrize(
    ("path", "error"),
    [("/redirect", "answered HTTP 302"), ("/big", "more than 65536 bytes")],
)
def test_the_default_fetch_follows_no_redirect_and_bounds_the_size(
    listener: CountingServer, path: str, error: str
) -> None:
    port = listener.server_address[1]

    with pytest.raises(UpstreamUnavailable, match=error):
        http_fetch(f"http://127.0.0.1:{port}{path}")
    assert listener.paths == [path]


def test_the_default_fetch_turns_a_refused_connection_into_a_retryable_error() -> None:
    # a port that was free a moment ago and has nobody listening on it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(UpstreamUnavailable, match="failed: ConnectionError"):
        http_fetch(f"http://127.0.0.1:{port}/cert.pem")


def test_the_directory_is_looked_up_by_file_name_only(tmp_path: Path) -> None:
    signer = Signer(tmp_path / "certs")
    fetch = RecordingFetch(b"")
    verifier = SnsVerifier(HOST, tmp_path / "certs", fetch=fetch)
    url = f"https://sns.us-east-1.amazonaws.com/a/b/..%2f{CERT_NAME}"
    message = {**signer.notification("x"), "SigningCertURL": url}

    with pytest.raises(ForbiddenError, match="not a PEM certificate"):
        verifier.verify(message)
    # the odd name is never looked up on disk; it went to the (checked) fetch
    assert fetch.calls == [url]


# URL checks: refused before any fetch ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"https://sns.us-east-1.amazonaws.com/{CERT_NAME}",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem",
        "https://sns.ap-southeast-2.amazonaws.com/SimpleNotificationService-2.pem",
    ],
)
def test_an_sns_certificate_url_is_accepted(url: str) -> None:
    assert cert_url_problem(url, HOST) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://sns.us-east-1.amazonaws.com/cert.txt", "does not end in .pem"),
        ("https://sns.us-east-1.amazonaws.com/", "does not end in .pem"),
        ("https://sns.us-east-1.amazonaws.com/x.pem?y=1", "query or fragment"),
        ("https://sns.us-east-1.amazonaws.com/x.pem#y", "query or fragment"),
        ("http://sns.us-east-1.amazonaws.com/x.pem", "https scheme"),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", "not an AWS SNS"),
        ("https://evil.com/sns.us-east-1.amazonaws.com/x.pem", "not an AWS SNS"),
        ("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", "userinfo"),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", "explicit port"),
    ],
)
def test_a_certificate_url_problem_is_named(url: str, problem: str) -> None:
    assert problem in (cert_url_problem(url, HOST) or "")


def test_the_host_pattern_is_configurable_for_other_partitions() -> None:
    gov = "https://sns.us-gov-west-1.amazonaws-us-gov.com/x.pem"
    pattern = r"^sns\.[a-z0-9\-]{3,}\.amazonaws(-us-gov)?\.com$"

    assert not is_aws_url(gov, HOST)
    assert is_aws_url(gov, pattern)


def test_bad_certificate_urls_are_never_fetched(listener: CountingServer) -> None:
    port = listener.server_address[1]
    recording = RecordingFetch(b"")
    live = SnsVerifier(HOST, None)  # the real, requests-based fetch
    recorded = SnsVerifier(HOST, None, fetch=recording)
    message = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn:aws:sns:us-east-1:210987654321:t",
        "Message": "x",
        "Timestamp": "2024-03-04T10:15:42.400Z",
        "SignatureVersion": "1",
        "Signature": base64.b64encode(b"\0" * 256).decode(),
    }

    for url in [*bad_urls(port), f"https://sns.us-east-1.amazonaws.com/{CERT_NAME}x"]:
        for verifier in (live, recorded):
            with pytest.raises(ForbiddenError, match="SigningCertURL refused"):
                verifier.verify({**message, "SigningCertURL": url})

    assert recording.calls == []
    assert listener.connections == 0
    # the listener does count: a direct request reaches it
    with requests.Session() as session:
        session.trust_env = False
        session.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert listener.connections == 1


def test_bad_urls_are_not_aws_urls(listener: CountingServer) -> None:
    for url in bad_urls(listener.server_address[1]):
        assert not is_aws_url(url, HOST), url


# the real signed AWS samples -----------------------------------------------------


def _real_dir(tmp_path: Path) -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} is not present")
    shutil.copy(
        SAMPLES / "sns_signing_cert_us-east-2_2022.pem", tmp_path / REAL_CERT_NAME
    )
    return tmp_path


def _real(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("name", REAL_SIGNED)
def test_a_real_signed_sample_verifies_with_the_real_certificate(
    tmp_path: Path, name: str
) -> None:
    fetch = RecordingFetch()
    verifier = SnsVerifier(HOST, _real_dir(tmp_path), fetch=fetch, check_expiry=False)

    verifier.verify(_real(name))

    assert fetch.calls == []


@pytest.mark.parametrize("name", REAL_SIGNED)
def test_a_real_sample_fails_once_its_certificate_expiry_is_checked(
    tmp_path: Path, name: str
) -> None:
    verifier = SnsVerifier(HOST, _real_dir(tmp_path), fetch=RecordingFetch())

    with pytest.raises(ForbiddenError, match="outside its validity period"):
        verifier.verify(_real(name))


@pytest.mark.parametrize("name", REAL_SIGNED)
def test_a_tampered_real_sample_fails(tmp_path: Path, name: str) -> None:
    verifier = SnsVerifier(
        HOST, _real_dir(tmp_path), fetch=RecordingFetch(), check_expiry=False
    )
    message = _real(name)
    message["Message"] = message["Message"].replace("1", "2", 1) + " "

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(message)


def test_a_real_sample_without_its_subject_fails(tmp_path: Path) -> None:
    verifier = SnsVerifier(
        HOST, _real_dir(tmp_path), fetch=RecordingFetch(), check_expiry=False
    )
    message = _real("sns_cloudwatch_alarm_signed_real_1.json")
    verifier.verify(message)
    del message["Subject"]

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(message)


def test_a_real_sample_fails_with_a_swapped_certificate(tmp_path: Path) -> None:
    _real_dir(tmp_path)
    (tmp_path / REAL_CERT_NAME).write_bytes(make_certificate(_key()))
    verifier = SnsVerifier(HOST, tmp_path, fetch=RecordingFetch(), check_expiry=False)

    with pytest.raises(ForbiddenError, match="signature does not match"):
        verifier.verify(_real("sns_notification_sigv2_real_1.json"))
