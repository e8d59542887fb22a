"""Alertmanager matcher syntax: parsing, semantics and error messages."""

from __future__ import annotations

import pytest

from relay.matchers import Matcher, parse_matcher, parse_matchers

LABELS = {
    "alertname": "HighCPU",
    "severity": "critical",
    "namespace": "prod-api",
    "team": "",
    "msg": 'say "hi"\nnow',
    "path": "C:\\temp",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # equality
        ('alertname="HighCPU"', True),
        ('alertname="HighCP"', False),
        ('alertname="highcpu"', False),
        # inequality
        ('alertname!="Watchdog"', True),
        ('alertname!="HighCPU"', False),
        # regular expressions are anchored at both ends
        ('namespace=~"prod-.*"', True),
        ('namespace=~"prod"', False),
        ('namespace=~"api"', False),
        ('namespace=~".*api"', True),
        ('alertname=~"High|Low"', False),
        ('alertname=~"HighCPU|Low"', True),
        ('namespace!~"prod-.*"', False),
        ('namespace!~"staging-.*"', True),
        # a missing label is ""
        ('owner=""', True),
        ('owner!="x"', True),
        ('owner="x"', False),
        ('owner=~".*"', True),
        ('owner=~".+"', False),
        ('owner!~".+"', True),
        # an empty label is the same as a missing one
        ('team=""', True),
        # unquoted values, as amtool accepts
        ("severity=critical", True),
        ("severity = critical ", True),
        ("severity!=critical", False),
        ("alertname=~HighCPU|Watchdog", True),
        ("owner=", True),
        # escapes in quoted values
        (r'msg="say \"hi\"\nnow"', True),
        (r'path="C:\\temp"', True),
        # an unknown escape keeps its backslash, so \d is a regex class
        (r'alertname=~"High\w+"', True),
        (r'severity=~"\d+"', False),
        # quoted label names
        ('"alertname"="HighCPU"', True),
    ],
)
def test_matcher_table(text: str, expected: bool) -> None:
    matcher = parse_matcher(text)
    assert matcher.matches(LABELS) is expected


def test_regex_anchoring_is_not_fooled_by_a_trailing_newline() -> None:
    # Python's "$" also matches before a final newline; Go's does not
    matcher = parse_matcher('alertname=~"HighCPU"')
    assert not matcher.matches({"alertname": "HighCPU\n"})


def test_braced_list_parses_every_matcher() -> None:
    matchers = parse_matchers(
        '{alertname="HighCPU", namespace=~"prod-.*",severity!=info}'
    )
    assert [(m.name, m.op, m.value) for m in matchers] == [
        ("alertname", "=", "HighCPU"),
        ("namespace", "=~", "prod-.*"),
        ("severity", "!=", "info"),
    ]
    assert all(m.matches(LABELS) for m in matchers)


@pytest.mark.parametrize(
    "text",
    [
        'a="1", b="2"',
        '{a="1", b="2",}',
        '{ a="1" , b="2" }',
        "a=1,b=2",
        " a = 1 , b = 2 ",
    ],
)
def test_lists_with_and_without_braces(text: str) -> None:
    assert [(m.name, m.value) for m in parse_matchers(text)] == [("a", "1"), ("b", "2")]


def test_empty_braces_are_an_empty_list() -> None:
    assert parse_matchers("{}") == []


def test_comma_inside_quotes_belongs_to_the_value() -> None:
    (matcher,) = parse_matchers('{instance="a,b}c"}')
    assert matcher.value == "a,b}c"


@pytest.mark.parametrize(
    ("matcher", "text"),
    [
        (Matcher("alertname", "=", "Watchdog"), 'alertname="Watchdog"'),
        (Matcher("a", "!~", "x|y"), 'a!~"x|y"'),
        (Matcher("msg", "=", 'say "hi"\n\\'), r'msg="say \"hi\"\n\\"'),
        (Matcher("odd name", "!=", "v"), '"odd name"!="v"'),
    ],
)
def test_str_is_the_canonical_syntax_and_parses_back(
    matcher: Matcher, text: str
) -> None:
    assert str(matcher) == text
    assert parse_matcher(text) == matcher


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"expected a matcher"),
        ("alertname", r"expected an operator .* at position 9 .*got the end"),
        ('alertname=="x"', r"unquoted value without '\"'"),
        (
            'alertname="x',
            r"expected a closing '\"' for the value starting at position 10",
        ),
        ('a="1" b="2"', r"expected ',' or the end at position 6 .*got 'b'"),
        ('{a="1"', r"expected ',' or '}' at position 6 .*got the end"),
        ('a="1"}', r"expected ',' or the end at position 5 .*got '}'"),
        ('{a="1"} x', r"expected the end at position 8"),
        ('=~"x"', r"expected a label name at position 0"),
        ('1a="x"', r"expected a label name at position 0"),
        ('a=~"(unclosed"', r"a=~: expected a regular expression; got '\(unclosed'"),
        ('a!~"*"', r"a!~: expected a regular expression; got '\*'"),
        ("a<>b", r"expected an operator"),
    ],
)
def test_bad_syntax_is_a_precise_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_matchers(text)


def test_parse_matcher_wants_exactly_one() -> None:
    with pytest.raises(ValueError, match="expected exactly one matcher; got 2"):
        parse_matcher("a=1,b=2")


def test_unknown_operator_in_code_is_refused() -> None:
    with pytest.raises(ValueError, match="expected an operator"):
        Matcher("a", "==", "b")  # type: ignore[arg-type]
