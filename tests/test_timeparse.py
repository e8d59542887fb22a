from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.timeparse import describe_value, parse_epoch, parse_rfc3339, parse_time


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", utc(2024, 5, 1, 12, 0, 0)),
        ("2024-05-01T12:00:00.5Z", utc(2024, 5, 1, 12, 0, 0, 500000)),
        # Go writes nanoseconds; the digits beyond microseconds are cut, never
        # rounded up into the next second
        ("2020-02-06T00:17:58.432911368Z", utc(2020, 2, 6, 0, 17, 58, 432911)),
        ("2024-03-10T01:59:59.999999999Z", utc(2024, 3, 10, 1, 59, 59, 999999)),
        ("2021-10-05T14:00:00.000000001Z", utc(2021, 10, 5, 14, 0, 0)),
        ("2017-08-03T15:17:37.804-04:00", utc(2017, 8, 3, 19, 17, 37, 804000)),
        ("2024-03-10T12:29:07+05:30", utc(2024, 3, 10, 6, 59, 7)),
        ("2018-11-04T22:43:58.283995108+01:00", utc(2018, 11, 4, 21, 43, 58, 283995)),
        # CloudWatch: milliseconds and an offset without a colon
        ("2019-02-15T23:53:45.093+0000", utc(2019, 2, 15, 23, 53, 45, 93000)),
        ("2019-02-15T23:53:45.093-0130", utc(2019, 2, 16, 1, 23, 45, 93000)),
        ("2024-03-10t07:30:00z", utc(2024, 3, 10, 7, 30, 0)),
        ("2024-03-10 07:30:00+00:00", utc(2024, 3, 10, 7, 30, 0)),
        ("  2024-03-10T07:30:00Z\n", utc(2024, 3, 10, 7, 30, 0)),
        # a day boundary crossed by the offset
        ("2024-01-01T00:30:00+01:00", utc(2023, 12, 31, 23, 30, 0)),
    ],
)
def test_parse_rfc3339_returns_the_exact_instant_in_utc(
    text: str, expected: datetime
) -> None:
    parsed = parse_rfc3339(text)

    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.000Z",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00-0500",
    ],
)
def test_go_zero_time_means_no_time(text: str) -> None:
    assert parse_rfc3339(text) is None


def test_none_means_no_time() -> None:
    assert parse_rfc3339(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", r"expected an RFC 3339 time; got 'yesterday'"),
        ("", r"expected an RFC 3339 time; got ''"),
        ("2024-05-01", r"got '2024-05-01'"),
        ("2024-05-01T12:00:00", r"got '2024-05-01T12:00:00'"),
        ("2024-05-01T12:00Z", r"got '2024-05-01T12:00Z'"),
        ("2024-13-01T12:00:00Z", r"got '2024-13-01T12:00:00Z' \(month must be"),
        ("2024-02-30T12:00:00Z", r"got '2024-02-30T12:00:00Z' \(day is out of range"),
        ("2024-05-01T24:00:00Z", r"got '2024-05-01T24:00:00Z' \(hour must be"),
        ("2024-05-01T12:00:60Z", r"\(second must be"),
        ("2024-05-01T12:00:00+24:00", r"the UTC offset is out of range"),
        ("2024-05-01T12:00:00.Z", r"got '2024-05-01T12:00:00.Z'"),
        ("0001-01-01T00:00:01+01:00", r"\(date value out of range\)"),
        (1714564800, r"expected an RFC 3339 time; got 1714564800"),
        ({"seconds": 1}, r"expected an RFC 3339 time; got an object"),
        ("x" * 200, r"got 'x{64}…'$"),
    ],
)
def test_parse_rfc3339_rejects_anything_else_saying_what_arrived(
    value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rfc3339(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, utc(1970, 1, 1)),
        (1714564800, utc(2024, 5, 1, 12, 0, 0)),
        (1714564800.25, utc(2024, 5, 1, 12, 0, 0, 250000)),
        ("1714564800", utc(2024, 5, 1, 12, 0, 0)),
        (None, None),
        ("", None),
    ],
)
def test_parse_epoch_reads_seconds(value: object, expected: datetime | None) -> None:
    assert parse_epoch(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, r"expected Unix epoch seconds; got true"),
        ("soon", r"got 'soon'"),
        (float("nan"), r"got nan"),
        (1e20, r"out of range"),
        ([1], r"got a list"),
    ],
)
def test_parse_epoch_rejects_non_numbers(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_epoch(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714564800, utc(2024, 5, 1, 12, 0, 0)),
        ("1714564800", utc(2024, 5, 1, 12, 0, 0)),
        ("2024-05-01T14:00:00+02:00", utc(2024, 5, 1, 12, 0, 0)),
        ("0001-01-01T00:00:00Z", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_time_accepts_either_form(
    value: object, expected: datetime | None
) -> None:
    assert parse_time(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [(False, r"expected a time; got false"), ({}, r"expected a time; got an object")],
)
def test_parse_time_rejects_other_json(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(value)


@pytest.mark.parametrize(
    ("value", "described"),
    [
        (None, "null"),
        (True, "true"),
        ([], "a list"),
        ({}, "an object"),
        (3.5, "3.5"),
        ("it's", '"it\'s"'),
    ],
)
def test_describe_value_names_json_values(value: object, described: str) -> None:
    assert describe_value(value) == described
