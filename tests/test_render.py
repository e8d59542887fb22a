"""Ticket rendering: the context, inline overrides, subject cutting, the
fallbacks on every kind of template failure, and the sandbox."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from relay.alert import Alert, Notification
from relay.render import (
    ELLIPSIS,
    Renderer,
    RenderError,
    build_context,
    format_ts,
)

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_alert(name: str = "HighCPU", status: str = "firing", **labels: str) -> Alert:
    return Alert(
        source="alertmanager",
        status=status,  # type: ignore[arg-type]
        identity=f"id-{name}",
        name=name,
        labels={"alertname": name, **labels},
        annotations={"summary": f"{name} is high"},
        starts_at=START,
        links={"generator": "http://prometheus.example/graph"},
    )


def write(folder: Path, name: str, subject: str, body: str) -> None:
    (folder / f"{name}.subject.j2").write_text(subject, encoding="utf-8")
    (folder / f"{name}.body.j2").write_text(body, encoding="utf-8")


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "alertmanager",
        "[{{ alert.status | upper }}] {{ alert.name }}",
        "{% for a in alerts %}\n"
        "{{ a.name }}: {{ a.annotations.summary }}\n"
        "{% endfor %}",
    )
    write(
        tmp_path, "custom", "custom {{ alert.name }}", "custom body {{ ticket.rule }}"
    )
    return tmp_path


@pytest.fixture
def renderer(templates: Path) -> Renderer:
    return Renderer(templates)


def context(*alerts: Alert, rule: str = "my-rule") -> dict[str, Any]:
    notification = Notification(source="alertmanager", group="g1", receiver="relay")
    ticket = {
        "platform": "google_cloud_platform",
        "category": "",
        "severity": "high",
        "requester": "",
        "rule": rule,
        "dedup_key": "k",
    }
    return build_context(list(alerts or [make_alert()]), notification.to_dict(), ticket)


def fallback_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "render.fallback"]


# the context


def test_context_has_every_documented_name() -> None:
    first_resolved = make_alert("A", "resolved")
    firing = make_alert("B")
    ctx = context(first_resolved, firing)
    assert set(ctx) == {
        "source",
        "alert",
        "alerts",
        "firing",
        "resolved",
        "group",
        "ticket",
    }
    assert ctx["source"] == "alertmanager"
    assert ctx["alert"] is firing  # the first firing one, not the first
    assert ctx["alerts"] == [first_resolved, firing]
    assert ctx["firing"] == [firing]
    assert ctx["resolved"] == [first_resolved]
    assert ctx["group"]["group"] == "g1"
    assert ctx["ticket"]["rule"] == "my-rule"


def test_context_representative_is_the_first_when_none_fires() -> None:
    a, b = make_alert("A", "resolved"), make_alert("B", "resolved")
    assert context(a, b)["alert"] is a


def test_context_without_alerts_takes_the_source_from_the_group() -> None:
    ctx = build_context([], {"source": "cloudwatch"}, {})
    assert ctx["alert"] is None
    assert ctx["source"] == "cloudwatch"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (START, "2024-05-01 12:00:00 UTC"),
        (
            datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01 12:00:00 UTC",
        ),
        (datetime(2024, 5, 1, 12, 0), "2024-05-01 12:00:00 UTC"),
        ("2024-05-01T08:00:00-04:00", "2024-05-01 12:00:00 UTC"),
        ("2024-05-01T12:00:00Z", "2024-05-01 12:00:00 UTC"),
        ("not a time", "not a time"),
        (None, ""),
        ("", ""),
    ],
)
def test_ts_filter(value: Any, expected: str) -> None:
    assert format_ts(value) == expected


def test_ts_filter_in_a_template_prints_nothing_for_a_missing_time(
    renderer: Renderer,
) -> None:
    alert = make_alert()
    alert.ends_at = None
    ctx = context(alert)
    text = "[{{ alert.starts_at | ts }}][{{ alert.ends_at | ts }}][{{ nope | ts }}]"
    assert renderer.render_value(text, ctx) == "[2024-05-01 12:00:00 UTC][][]"


# rendering tickets


def test_ticket_from_the_template_files(renderer: Renderer) -> None:
    ctx = context(make_alert("A"), make_alert("B"))
    rendered = renderer.render_ticket("alertmanager", None, None, ctx, "alertmanager")
    assert rendered.subject == "[FIRING] A"
    assert rendered.body == "A: A is high\nB: B is high"
    assert rendered.fallback is False


def test_named_template_is_used(renderer: Renderer) -> None:
    rendered = renderer.render_ticket("custom", None, None, context(), "alertmanager")
    assert (rendered.subject, rendered.body) == (
        "custom HighCPU",
        "custom body my-rule",
    )


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [
        ("inline {{ alert.name }}", None, ("inline HighCPU", "custom body my-rule")),
        (
            None,
            "inline body {{ ticket.severity }}",
            ("custom HighCPU", "inline body high"),
        ),
        ("s {{ source }}", "b {{ group.receiver }}", ("s alertmanager", "b relay")),
    ],
)
def test_inline_subject_and_body_override_the_files(
    renderer: Renderer, subject: str | None, body: str | None, expected: tuple[str, str]
) -> None:
    rendered = renderer.render_ticket(
        "custom", subject, body, context(), "alertmanager"
    )
    assert (rendered.subject, rendered.body) == expected
    assert not rendered.fallback


def test_subject_is_one_line(renderer: Renderer) -> None:
    rendered = renderer.render_ticket(
        "custom", "  one\n two \r\n\tthree  \n", None, context(), "alertmanager"
    )
    assert rendered.subject == "one two three"


def test_long_subject_is_cut_with_a_marker(templates: Path) -> None:
    renderer = Renderer(templates, subject_limit=20)
    rendered = renderer.render_ticket(
        "custom", "{{ 'x' * 50 }}", None, context(), "alertmanager"
    )
    assert rendered.subject == "x" * 19 + ELLIPSIS
    assert len(rendered.subject) == 20
    assert not rendered.fallback


def test_subject_at_the_limit_is_not_cut(templates: Path) -> None:
    renderer = Renderer(templates, subject_limit=20)
    rendered = renderer.render_ticket(
        "custom", "y" * 20, None, context(), "alertmanager"
    )
    assert rendered.subject == "y" * 20


def test_default_subject_limit_is_150(renderer: Renderer) -> None:
    rendered = renderer.render_ticket(
        "custom", "{{ 'z' * 400 }}", None, context(), "alertmanager"
    )
    assert len(rendered.subject) == 150
    assert rendered.subject.endswith(ELLIPSIS)


def test_body_keeps_its_lines_and_loses_trailing_blanks(renderer: Renderer) -> None:
    rendered = renderer.render_ticket(
        "custom", None, "\n\nline one   \n  indented\n\n\n", context(), "alertmanager"
    )
    assert rendered.body == "line one\n  indented"


# fallbacks


@pytest.mark.parametrize(
    ("files", "subject", "body", "error"),
    [
        (
            {"broken.subject.j2": "{% if %}", "broken.body.j2": "b"},
            None,
            None,
            "TemplateSyntaxError",
        ),
        ({}, None, None, "TemplateNotFound"),
        ({}, "{{ 1 // 0 }}", "b", "ZeroDivisionError"),
        ({}, "{{ alert.__class__.__mro__ }}", "b", "SecurityError"),
        ({}, "{% for x in %}", "b", "TemplateSyntaxError"),
        ({}, "   \n ", "b", "the subject rendered empty"),
        ({}, "s", "{{ '' }}", "the body rendered empty"),
        ({}, "{{ alert.name(1) }}", "b", "TypeError"),
    ],
)
def test_any_failure_falls_back_to_the_default_template(
    templates: Path,
    caplog: pytest.LogCaptureFixture,
    files: dict[str, str],
    subject: str | None,
    body: str | None,
    error: str,
) -> None:
    for filename, text in files.items():
        (templates / filename).write_text(text, encoding="utf-8")
    renderer = Renderer(templates)

    rendered = renderer.render_ticket(
        "broken", subject, body, context(), "alertmanager"
    )

    assert rendered.fallback is True
    assert rendered.subject == "[FIRING] HighCPU"
    assert rendered.body == "HighCPU: HighCPU is high"
    (event,) = fallback_events(caplog)
    assert event.rule == "my-rule"  # type: ignore[attr-defined]
    assert event.fallback == "alertmanager"  # type: ignore[attr-defined]
    assert error in event.error  # type: ignore[attr-defined]


def test_undefined_variable_falls_back_in_strict_mode_only(templates: Path) -> None:
    subject = "x{{ alert.labels.nonexistent }}y"
    lenient = Renderer(templates).render_ticket(
        "custom", subject, None, context(), "alertmanager"
    )
    strict = Renderer(templates, strict=True).render_ticket(
        "custom", subject, None, context(), "alertmanager"
    )
    assert (lenient.subject, lenient.fallback) == ("xy", False)
    assert (strict.subject, strict.fallback) == ("[FIRING] HighCPU", True)


def test_lenient_mode_tolerates_chains_of_missing_names(renderer: Renderer) -> None:
    text = "[{{ alert.labels.a.b.c }}{{ group.nothing.here }}{{ unknown.x }}]"
    assert renderer.render_value(text, context()) == "[]"


def test_when_the_default_fails_too_the_builtin_text_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "alertmanager", "{{ 1 // 0 }}", "b")
    renderer = Renderer(tmp_path)
    alert = make_alert("DiskFull", instance="db-1")

    rendered = renderer.render_ticket(
        "gone", None, None, context(alert), "alertmanager"
    )

    assert rendered.fallback is True
    assert rendered.subject == "[FIRING] DiskFull (alertmanager)"
    assert "Alert: DiskFull" in rendered.body
    assert "  instance: db-1" in rendered.body
    assert "  summary: DiskFull is high" in rendered.body
    assert "Started: 2024-05-01 12:00:00 UTC" in rendered.body
    assert [e.fallback for e in fallback_events(caplog)] == [  # type: ignore[attr-defined]
        "alertmanager",
        "built-in",
    ]


def test_builtin_text_counts_firing_alerts_and_lists_each(tmp_path: Path) -> None:
    renderer = Renderer(tmp_path)  # no templates at all
    ctx = context(make_alert("A"), make_alert("B"), make_alert("C", "resolved"))
    rendered = renderer.render_ticket("alertmanager", None, None, ctx, "alertmanager")
    assert rendered.subject == "[FIRING:2] A (alertmanager)"
    assert rendered.body.count("Alert: ") == 3


def test_failing_default_is_not_tried_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    renderer = Renderer(tmp_path)
    rendered = renderer.render_ticket(
        "alertmanager", None, None, context(), "alertmanager"
    )
    assert rendered.fallback
    assert len(fallback_events(caplog)) == 1


def test_builtin_text_survives_a_context_without_alerts(tmp_path: Path) -> None:
    renderer = Renderer(tmp_path)
    ctx = build_context([], {"source": "cloudwatch"}, {"rule": "r"})
    rendered = renderer.render_ticket("x", None, None, ctx, "cloudwatch")
    assert rendered.subject == "Alert from cloudwatch"
    assert rendered.body


# label values are data


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ 7*7 }}",
        "{% for %}",
        "{% raw %}",
        "{# comment",
        "{{ alert.__class__.__mro__ }}",
        "}}{{",
    ],
)
def test_label_values_render_literally(renderer: Renderer, hostile: str) -> None:
    alert = make_alert(owner=hostile)
    alert.annotations["summary"] = hostile
    ctx = context(alert)

    rendered = renderer.render_ticket(
        "custom",
        "owner {{ alert.labels.owner }}",
        "{{ alert.annotations.summary }}",
        ctx,
        "alertmanager",
    )

    assert rendered.subject == f"owner {hostile}"
    assert rendered.body == hostile
    assert not rendered.fallback
    assert renderer.render_value("{{ alert.labels.owner }}", ctx) == hostile


# the sandbox


@pytest.mark.parametrize(
    "escape",
    [
        "{{ alert.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ alert.labels.__class__ }}",
        "{{ alert.to_dict.__globals__ }}",
        "{{ alert.__dict__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ alert.labels.update({'alertname': 'pwned'}) }}",
        "{{ alerts.append(1) }}",
        "{{ alert.labels.pop('alertname') }}",
    ],
)
def test_sandbox_escapes_lead_to_the_fallback(
    renderer: Renderer, caplog: pytest.LogCaptureFixture, escape: str
) -> None:
    alert = make_alert()
    ctx = context(alert)

    rendered = renderer.render_ticket("custom", escape, None, ctx, "alertmanager")

    assert rendered.fallback is True
    assert rendered.subject == "[FIRING] HighCPU"
    assert "SecurityError" in fallback_events(caplog)[0].error  # type: ignore[attr-defined]
    # nothing the template did reached the alert
    assert alert.labels == {"alertname": "HighCPU"}
    assert ctx["alerts"] == [alert]


def test_sandbox_escape_in_a_rule_value_is_a_render_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match="SecurityError"):
        renderer.render_value("{{ ''.__class__ }}", context())


# rule values


def test_render_value_strips_and_caches(renderer: Renderer) -> None:
    text = "  {{ alert.labels.alertname | lower }}\n"
    assert renderer.render_value(text, context()) == "highcpu"
    assert renderer.compile(text) is renderer.compile(text)


def test_render_value_errors_name_the_template(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match=r"'\{\{ nope\(\) \}\}': UndefinedError"):
        renderer.render_value("{{ nope() }}", context())
    with pytest.raises(RenderError, match="TemplateSyntaxError"):
        renderer.render_value("{{ 'unclosed }}", context())


def test_subject_limit_must_leave_room_for_text(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subject limit of 2 or more; got 1"):
        Renderer(tmp_path, subject_limit=1)


# relay check


def test_check_templates_passes_good_templates(renderer: Renderer) -> None:
    assert renderer.check_templates(["alertmanager", "custom"]) == []


def test_check_templates_reports_every_problem(tmp_path: Path) -> None:
    write(tmp_path, "syntax", "ok", "line one\n{% if alert %}\nno end")
    write(
        tmp_path,
        "names",
        "{{ alrt.name }}",
        "{% set x = 1 %}{{ x }}{{ range(3) | list }}",
    )
    write(tmp_path, "includes", '{% include "parts/missing.j2" %}', "b")
    (tmp_path / "half.subject.j2").write_text("s", encoding="utf-8")

    problems = Renderer(tmp_path).check_templates(
        ["syntax", "names", "includes", "half"]
    )

    assert problems == [
        f"{tmp_path}/half.body.j2: no such template",
        f"{tmp_path}/includes.subject.j2: includes 'parts/missing.j2', "
        "which does not exist",
        f"{tmp_path}/names.subject.j2: refers to undefined variable 'alrt'; "
        "expected one of alert, alerts, firing, group, resolved, source, ticket",
        f"{tmp_path}/syntax.body.j2: line 3: Unexpected end of template. Jinja was "
        "looking for the following tags: 'elif' or 'else' or 'endif'. The innermost "
        "block that needs to be closed is 'if'.",
    ]


def test_check_accepts_a_name_set_and_used_inside_one_branch(tmp_path: Path) -> None:
    body = (
        "{% if alert %}{% set where = alert.labels.get('region', '') %}"
        "{{ where }}{% else %}none{% endif %}"
        "{% macro show(item) %}{{ item }}{% endmacro %}{{ show(source) }}"
        "{% for key, value in alert.labels | dictsort %}{{ key }}{{ loop.index }}"
        "{% endfor %}"
    )
    write(tmp_path, "branches", "s", body)
    assert Renderer(tmp_path).check_templates(["branches"]) == []


def test_shipped_templates_pass_the_check() -> None:
    folder = Path(__file__).resolve().parents[1] / "templates"
    renderer = Renderer(folder, strict=True)
    for name in ("alertmanager", "cloudwatch", "cloud-monitoring"):
        if not renderer.has_template(name):
            continue
        assert renderer.check_templates([name]) == []
