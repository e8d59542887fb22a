"""Logging: one JSON object a line (or text), and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from relay import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("relay.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_time_level_logger_event_and_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("ticket.created", extra={"key": "alertmanager:ab", "ticket_id": 7})
    [entry] = lines(stream)
    assert entry["level"] == "info"
    assert entry["logger"] == "relay.test"
    assert entry["event"] == "ticket.created"
    assert entry["key"] == "alertmanager:ab"
    assert entry["ticket_id"] == 7
    assert str(entry["time"]).endswith("+00:00")


@pytest.mark.parametrize(
    "field", ["api_key", "password", "token", "authorization", "signature", "Secret"]
)
def test_fields_named_like_secrets_are_redacted(
    captured: tuple[logging.Logger, io.StringIO], field: str
) -> None:
    logger, stream = captured
    logger.debug("call", extra={field: "hunter2-very-secret"})
    assert "hunter2" not in stream.getvalue()
    assert lines(stream)[0][field] == logs.REDACTED


@pytest.mark.parametrize(
    "text",
    [
        "sent Authorization: Bearer abc.def-SECRET123",
        "header basic dXNlcjpTRUNSRVQxMjM=",
        "GET /webhooks/cloud-monitoring?auth_token=SECRET123&x=1",
        "https://user:SECRET123@relay.example.com/hook",
        "{'headers': {'Authorization': 'Bearer SECRET123'}}",
    ],
)
def test_secrets_inside_free_text_are_redacted(
    captured: tuple[logging.Logger, io.StringIO], text: str
) -> None:
    logger, stream = captured
    logger.warning("request.failed", extra={"detail": text})
    logger.warning(text)
    try:
        raise ValueError(text)
    except ValueError:
        logger.exception("boom")
    output = stream.getvalue()
    assert "SECRET123" not in output
    assert "dXNlcjpTRUNSRVQxMjM" not in output


def test_an_sns_subscribe_url_stays_readable(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """The capitalised Token of a SubscribeURL is what an operator opens to
    confirm a subscription by hand; it is not one of the relay's secrets."""
    logger, stream = captured
    url = (
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
        "&TopicArn=arn:aws:sns:us-east-1:123456789012:alerts&Token=2336412f37fb"
    )
    logger.warning("sns.subscription_pending", extra={"subscribe_url": url})
    assert lines(stream)[0]["subscribe_url"] == url


def test_text_format_and_configure_replaces_its_own_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        logs.configure("text", "info")
        logs.configure("text", "info")
        ours = [h for h in root.handlers if getattr(h, "_relay", False)]
        assert len(ours) == 1
        logging.getLogger("relay.x").info(
            "alert.decided", extra={"decision": "queued", "api_key": "k-SECRET"}
        )
        err = capsys.readouterr().err
        assert "alert.decided" in err
        assert 'decision="queued"' in err
        assert "k-SECRET" not in err
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
