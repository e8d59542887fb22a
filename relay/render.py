"""Ticket subjects and bodies from Jinja2 templates, in a sandbox.

Templates live in the templates directory as ``<name>.subject.j2`` and
``<name>.body.j2``; each source's default template is named after the source
(``alertmanager``, ``cloudwatch``, ``cloud-monitoring``). Rules may name
another template or give the subject and body inline.

Rendering a ticket never raises: an alert must never be lost to a template.
When a rule's template fails in any way (a syntax error, a missing file, a
sandbox violation, an exception in the template's own code) the source's
default template is used instead, and when that fails too, a plain built-in
text that cannot fail. Each fallback is logged as ``render.fallback``.

Alert data (label values, annotations) is only ever passed to templates as
data: a label value of ``{{ 7*7 }}`` is printed as written, never evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import (
    ChainableUndefined,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from relay.alert import Alert
from relay.errors import RelayError

log = logging.getLogger(__name__)

# every name a ticket template may use; see build_context
CONTEXT_NAMES = frozenset(
    {"source", "alert", "alerts", "firing", "resolved", "group", "ticket"}
)
# rule values (platform, severity, …) are rendered while the ticket is being
# decided, so they cannot refer to it
ROUTE_CONTEXT_NAMES = CONTEXT_NAMES - {"ticket"}

SUBJECT_SUFFIX = ".subject.j2"
BODY_SUFFIX = ".body.j2"
ELLIPSIS = "…"
_VALUE_CACHE_SIZE = 1024


class RenderError(RelayError):
    """A template value could not be rendered. The caller falls back to a
    default; retrying cannot help."""


@dataclass(frozen=True)
class RenderedTicket:
    """A ticket's text. ``fallback`` is true when the intended template
    failed and a default one (or the built-in text) was used."""

    subject: str
    body: str
    fallback: bool = False


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox (templates cannot change the alert they are
    shown, which dedup and later renders still use), made strict about
    escapes: Jinja's own sandbox turns an unsafe attribute into an undefined
    value that prints as nothing, which would hide an attempt; here it is an
    error, so the ticket falls back and the attempt is logged."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} "
            "object is unsafe"
        )


def format_ts(value: Any) -> str:
    """The ``ts`` filter: ``2024-05-01 12:00:00 UTC``; empty for nothing.

    Accepts a datetime (a naive one is taken as UTC) or an ISO 8601 string;
    anything else is printed as it is.
    """
    if isinstance(value, Undefined):
        return str(value)  # empty, or an error in strict mode
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if not isinstance(value, datetime):
        return str(value)
    moment: datetime = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_context(
    alerts: list[Alert], group: dict[str, Any], ticket: dict[str, Any]
) -> dict[str, Any]:
    """The variables a ticket template sees.

    ``alert`` is the representative alert: the first firing one, else the
    first. ``group`` is ``Notification.to_dict()``; ``ticket`` holds the
    routed platform, category, severity, requester, rule and dedup key.
    """
    firing = [alert for alert in alerts if alert.status == "firing"]
    resolved = [alert for alert in alerts if alert.status == "resolved"]
    representative = firing[0] if firing else (alerts[0] if alerts else None)
    source = representative.source if representative else group.get("source", "")
    return {
        "source": source,
        "alert": representative,
        "alerts": list(alerts),
        "firing": firing,
        "resolved": resolved,
        "group": group,
        "ticket": ticket,
    }


class Renderer:
    """Renders rule values and tickets from the templates in
    ``templates_dir``.

    Undefined variables render as empty text, so that an alert missing a
    label still gets a ticket; ``strict=True`` (for checks and previews)
    makes them errors instead. Subjects are cut to ``subject_limit``
    characters. Safe to share between threads.
    """

    def __init__(
        self,
        templates_dir: Path | str,
        *,
        subject_limit: int = 150,
        strict: bool = False,
    ) -> None:
        if subject_limit < 2:
            raise ValueError(
                f"expected a subject limit of 2 or more; got {subject_limit}"
            )
        self.templates_dir = Path(templates_dir)
        self.subject_limit = subject_limit
        self._loader = FileSystemLoader(str(self.templates_dir))
        self.env = _Sandbox(
            loader=self._loader,
            autoescape=False,  # tickets are plain text, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            undefined=StrictUndefined if strict else ChainableUndefined,
        )
        self.env.filters["ts"] = format_ts
        self._values: dict[str, Template] = {}

    build_context = staticmethod(build_context)

    # compile and inspect

    def compile(self, text: str) -> Template:
        """Compile a template string (cached). Raises TemplateSyntaxError."""
        template = self._values.get(text)
        if template is None:
            template = self.env.from_string(text)
            if len(self._values) >= _VALUE_CACHE_SIZE:
                self._values.clear()  # rule values are few; this is a guard
            self._values[text] = template
        return template

    def undeclared(self, text: str, allowed: Iterable[str]) -> set[str]:
        """Names ``text`` uses that are neither in ``allowed`` nor globals
        of the environment (``range``, ``namespace``, …). Raises
        TemplateSyntaxError."""
        return _undeclared(self.env.parse(text)) - set(allowed) - set(self.env.globals)

    def has_template(self, name: str) -> bool:
        """Whether ``<name>.subject.j2`` and ``<name>.body.j2`` both exist."""
        return all(
            (self.templates_dir / f"{name}{suffix}").is_file()
            for suffix in (SUBJECT_SUFFIX, BODY_SUFFIX)
        )

    def check_templates(self, names: Iterable[str]) -> list[str]:
        """Compile the subject and body templates of every name; return one
        line per problem (empty when all is well): a missing file, a syntax
        error, an undefined variable, a reference to a missing template."""
        problems: list[str] = []
        for name in sorted(set(names)):
            for suffix in (SUBJECT_SUFFIX, BODY_SUFFIX):
                problems += self._check_file(f"{name}{suffix}")
        return problems

    def _check_file(self, filename: str) -> list[str]:
        path = self.templates_dir / filename
        try:
            source, _, _ = self._loader.get_source(self.env, filename)
        except TemplateNotFound:
            return [f"{path}: no such template"]
        try:
            parsed = self.env.parse(source, filename=filename)
        except TemplateSyntaxError as e:
            return [f"{path}: line {e.lineno}: {e.message}"]

        problems = []
        unknown = _undeclared(parsed) - CONTEXT_NAMES - set(self.env.globals)
        for variable in sorted(unknown):
            problems.append(
                f"{path}: refers to undefined variable {variable!r}; "
                f"expected one of {', '.join(sorted(CONTEXT_NAMES))}"
            )
        for other in meta.find_referenced_templates(parsed):
            if other is not None and not (self.templates_dir / other).is_file():
                problems.append(f"{path}: includes {other!r}, which does not exist")
        return problems

    # render

    def render_value(self, text: str, context: dict[str, Any]) -> str:
        """Render one rule value (a platform, a severity, a dedup key…),
        stripped. Raises RenderError on any failure."""
        try:
            return self.compile(text).render(context).strip()
        except Exception as e:
            raise RenderError(f"{text!r}: {_describe(e)}") from e

    def render_ticket(
        self,
        route_template: str,
        subject: str | None,
        body: str | None,
        context: dict[str, Any],
        default_template: str,
    ) -> RenderedTicket:
        """Render a ticket's subject and body; never raises.

        ``subject`` and ``body``, when given, are inline templates that take
        the place of the template files of ``route_template``. On failure the
        ``default_template`` files are used, then a built-in text.
        """
        rule = (context.get("ticket") or {}).get("rule", "")
        try:
            text = self._render_pair(route_template, subject, body, context)
            return RenderedTicket(*text, fallback=False)
        except Exception as e:
            log.warning(
                "render.fallback",
                extra={
                    "rule": rule,
                    "template": "(inline)" if subject or body else route_template,
                    "fallback": default_template,
                    "error": _describe(e),
                },
            )

        intended_default = route_template == default_template and not (subject or body)
        if not intended_default:
            try:
                text = self._render_pair(default_template, None, None, context)
                return RenderedTicket(*text, fallback=True)
            except Exception as e:
                log.error(
                    "render.fallback",
                    extra={
                        "rule": rule,
                        "template": default_template,
                        "fallback": "built-in",
                        "error": _describe(e),
                    },
                )
        return RenderedTicket(*self._builtin(context), fallback=True)

    def _render_pair(
        self,
        name: str,
        subject: str | None,
        body: str | None,
        context: dict[str, Any],
    ) -> tuple[str, str]:
        subject_template = (
            self.compile(subject)
            if subject
            else self.env.get_template(f"{name}{SUBJECT_SUFFIX}")
        )
        body_template = (
            self.compile(body)
            if body
            else self.env.get_template(f"{name}{BODY_SUFFIX}")
        )
        rendered_subject = self.cut_subject(subject_template.render(context))
        rendered_body = _tidy_body(body_template.render(context))
        if not rendered_subject:
            raise RenderError("the subject rendered empty")
        if not rendered_body:
            raise RenderError("the body rendered empty")
        return rendered_subject, rendered_body

    def cut_subject(self, text: str) -> str:
        """One line, single-spaced, at most ``subject_limit`` characters."""
        line = " ".join(text.split())
        if len(line) <= self.subject_limit:
            return line
        return line[: self.subject_limit - len(ELLIPSIS)].rstrip() + ELLIPSIS

    def _builtin(self, context: dict[str, Any]) -> tuple[str, str]:
        try:
            return _builtin_text(context, self.cut_subject)
        except Exception:
            # the context itself is broken; still say something useful
            log.exception("render.builtin_failed")
            return self.cut_subject(f"Alert from {context.get('source') or 'relay'}"), (
                "The relay received an alert but could not render its details; "
                "see the relay's log."
            )


def _undeclared(parsed: nodes.Template) -> set[str]:
    """Names the template reads but never sets.

    Jinja's own analysis also reports a name set inside one branch of an
    ``if`` and read in the same branch (the compiled code looks it up
    outside in case the branch does not run); a template doing that is
    correct, so names the template assigns anywhere are left out.
    """
    assigned = {
        node.name
        for node in parsed.find_all(nodes.Name)
        if node.ctx in ("store", "param")
    }
    return set(meta.find_undeclared_variables(parsed)) - assigned


def _describe(error: BaseException) -> str:
    if isinstance(error, TemplateSyntaxError):
        where = f"{error.name or 'template'} line {error.lineno}"
        return f"TemplateSyntaxError: {error.message} ({where})"
    if isinstance(error, TemplateNotFound):
        return f"TemplateNotFound: no template {error.name!r}"
    return f"{type(error).__name__}: {error}"


def _tidy_body(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines).strip("\n")


def _builtin_text(context: dict[str, Any], cut: Any) -> tuple[str, str]:
    """A plain text made with Python alone, for when templates fail."""
    alerts: list[Alert] = list(context.get("alerts") or [])
    alert: Alert | None = context.get("alert")
    source = str(context.get("source") or (alert.source if alert else "relay"))
    if alert is None:
        return cut(f"Alert from {source}"), f"An alert arrived from {source}."

    firing = len([a for a in alerts if a.status == "firing"])
    count = f":{firing}" if firing > 1 else ""
    subject = cut(f"[{alert.status.upper()}{count}] {alert.name} ({source})")

    lines = [
        "This ticket was opened by the alert relay. Its template could not be",
        "rendered, so the alert is shown here as received.",
    ]
    for item in alerts or [alert]:
        lines += ["", f"Alert: {item.name}", f"Status: {item.status}"]
        if item.starts_at is not None:
            lines.append(f"Started: {format_ts(item.starts_at)}")
        if item.ends_at is not None and item.status == "resolved":
            lines.append(f"Ended: {format_ts(item.ends_at)}")
        for title, values in (
            ("Labels", item.labels),
            ("Annotations", item.annotations),
            ("Links", item.links),
        ):
            if values:
                lines.append(f"{title}:")
                lines += [f"  {key}: {value}" for key, value in sorted(values.items())]
    return subject, "\n".join(lines)
