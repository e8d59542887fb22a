"""Routing: rule order, the source filter, defaults, severity resolution,
templated values, their fallbacks, explanations and config errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from relay.alert import Alert, Notification
from relay.config import Config, load_config
from relay.errors import ConfigError
from relay.preview import preview_source
from relay.render import Renderer
from relay.rules import Route, Rules
from relay.sources.base import Inbound

ROOT = Path(__file__).resolve().parents[1]


def make_alert(
    name: str = "HighCPU",
    source: str = "alertmanager",
    hint: str | None = None,
    **labels: str,
) -> Alert:
    return Alert(
        source=source,  # type: ignore[arg-type]
        status="firing",
        identity=f"id-{name}",
        name=name,
        labels={"alertname": name, **labels},
        severity_hint=hint,
    )


def notification(source: str = "alertmanager") -> Notification:
    return Notification(source=source, group="{}:{}", receiver="relay")  # type: ignore[arg-type]


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in ("alertmanager", "gke"):
        (folder / f"{name}.subject.j2").write_text("{{ alert.name }}", encoding="utf-8")
        (folder / f"{name}.body.j2").write_text("body", encoding="utf-8")
    (folder / "only-body.body.j2").write_text("body", encoding="utf-8")
    return folder


def make_config(data: dict[str, Any], path: str = "/etc/relay/relay.yaml") -> Config:
    config = Config.model_validate(data)
    config.path = path
    return config


def rules_for(templates: Path, data: dict[str, Any]) -> Rules:
    return Rules(make_config(data), templates)


def route(rules: Rules, alert: Alert) -> Route:
    return rules.route(alert, notification(alert.source))


# matching


def test_first_matching_rule_wins(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {"name": "prod", "match": {"matchers": ['env="prod"']}},
                {"name": "cpu", "match": {"matchers": ['alertname="HighCPU"']}},
                {"name": "all"},
            ]
        },
    )
    assert route(rules, make_alert(env="prod")).rule == "prod"
    assert route(rules, make_alert(env="dev")).rule == "cpu"
    assert route(rules, make_alert("Disk", env="dev")).rule == "all"


def test_every_matcher_of_a_rule_must_hold(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {
                    "name": "both",
                    "match": {
                        "matchers": ['env="prod"', '{team=~"db|api", tier!="x"}']
                    },
                }
            ]
        },
    )
    assert route(rules, make_alert(env="prod", team="db")).rule == "both"
    assert route(rules, make_alert(env="prod", team="web")).rule == "default"
    assert route(rules, make_alert(env="prod", team="db", tier="x")).rule == "default"


def test_source_filter(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {"name": "aws", "match": {"source": "cloudwatch"}},
                {"name": "gcp", "match": {"source": "cloud-monitoring"}},
            ]
        },
    )
    assert route(rules, make_alert(source="cloudwatch")).rule == "aws"
    assert route(rules, make_alert(source="cloud-monitoring")).rule == "gcp"
    assert route(rules, make_alert(source="alertmanager")).rule == "default"


def test_dropping_rule(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {
                    "name": "heartbeats",
                    "match": {"matchers": ['alertname=~"Watchdog|InfoInhibitor"']},
                    "drop": True,
                }
            ]
        },
    )
    assert route(rules, make_alert("Watchdog")).drop is True
    assert route(rules, make_alert("InfoInhibitor")).drop is True
    assert route(rules, make_alert("WatchdogX")).drop is False


# defaults and fallbacks


def test_no_rule_gives_the_defaults(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "doit": {"requester": "ops@example.com"},
            "defaults": {"category": "compute", "severity": "normal"},
        },
    )
    assert route(rules, make_alert()) == Route(
        rule="default",
        drop=False,
        platform="google_cloud_platform",
        category="compute",
        severity="normal",
        requester="ops@example.com",
        template="alertmanager",
        subject=None,
        body=None,
        dedup_key=None,
        ticket_per="group",
        dedup_window=7 * 86400.0,
        reopen_window=86400.0,
    )


def test_unset_rule_fields_fall_back_to_the_defaults(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "doit": {"requester": "ops@example.com"},
            "defaults": {
                "platform": "aws",
                "category": "c1",
                "requester": "team@example.com",
                "dedup_window": "1h",
            },
            "rules": [
                {"name": "r", "ticket": {"category": "c2", "reopen_window": "5m"}}
            ],
        },
    )
    found = route(rules, make_alert())
    assert found.rule == "r"
    assert found.category == "c2"
    assert found.platform == "amazon_web_services"
    assert found.requester == "team@example.com"
    assert (found.dedup_window, found.reopen_window) == (3600.0, 300.0)


def test_null_windows_fall_back_to_built_in_values(templates: Path) -> None:
    rules = rules_for(
        templates, {"defaults": {"dedup_window": None, "reopen_window": None}}
    )
    found = route(rules, make_alert())
    assert (found.dedup_window, found.reopen_window) == (7 * 86400.0, 86400.0)


@pytest.mark.parametrize(
    ("source", "sources", "rule", "expected"),
    [
        ("alertmanager", {}, None, "group"),
        ("alertmanager", {"alertmanager": {"ticket_per": "alert"}}, None, "alert"),
        ("alertmanager", {}, "alert", "alert"),
        ("alertmanager", {"alertmanager": {"ticket_per": "alert"}}, "group", "group"),
        # the other sources have no groups
        ("cloudwatch", {}, None, "alert"),
        ("cloud-monitoring", {}, "group", "alert"),
    ],
)
def test_ticket_granularity(
    templates: Path,
    source: str,
    sources: dict[str, Any],
    rule: str | None,
    expected: str,
) -> None:
    ticket = {"ticket_per": rule} if rule else {}
    rules = rules_for(
        templates, {"sources": sources, "rules": [{"name": "r", "ticket": ticket}]}
    )
    assert route(rules, make_alert(source=source)).ticket_per == expected


def test_template_and_inline_text_come_from_one_level(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "defaults": {"subject": "default {{ alert.name }}"},
            "rules": [
                {
                    "name": "gke",
                    "match": {"matchers": ["t=gke"]},
                    "ticket": {"template": "gke"},
                },
                {
                    "name": "inline",
                    "match": {"matchers": ["t=inline"]},
                    "ticket": {"body": "b"},
                },
                {"name": "plain"},
            ],
        },
    )
    gke = route(rules, make_alert(t="gke"))
    assert (gke.template, gke.subject, gke.body) == ("gke", None, None)
    inline = route(rules, make_alert(t="inline"))
    assert (inline.template, inline.subject, inline.body) == ("alertmanager", None, "b")
    plain = route(rules, make_alert())
    assert (plain.template, plain.subject) == (
        "alertmanager",
        "default {{ alert.name }}",
    )


def test_template_defaults_to_the_source_name(templates: Path) -> None:
    rules = rules_for(templates, {})
    assert route(rules, make_alert(source="cloudwatch")).template == "cloudwatch"


def test_dedup_key_template_is_passed_through_unrendered(templates: Path) -> None:
    key = "{{ alert.labels.namespace }}/{{ alert.name }}"
    rules = rules_for(
        templates, {"rules": [{"name": "r", "ticket": {"dedup_key": key}}]}
    )
    assert route(rules, make_alert()).dedup_key == key


# severity


SEVERITY_CONFIG: dict[str, Any] = {
    "severity_map": {"Critical": "high", "warning": "normal", "page": "urgent"},
    "defaults": {"severity": "low"},
    "rules": [
        {
            "name": "fixed",
            "match": {"matchers": ["r=fixed"]},
            "ticket": {"severity": "urgent"},
        },
        {
            "name": "templated",
            "match": {"matchers": ["r=templated"]},
            "ticket": {
                "severity": "{{ 'high' if alert.labels.tier == '1' else 'normal' }}"
            },
        },
        {
            "name": "mapped",
            "match": {"matchers": ["r=mapped"]},
            "ticket": {"severity_map": {"warning": "high", "CRIT": "urgent"}},
        },
        {"name": "plain"},
    ],
}


@pytest.mark.parametrize(
    ("labels", "hint", "expected"),
    [
        # the rule's fixed severity beats the source's
        ({"r": "fixed"}, "info", "urgent"),
        ({"r": "templated", "tier": "1"}, "critical", "high"),
        ({"r": "templated"}, "critical", "normal"),
        # the rule's own map first, case-insensitively
        ({"r": "mapped"}, "Warning", "high"),
        ({"r": "mapped"}, "crit", "urgent"),
        # then the top-level map, case-insensitively
        ({"r": "mapped"}, "page", "urgent"),
        ({}, "CRITICAL", "high"),
        ({}, " warning ", "normal"),
        # a hint that is already a DoiT severity is taken as it is
        ({}, "Urgent", "urgent"),
        # an unknown hint, or none, gives the default
        ({}, "disaster", "low"),
        ({}, None, "low"),
    ],
)
def test_severity_precedence(
    templates: Path, labels: dict[str, str], hint: str | None, expected: str
) -> None:
    rules = rules_for(templates, SEVERITY_CONFIG)
    assert route(rules, make_alert(hint=hint, **labels)).severity == expected


def test_defaults_severity_map_applies_before_the_top_level_map(
    templates: Path,
) -> None:
    rules = rules_for(templates, {"defaults": {"severity_map": {"critical": "urgent"}}})
    assert route(rules, make_alert(hint="critical")).severity == "urgent"


# templated values


def test_templated_values_are_rendered_over_the_alert(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {
                    "name": "t",
                    "ticket": {
                        "platform": "{{ alert.labels.cloud }}",
                        "category": "{{ alert.labels.component }}__{{ source }}",
                        "requester": "{{ alert.labels.team }}@example.com",
                        "severity": "{{ alert.labels.sev | upper }}",
                        "template": "{{ 'gke' if alert.labels.gke else source }}",
                    },
                }
            ]
        },
    )
    found = route(
        rules, make_alert(cloud="AWS", component="s3", team="db", sev="high", gke="1")
    )
    assert found.platform == "amazon_web_services"  # the alias is normalised
    assert found.category == "s3__alertmanager"
    assert found.requester == "db@example.com"
    assert found.severity == "high"
    assert found.template == "gke"


def test_label_only_values_are_rendered_once_per_label_set(
    templates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {
                    "name": "t",
                    "ticket": {
                        "category": "{{ alert.labels.component }}",
                        "requester": "{{ alert.annotations.owner }}x@example.com",
                    },
                }
            ]
        },
    )
    rendered: list[str] = []
    real = rules.renderer.render_value

    def counting(text: str, context: dict[str, Any]) -> str:
        rendered.append(text)
        return real(text, context)

    monkeypatch.setattr(rules.renderer, "render_value", counting)
    for _ in range(3):
        assert route(rules, make_alert(component="s3")).category == "s3"
    assert route(rules, make_alert(component="gcs")).category == "gcs"

    # the label-only category: once per label set; the requester reads an
    # annotation, so it is rendered every time
    assert rendered.count("{{ alert.labels.component }}") == 2
    assert rendered.count("{{ alert.annotations.owner }}x@example.com") == 4


def test_group_is_in_the_routing_context(templates: Path) -> None:
    rules = rules_for(
        templates,
        {"rules": [{"name": "t", "ticket": {"category": "{{ group.receiver }}"}}]},
    )
    assert route(rules, make_alert()).category == "relay"


@pytest.mark.parametrize(
    ("ticket", "field", "expected", "level"),
    [
        (
            {"platform": "{{ alert.labels.cloud }}"},
            "platform",
            "amazon_web_services",
            "INFO",
        ),
        (
            {"platform": "{{ 'mainframe' }}"},
            "platform",
            "amazon_web_services",
            "WARNING",
        ),
        (
            {"platform": "{{ ''.__class__ }}"},
            "platform",
            "amazon_web_services",
            "WARNING",
        ),
        ({"severity": "{{ 'critical' }}"}, "severity", "normal", "WARNING"),
        ({"severity": "{{ 1 // 0 }}"}, "severity", "normal", "WARNING"),
        ({"severity": "{{ alert.labels.sev }}"}, "severity", "normal", "INFO"),
        ({"category": "{{ 1 // 0 }}"}, "category", "default-cat", "WARNING"),
        (
            {"requester": "{{ alert.labels.owner }}"},
            "requester",
            "me@example.com",
            None,
        ),
        ({"template": "{{ 'nonexistent' }}"}, "template", "alertmanager", "WARNING"),
    ],
)
def test_bad_rendered_values_fall_back_and_are_logged(
    templates: Path,
    caplog: pytest.LogCaptureFixture,
    ticket: dict[str, str],
    field: str,
    expected: str,
    level: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="relay.rules")
    rules = rules_for(
        templates,
        {
            "doit": {"requester": "me@example.com"},
            "defaults": {
                "platform": "aws",
                "category": "default-cat",
                "severity": "normal",
            },
            "rules": [{"name": "bad", "ticket": ticket}],
        },
    )

    found = route(rules, make_alert())

    assert getattr(found, field) == expected
    events = [r for r in caplog.records if r.getMessage() == "route.fallback"]
    if level is None:
        return
    (event,) = events
    assert event.levelname == level
    assert event.rule == "bad"  # type: ignore[attr-defined]
    assert event.field == field  # type: ignore[attr-defined]


def test_defaults_that_render_to_nonsense_still_give_a_valid_ticket(
    templates: Path,
) -> None:
    rules = rules_for(
        templates,
        {"defaults": {"platform": "{{ 'moon' }}", "severity": "{{ 'extreme' }}"}},
    )
    found = route(rules, make_alert())
    assert (found.platform, found.severity) == ("google_cloud_platform", "low")


def test_hostile_label_values_stay_data_in_rule_values(templates: Path) -> None:
    rules = rules_for(
        templates,
        {"rules": [{"name": "t", "ticket": {"category": "{{ alert.labels.x }}"}}]},
    )
    assert route(rules, make_alert(x="{{ 7*7 }}")).category == "{{ 7*7 }}"


# explain


def test_explain_gives_a_reason_for_every_rule_up_to_the_match(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {"name": "aws", "match": {"source": "cloudwatch"}},
                {"name": "watchdog", "match": {"matchers": ['alertname="Watchdog"']}},
                {"name": "team", "match": {"matchers": ['team="db"']}},
                {
                    "name": "cpu",
                    "match": {
                        "source": "alertmanager",
                        "matchers": ['alertname=~"High.*"', "env!=dev"],
                    },
                },
                {"name": "never-reached"},
            ]
        },
    )
    steps = rules.explain(make_alert(), notification())
    assert steps == [
        ("aws", False, "source is alertmanager, rule wants cloudwatch"),
        (
            "watchdog",
            False,
            "alertname=\"Watchdog\" did not match: alertname is 'HighCPU'",
        ),
        ("team", False, 'team="db" did not match: team is not set'),
        (
            "cpu",
            True,
            'source is alertmanager and alertname=~"High.*", env!="dev" matched',
        ),
    ]


def test_explain_ends_with_the_defaults_when_nothing_matches(templates: Path) -> None:
    rules = rules_for(
        templates, {"rules": [{"name": "aws", "match": {"source": "cloudwatch"}}]}
    )
    assert rules.explain(make_alert(), notification()) == [
        ("aws", False, "source is alertmanager, rule wants cloudwatch"),
        ("default", True, "no rule matched; the defaults apply"),
    ]


def test_explain_of_a_catch_all_rule(templates: Path) -> None:
    rules = rules_for(templates, {"rules": [{"name": "all"}]})
    assert rules.explain(make_alert(), notification()) == [
        ("all", True, "matches every alert")
    ]


# config errors


BROKEN = r"rules\[1\] \('broken'\)"


def bad_rule(ticket: dict[str, Any] | None = None, **rule: Any) -> dict[str, Any]:
    return {
        "rules": [{"name": "ok"}, {"name": "broken", "ticket": ticket or {}, **rule}]
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            bad_rule(match={"matchers": ['alertname="x']}),
            BROKEN + r"\.match\.matchers\[0\]: expected a closing",
        ),
        (
            bad_rule(match={"matchers": ["ok=1", 'alertname=~"(x"']}),
            BROKEN + r"\.match\.matchers\[1\]: alertname=~: "
            r"expected a regular expression; got '\(x'",
        ),
        (
            bad_rule({"template": "missing"}),
            BROKEN + r"\.ticket\.template: unknown template 'missing': expected "
            r"missing\.subject\.j2 and missing\.body\.j2 in .*; not found",
        ),
        (
            bad_rule({"template": "only-body", "body": "inline"}),
            BROKEN + r"\.ticket\.template: unknown template 'only-body': expected "
            r"only-body\.subject\.j2 in",
        ),
        (
            bad_rule({"template": "../etc/passwd"}),
            BROKEN + r"\.ticket\.template: expected a template name of letters, "
            r"digits.*got '\.\./etc/passwd'",
        ),
        (
            bad_rule({"severity": "{{ 'high' if }}"}),
            BROKEN + r"\.ticket\.severity: template does not compile: .*"
            r"\(line 1\)",
        ),
        (
            bad_rule({"subject": "{% for x in alerts %}"}),
            BROKEN + r"\.ticket\.subject: template does not compile",
        ),
        (
            bad_rule({"platform": "{{ alrt.labels.cloud }}"}),
            BROKEN + r"\.ticket\.platform: template refers to undefined "
            r"variable 'alrt'; expected one of alert, alerts, firing, group, resolved, "
            r"source$",
        ),
        (
            bad_rule({"category": "{{ ticket.platform }}"}),
            BROKEN
            + r"\.ticket\.category: template refers to undefined variable 'ticket'",
        ),
        (
            bad_rule({"dedup_key": "{{ ticket.severity }}"}),
            BROKEN
            + r"\.ticket\.dedup_key: template refers to undefined variable 'ticket'",
        ),
        (
            bad_rule({"body": "{{ tickets.rule }}"}),
            BROKEN + r"\.ticket\.body: template refers to undefined variable "
            r"'tickets'; expected one of alert, alerts, firing, group, resolved, "
            r"source, ticket",
        ),
        (
            bad_rule({"severity_map": {"warn": "{{ nope }}"}}),
            BROKEN + r"\.ticket\.severity_map\['warn'\]: template refers to "
            r"undefined variable",
        ),
        (
            {"defaults": {"requester": "{{ owner }}"}},
            r"defaults\.requester: template refers to undefined variable 'owner'",
        ),
        (
            {"defaults": {"template": "nowhere"}},
            r"defaults\.template: unknown template 'nowhere'",
        ),
        (
            {"severity_map": {"x": "{{ y }}"}},
            r"severity_map\['x'\]: template refers to undefined variable 'y'",
        ),
    ],
)
def test_config_errors_name_file_rule_and_field(
    templates: Path, data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"^/etc/relay/relay\.yaml: " + message):
        rules_for(templates, data)


def test_unknown_fixed_severity_is_refused(templates: Path) -> None:
    # the config schema refuses literals already; a config built in code
    # can still carry one
    config = make_config(bad_rule())
    config.rules[1].ticket.severity = "critical"
    config.rules[1].ticket.severity_map = {"warn": "severe"}
    config.defaults.platform = "mainframe"
    with pytest.raises(ConfigError) as raised:
        Rules(config, templates)
    assert str(raised.value).splitlines() == [
        "/etc/relay/relay.yaml: rules[1] ('broken').ticket.severity: expected one of "
        "low, normal, high, urgent; got 'critical'",
        "/etc/relay/relay.yaml: rules[1] ('broken').ticket.severity_map['warn']: "
        "expected one of low, normal, high, urgent; got 'severe'",
        "/etc/relay/relay.yaml: defaults.platform: expected one of "
        "google_cloud_platform, amazon_web_services, microsoft_azure, google_g_suite, "
        "microsoft_office_365, cloud_management_platform, finance___billing, "
        "credits___request, perfectscale; got 'mainframe'",
    ]


def test_every_problem_is_reported_at_once(templates: Path) -> None:
    data = {
        "rules": [
            {"name": "a", "match": {"matchers": ["x"]}},
            {"name": "b", "ticket": {"template": "nope", "category": "{{ q }}"}},
        ]
    }
    with pytest.raises(ConfigError) as raised:
        rules_for(templates, data)
    assert len(str(raised.value).splitlines()) == 3


def test_valid_templates_pass(templates: Path) -> None:
    rules = rules_for(
        templates,
        {
            "rules": [
                {
                    "name": "full",
                    "ticket": {
                        "template": "gke",
                        "subject": "{{ ticket.severity }} {{ alert.name | upper }}",
                        "body": "{% for a in firing %}{{ a.name }}{% endfor %}"
                        "{{ range(3) | list }}{% set n = namespace(c=0) %}{{ n.c }}",
                        "dedup_key": "{{ group.group }}{{ alert.identity }}",
                        "severity_map": {"warn": "{{ 'normal' }}"},
                    },
                }
            ]
        },
    )
    assert len(rules) == 1
    assert rules.template_names() == {
        "alertmanager",
        "cloudwatch",
        "cloud-monitoring",
        "gke",
    }


# the shipped configuration


@pytest.fixture
def shipped() -> Rules:
    config = load_config(ROOT / "config" / "relay.yaml", env={"DOIT_API_KEY": "x"})
    return Rules(config, ROOT / "templates")


def test_shipped_config_routes_representative_alerts(shipped: Rules) -> None:
    assert route(shipped, make_alert("Watchdog", severity="none")).drop
    assert route(shipped, make_alert("InfoInhibitor")).drop

    plain = route(shipped, make_alert("HighCPU", hint="critical"))
    assert (plain.rule, plain.drop, plain.platform, plain.severity) == (
        "prometheus",
        False,
        "google_cloud_platform",
        "high",
    )
    assert plain.ticket_per == "group"
    assert (plain.dedup_window, plain.reopen_window) == (7 * 86400.0, 86400.0)
    assert plain.category == ""

    on_aws = route(shipped, make_alert("HighCPU", hint="warning", platform="aws"))
    assert (on_aws.platform, on_aws.severity) == ("amazon_web_services", "normal")

    alarm = route(shipped, make_alert("Watchdog", source="cloudwatch"))
    assert (alarm.rule, alarm.drop, alarm.platform) == (
        "cloudwatch",
        False,
        "amazon_web_services",
    )
    assert alarm.ticket_per == "alert"

    incident = route(
        shipped, make_alert("Uptime", source="cloud-monitoring", hint="Error")
    )
    assert (incident.rule, incident.platform, incident.severity) == (
        "cloud-monitoring",
        "google_cloud_platform",
        "high",
    )


def test_shipped_config_takes_category_and_requester_from_the_environment() -> None:
    env = {
        "DOIT_API_KEY": "x",
        "RELAY_DEFAULT_CATEGORY": "gke",
        "DOIT_REQUESTER": "a@b.c",
    }
    config = load_config(ROOT / "config" / "relay.yaml", env=env)
    found = route(Rules(config, ROOT / "templates"), make_alert())
    assert (found.category, found.requester) == ("gke", "a@b.c")


@pytest.mark.parametrize(
    "path", sorted((ROOT / "config" / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_configs_validate_and_compile(path: Path) -> None:
    config = load_config(path, env={"DOIT_API_KEY": "x"})
    rules = Rules(config, ROOT / "templates")
    assert len(rules) > 0
    assert route(rules, make_alert("Watchdog")).drop


SAMPLES = ROOT.parent / "shared" / "samples"


@pytest.mark.parametrize(
    ("prefix", "source"), [("am_", "alertmanager"), ("gcm_", "cloud-monitoring")]
)
def test_shipped_config_routes_and_renders_captured_payloads(
    shipped: Rules, prefix: str, source: str
) -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"captured payloads are not available at {SAMPLES}")
    parser = preview_source(shipped.config, source)
    renderer = Renderer(ROOT / "templates")
    files = sorted(SAMPLES.glob(f"{prefix}*.json"))
    assert files

    for file in files:
        notification = parser.parse(Inbound(body=file.read_bytes()))
        for alert in notification.alerts:
            found = shipped.route(alert, notification)
            assert found.rule == ("prometheus" if source == "alertmanager" else source)
            assert found.platform == "google_cloud_platform"
            assert found.severity in ("low", "normal", "high", "urgent")
            context = renderer.build_context(
                [alert], notification.to_dict(), found.ticket_context("key")
            )
            ticket = renderer.render_ticket(
                found.template, found.subject, found.body, context, alert.source
            )
            assert not ticket.fallback, file.name
            assert ticket.subject and ticket.body
