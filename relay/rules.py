"""Routing: which rule an alert falls under, and what ticket it asks for.

Rules are tried in order and the first that matches decides; an alert no
rule matches gets the defaults (rule name ``default``). A rule matches when
its ``match.source`` (if set) is the alert's source and every matcher holds
on the alert's labels.

Everything that can be checked before an alert arrives is checked when
:class:`Rules` is built, so that a bad config stops start-up (and fails
``relay check``) with the file, the rule and the field in the message. What
can only be known with an alert in hand (a templated value that renders to
an unknown platform, say) falls back to the default and is logged: routing
never loses an alert.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateSyntaxError, nodes

from relay.alert import SOURCES, Alert, Notification
from relay.config import (
    PLATFORMS,
    SEVERITIES,
    Config,
    TicketSpec,
    is_template,
    normalise_platform,
)
from relay.errors import ConfigError
from relay.matchers import Matcher, parse_matchers
from relay.render import (
    BODY_SUFFIX,
    CONTEXT_NAMES,
    ROUTE_CONTEXT_NAMES,
    SUBJECT_SUFFIX,
    Renderer,
    RenderError,
)

log = logging.getLogger(__name__)

DEFAULT_RULE = "default"
# the last resort when the configured defaults themselves render to nonsense
FALLBACK_PLATFORM = "google_cloud_platform"
FALLBACK_SEVERITY = "low"
FALLBACK_DEDUP_WINDOW = 7 * 86400.0
FALLBACK_REOPEN_WINDOW = 86400.0

TicketPer = Literal["group", "alert"]
# rendered label-only rule values kept per process before the cache restarts
LABEL_CACHE_SIZE = 4096
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Route:
    """What the matching rule (or the defaults) decided for one alert.

    ``template`` names the template files; ``subject`` and ``body``, when
    set, are inline templates that replace them. ``dedup_key`` is the key
    template, or None for the source's own identity. Windows are seconds.
    """

    rule: str
    drop: bool
    platform: str
    category: str
    severity: str
    requester: str
    template: str
    subject: str | None
    body: str | None
    dedup_key: str | None
    ticket_per: TicketPer
    dedup_window: float
    reopen_window: float

    def ticket_context(self, dedup_key: str = "") -> dict[str, str]:
        """The ``ticket`` variable of the rendering context."""
        return {
            "platform": self.platform,
            "category": self.category,
            "severity": self.severity,
            "requester": self.requester,
            "rule": self.rule,
            "dedup_key": dedup_key,
        }


@dataclass(frozen=True)
class CompiledRule:
    """One rule of the configuration with its matchers parsed."""

    index: int
    name: str
    source: str | None
    matchers: tuple[Matcher, ...]
    drop: bool
    ticket: TicketSpec


class Rules:
    """The compiled rules of a configuration.

    Construction validates every rule and the defaults and raises ConfigError
    listing every problem, one line each. :meth:`route` never raises.
    """

    def __init__(
        self,
        config: Config,
        templates_dir: Path | str,
        *,
        renderer: Renderer | None = None,
    ) -> None:
        self.config = config
        self.renderer = renderer or Renderer(Path(templates_dir))
        self._problems: list[str] = []
        self.rules: list[CompiledRule] = []

        for index, rule in enumerate(config.rules):
            where = f"rules[{index}] ({rule.name!r})"
            matchers: list[Matcher] = []
            for position, text in enumerate(rule.match.matchers):
                try:
                    matchers += parse_matchers(text)
                except ValueError as e:
                    self._problem(f"{where}.match.matchers[{position}]", str(e))
            self._check_spec(rule.ticket, f"{where}.ticket")
            self.rules.append(
                CompiledRule(
                    index,
                    rule.name,
                    rule.match.source,
                    tuple(matchers),
                    rule.drop,
                    rule.ticket,
                )
            )
        self._check_spec(config.defaults, "defaults")
        for key, value in config.severity_map.items():
            self._check_severity(value, f"severity_map[{key!r}]")

        if self._problems:
            raise ConfigError("\n".join(self._problems))
        self._severity_map = _lower_keys(config.severity_map)
        # rendered values of templates that read nothing but the alert's
        # labels, by template and label set: an alert storm renders each
        # once (label values are data, so the cache holds no code)
        self._by_labels: dict[tuple[str, str, frozenset[tuple[str, str]]], str] = {}
        self._labels_only: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def template_names(self) -> set[str]:
        """Every template name the configuration can render with: each
        source's default and every literal name in the rules and defaults."""
        names: set[str] = set(SOURCES)
        for spec in [rule.ticket for rule in self.rules] + [self.config.defaults]:
            if spec.template and not is_template(spec.template):
                names.add(spec.template)
        return names

    # validation

    def _problem(self, field: str, message: str) -> None:
        self._problems.append(f"{self.config.path or 'config'}: {field}: {message}")

    def _check_spec(self, spec: TicketSpec, where: str) -> None:
        for field in ("platform", "category", "requester"):
            value = getattr(spec, field)
            if value is not None and is_template(value):
                self._check_template(value, f"{where}.{field}", ROUTE_CONTEXT_NAMES)
        if spec.platform and not is_template(spec.platform):
            platform = normalise_platform(spec.platform)
            if platform not in PLATFORMS:
                self._problem(
                    f"{where}.platform",
                    f"expected one of {', '.join(PLATFORMS)}; got {spec.platform!r}",
                )
        if spec.severity is not None:
            self._check_severity(spec.severity, f"{where}.severity")
        for key, value in (spec.severity_map or {}).items():
            self._check_severity(value, f"{where}.severity_map[{key!r}]")

        # inline subject and body are always templates, with the full context;
        # the dedup key is made before the ticket exists, so without "ticket"
        for field, allowed in (
            ("subject", CONTEXT_NAMES),
            ("body", CONTEXT_NAMES),
            ("dedup_key", ROUTE_CONTEXT_NAMES),
        ):
            value = getattr(spec, field)
            if value is not None:
                self._check_template(value, f"{where}.{field}", allowed)
        if spec.template is not None:
            self._check_template_name(spec, f"{where}.template")

    def _check_severity(self, value: str, field: str) -> None:
        if is_template(value):
            self._check_template(value, field, ROUTE_CONTEXT_NAMES)
        elif value and value not in SEVERITIES:
            self._problem(
                field, f"expected one of {', '.join(SEVERITIES)}; got {value!r}"
            )

    def _check_template(self, text: str, field: str, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        try:
            unknown = self.renderer.undeclared(text, allowed)
        except TemplateSyntaxError as e:
            self._problem(
                field, f"template does not compile: {e.message} (line {e.lineno})"
            )
            return
        for name in sorted(unknown):
            self._problem(
                field,
                f"template refers to undefined variable {name!r}; "
                f"expected one of {', '.join(sorted(allowed))}",
            )

    def _check_template_name(self, spec: TicketSpec, field: str) -> None:
        name = spec.template or ""
        if is_template(name):
            self._check_template(name, field, ROUTE_CONTEXT_NAMES)
            return
        if not _TEMPLATE_NAME.fullmatch(name):
            self._problem(
                field,
                "expected a template name of letters, digits, '_', '-' and '.'; "
                f"got {name!r}",
            )
            return
        # only the files the inline subject and body leave in use must exist
        wanted = [
            suffix
            for suffix, inline in (
                (SUBJECT_SUFFIX, spec.subject),
                (BODY_SUFFIX, spec.body),
            )
            if inline is None
        ]
        directory = self.renderer.templates_dir
        missing = [
            f"{name}{suffix}"
            for suffix in wanted
            if not (directory / f"{name}{suffix}").is_file()
        ]
        if missing:
            self._problem(
                field,
                f"unknown template {name!r}: expected "
                f"{' and '.join(missing)} in {directory}; not found",
            )

    # matching

    def _mismatch(self, rule: CompiledRule, alert: Alert) -> str | None:
        """None when ``rule`` matches ``alert``, else why not."""
        if rule.source is not None and rule.source != alert.source:
            return f"source is {alert.source}, rule wants {rule.source}"
        for matcher in rule.matchers:
            if not matcher.matches(alert.labels):
                actual = alert.labels.get(matcher.name)
                found = (
                    f"{matcher.name} is {actual!r}"
                    if actual is not None
                    else f"{matcher.name} is not set"
                )
                return f"{matcher} did not match: {found}"
        return None

    def match(self, alert: Alert) -> CompiledRule | None:
        """The first rule that matches ``alert``, or None."""
        for rule in self.rules:
            if self._mismatch(rule, alert) is None:
                return rule
        return None

    def explain(
        self, alert: Alert, notification: Notification
    ) -> list[tuple[str, bool, str]]:
        """Each rule in order with whether it matched and why, up to the
        first match; when none matches, a last ``default`` entry says that
        the defaults apply."""
        steps: list[tuple[str, bool, str]] = []
        for rule in self.rules:
            reason = self._mismatch(rule, alert)
            if reason is None:
                steps.append((rule.name, True, _why_matched(rule, alert)))
                return steps
            steps.append((rule.name, False, reason))
        steps.append((DEFAULT_RULE, True, "no rule matched; the defaults apply"))
        return steps

    # rendering rule values

    def render_value(self, text: str, alert: Alert, context: dict[str, Any]) -> str:
        """Render a templated rule value over ``context``; values of
        templates that only read ``alert.labels`` are remembered per label
        set. Raises RenderError."""
        if not self._reads_only_labels(text):
            return self.renderer.render_value(text, context)
        key = (text, alert.source, frozenset(alert.labels.items()))
        value = self._by_labels.get(key)
        if value is None:
            value = self.renderer.render_value(text, context)
            if len(self._by_labels) >= LABEL_CACHE_SIZE:
                self._by_labels.clear()
            self._by_labels[key] = value
        return value

    def _reads_only_labels(self, text: str) -> bool:
        known = self._labels_only.get(text)
        if known is None:
            known = _reads_only_labels(self.renderer, text)
            self._labels_only[text] = known
        return known

    # routing

    def route(self, alert: Alert, notification: Notification) -> Route:
        """Decide the ticket for ``alert``. Never raises."""
        rule = self.match(alert)
        name = rule.name if rule else DEFAULT_RULE
        specs = [rule.ticket] if rule else []
        specs.append(self.config.defaults)
        resolve = _Resolver(self, name, alert, notification, specs)

        # the first level that names a template or inline text owns all three,
        # so that a rule's template is not shadowed by an inline default
        owner = next(
            (s for s in specs if s.template or s.subject or s.body),
            None,
        )
        template = resolve.template(owner)
        ticket_per = resolve.first("ticket_per")
        if alert.source != "alertmanager":
            ticket_per = "alert"  # only Alertmanager has groups
        elif ticket_per is None:
            ticket_per = self.config.sources.alertmanager.ticket_per

        dedup_window = resolve.first("dedup_window")
        reopen_window = resolve.first("reopen_window")
        return Route(
            rule=name,
            drop=rule.drop if rule else False,
            platform=resolve.platform(),
            category=resolve.text("category") or "",
            severity=resolve.severity(),
            requester=resolve.text("requester") or self.config.doit.requester,
            template=template,
            subject=owner.subject if owner else None,
            body=owner.body if owner else None,
            dedup_key=resolve.first("dedup_key"),
            ticket_per=ticket_per,
            dedup_window=FALLBACK_DEDUP_WINDOW
            if dedup_window is None
            else dedup_window,
            reopen_window=(
                FALLBACK_REOPEN_WINDOW if reopen_window is None else reopen_window
            ),
        )


class _Resolver:
    """Resolves one route's fields through the rule, then the defaults,
    rendering templated values over the alert and logging each fallback."""

    def __init__(
        self,
        rules: Rules,
        rule: str,
        alert: Alert,
        notification: Notification,
        specs: list[TicketSpec],
    ) -> None:
        self.rules = rules
        self.rule = rule
        self.alert = alert
        self.specs = specs
        self.context: dict[str, Any] = {
            "source": alert.source,
            "alert": alert,
            "alerts": [alert],
            "firing": [alert] if alert.status == "firing" else [],
            "resolved": [alert] if alert.status == "resolved" else [],
            "group": notification.to_dict(),
        }

    def first(self, field: str) -> Any:
        """The first value set for ``field`` (not rendered)."""
        for spec in self.specs:
            value = getattr(spec, field)
            if value is not None:
                return value
        return None

    def fallback(self, field: str, value: str, reason: str) -> None:
        level = logging.INFO if value == "" else logging.WARNING
        log.log(
            level,
            "route.fallback",
            extra={
                "rule": self.rule,
                "field": field,
                "value": value,
                "reason": reason,
                "alert": self.alert.identity,
            },
        )

    def render(self, field: str, text: str) -> str | None:
        """A value, rendered when it is a template; None when it fails."""
        if not is_template(text):
            return text
        try:
            return self.rules.render_value(text, self.alert, self.context)
        except RenderError as e:
            self.fallback(field, text, str(e))
            return None

    def text(self, field: str) -> str | None:
        """The first non-empty rendering of ``field``."""
        for spec in self.specs:
            value = getattr(spec, field)
            if value is None:
                continue
            rendered = self.render(field, value)
            if rendered:
                return rendered
        return None

    def platform(self) -> str:
        for spec in self.specs:
            if spec.platform is None:
                continue
            rendered = self.render("platform", spec.platform)
            if rendered is None:
                continue
            platform = normalise_platform(rendered)
            if platform in PLATFORMS:
                return platform
            self.fallback("platform", rendered, "not a DoiT platform id")
        return FALLBACK_PLATFORM

    def severity(self) -> str:
        # a severity the rule sets, fixed or templated
        rule_spec = self.specs[0] if len(self.specs) > 1 else None
        if rule_spec is not None and rule_spec.severity:
            found = self.valid_severity(rule_spec.severity)
            if found:
                return found

        # the source's own severity, mapped
        hint = (self.alert.severity_hint or "").strip().lower()
        if hint:
            maps = [_lower_keys(s.severity_map or {}) for s in self.specs]
            maps.append(self.rules._severity_map)
            for mapping in maps:
                if hint in mapping:
                    found = self.valid_severity(mapping[hint])
                    if found:
                        return found
                    break
            if hint in SEVERITIES:
                return hint

        defaults = self.specs[-1]
        if defaults.severity:
            found = self.valid_severity(defaults.severity)
            if found:
                return found
        return FALLBACK_SEVERITY

    def valid_severity(self, text: str) -> str | None:
        rendered = self.render("severity", text)
        if rendered is None:
            return None
        severity = rendered.lower()
        if severity in SEVERITIES:
            return severity
        self.fallback("severity", rendered, "not a DoiT severity")
        return None

    def template(self, owner: TicketSpec | None) -> str:
        name = owner.template if owner else None
        if name and is_template(name):
            rendered = self.render("template", name)
            if rendered and self.rules.renderer.has_template(rendered):
                return rendered
            if rendered is not None:
                self.fallback("template", rendered, "no such template")
            name = None
        return name or self.alert.source


def _why_matched(rule: CompiledRule, alert: Alert) -> str:
    parts = []
    if rule.source is not None:
        parts.append(f"source is {alert.source}")
    if rule.matchers:
        parts.append(", ".join(str(m) for m in rule.matchers) + " matched")
    if not parts:
        return "matches every alert"
    return " and ".join(parts)


def _lower_keys(mapping: dict[str, str]) -> dict[str, str]:
    return {key.strip().lower(): value for key, value in mapping.items()}


def _reads_only_labels(renderer: Renderer, text: str) -> bool:
    """Whether a template's output depends on nothing but ``alert.labels``
    (and ``source``): every use of ``alert`` is ``alert.labels``."""
    try:
        parsed = renderer.env.parse(text)
    except TemplateSyntaxError:
        return False
    if renderer.undeclared(text, ()) - {"alert", "source"}:
        return False
    uses = [n for n in parsed.find_all(nodes.Name) if n.name == "alert"]
    label_reads = [
        n
        for n in parsed.find_all(nodes.Getattr)
        if isinstance(n.node, nodes.Name)
        and n.node.name == "alert"
        and n.attr == "labels"
    ]
    return len(uses) == len(label_reads)
