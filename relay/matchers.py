"""Label matchers in Alertmanager's syntax.

Rules select alerts with the matchers Prometheus users already write in
Alertmanager routes and ``amtool``::

    alertname="Watchdog"          severity!="info"
    namespace=~"prod-.*"          job!~"test|dev"
    severity=critical             {team="db", env=~"prod|staging"}

Semantics follow Alertmanager and Prometheus: a regular expression must match
the whole value (it is anchored at both ends), and a label the alert does not
carry has the value ``""``, so ``team!="db"`` matches an alert without a
``team`` label and ``team=""`` matches exactly those alerts.

Quoted values understand the escapes ``\\"``, ``\\\\`` and ``\\n``; any other
backslash is kept as written, as Alertmanager does, so that ``"\\d+"`` is the
regular expression ``\\d+``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Operator = Literal["=", "!=", "=~", "!~"]
OPERATORS: tuple[Operator, ...] = ("=~", "!~", "!=", "=")

# Prometheus label names, widened with the characters the relay's own sources
# put in flattened names (dots, dashes, slashes); anything else must be quoted.
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.\-/]*")
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class Matcher:
    """One ``name op value`` condition on an alert's labels."""

    name: str
    op: Operator
    value: str
    _regex: re.Pattern[str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(
                f"expected an operator {', '.join(OPERATORS)}; got {self.op!r}"
            )
        if self.op in ("=~", "!~"):
            try:
                # fullmatch, not "$": "$" also matches before a final newline
                compiled = re.compile(f"(?:{self.value})")
            except re.error as e:
                raise ValueError(
                    f"{self.name}{self.op}: expected a regular expression; "
                    f"got {self.value!r}: {e}"
                ) from None
            object.__setattr__(self, "_regex", compiled)

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfy this matcher (a missing label is "")."""
        actual = labels.get(self.name, "")
        if self._regex is not None:
            found = self._regex.fullmatch(actual) is not None
            return found if self.op == "=~" else not found
        return (actual == self.value) if self.op == "=" else (actual != self.value)

    def __str__(self) -> str:
        name = self.name if _NAME.fullmatch(self.name) else _quote(self.name)
        return f"{name}{self.op}{_quote(self.value)}"


def parse_matchers(text: str) -> list[Matcher]:
    """Parse one matcher, or a comma-separated list, optionally in braces.

    Raises ValueError naming the position and what was expected there.
    """
    parser = _Parser(text)
    return parser.parse()


def parse_matcher(text: str) -> Matcher:
    """Parse exactly one matcher."""
    found = parse_matchers(text)
    if len(found) != 1:
        raise ValueError(f"expected exactly one matcher; got {len(found)} in {text!r}")
    return found[0]


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class _Parser:
    """A small hand-written scanner: the grammar is tiny and the errors must
    point at the exact character, which a regular expression cannot do."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str) -> ValueError:
        found = repr(self.text[self.pos]) if not self.at_end() else "the end"
        return ValueError(
            f"expected {expected} at position {self.pos} of {self.text!r}; got {found}"
        )

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        assert match is not None  # \s* always matches
        self.pos = match.end()

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> list[Matcher]:
        self.skip_space()
        if self.at_end():
            raise ValueError(
                f'expected a matcher such as name="value"; got {self.text!r}'
            )

        braced = self.peek() == "{"
        if braced:
            self.pos += 1
        matchers: list[Matcher] = []
        while True:
            self.skip_space()
            if braced and self.peek() == "}" and not matchers:
                break  # "{}" is an empty list, as in amtool
            matchers.append(self.matcher())
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
                self.skip_space()
                # a trailing comma before the closing brace or the end is fine
                if (braced and self.peek() == "}") or (not braced and self.at_end()):
                    break
                continue
            break

        self.skip_space()
        if braced:
            if self.peek() != "}":
                raise self.fail("',' or '}'")
            self.pos += 1
            self.skip_space()
        if not self.at_end():
            raise self.fail("',' or the end" if not braced else "the end")
        return matchers

    def matcher(self) -> Matcher:
        name = self.name()
        self.skip_space()
        for op in OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                break
        else:
            raise self.fail(f"an operator (=, !=, =~, !~) after {name!r}")
        self.skip_space()
        value = self.quoted() if self.peek() == '"' else self.bare()
        return Matcher(name, op, value)

    def name(self) -> str:
        if self.peek() == '"':
            return self.quoted()
        match = _NAME.match(self.text, self.pos)
        if not match:
            raise self.fail("a label name")
        self.pos = match.end()
        return match.group(0)

    def quoted(self) -> str:
        start = self.pos
        self.pos += 1  # the opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            if self.pos >= len(self.text):
                break
            escaped = self.text[self.pos]
            self.pos += 1
            if escaped == "n":
                out.append("\n")
            elif escaped in ('"', "\\"):
                out.append(escaped)
            else:
                # not an escape we know: keep the backslash, so regular
                # expressions such as "\d+" need no doubling
                out.append("\\" + escaped)
        self.pos = start
        raise ValueError(
            f"expected a closing '\"' for the value starting at position {start} "
            f"of {self.text!r}; got the end"
        )

    def bare(self) -> str:
        # an unquoted value runs to the next comma or closing brace; a value
        # with either in it must be quoted
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",}":
            if self.text[self.pos] == '"':
                raise self.fail(
                    "an unquoted value without '\"' (quote the whole value)"
                )
            self.pos += 1
        return self.text[start : self.pos].strip()
