"""The operator commands: ``relay check``, ``relay preview``, ``relay queue``
and ``relay worker``, through their real entry point."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from relay.cli import main
from relay.emulator import EmulatorServer
from relay.store.base import Observation
from relay.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
NOTIFICATION = {
    "version": "4",
    "status": "firing",
    "receiver": "doit",
    "groupKey": '{}:{alertname="DiskFull"}',
    "groupLabels": {"alertname": "DiskFull"},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "fingerprint": "c0ffee0000000001",
            "labels": {"alertname": "DiskFull", "severity": "critical"},
            "annotations": {"summary": "Disk on db-1 is 95% full"},
            "startsAt": "2026-01-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        },
        {
            "status": "firing",
            "labels": {"alertname": "Watchdog"},
            "annotations": {},
            "startsAt": "2026-01-01T10:00:00Z",
        },
    ],
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty folder with the project's templates, and put the root
    logger back as it was (the CLI configures it onto the runner's
    streams)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_TEMPLATES_DIR", str(ROOT / "templates"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["--log-level", "error", *args])


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_check_accepts_the_shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOIT_API_KEY", "k")
    result = run("--config", str(ROOT / "config" / "relay.yaml"), "check")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("doit: {api_key: k}\nbogus: 1\n", r"bogus: unknown key"),
        ("doit: {api_key: k}\nserver: {workers: many}\n", r"server\.workers"),
        ("doit: {api_key: k}\ndefaults: {severity: critical}\n", r"defaults\.severity"),
        ("doit: {api_key: k}\ndefaults: {dedup_window: soon}\n", r"dedup_window"),
        ("doit: {api_key: ''}\n", r"doit\.api_key"),
        ("doit: {api_key: k}\nstore: {url: 'mysql://x'}\n", r"store\.url"),
        (
            "doit: {api_key: k}\nrules:\n  - name: bad\n"
            "    match: {matchers: ['team=~\"(\"']}\n",
            r"rules\[0\] \('bad'\)\.match\.matchers\[0\]",
        ),
        (
            "doit: {api_key: k}\nrules:\n  - name: t\n    ticket: {template: nosuch}\n",
            r"rules\[0\] \('t'\)\.ticket\.template",
        ),
        (
            "doit: {api_key: k}\nrules:\n  - name: u\n"
            "    ticket: {category: '{{ nothing.here }}'}\n",
            r"nothing",
        ),
        ("doit: [1, 2]\n", r"doit"),
        ("doit: {api_key: k\n", r"not valid YAML"),
    ],
)
def test_check_names_the_field_of_each_bad_config(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write_config(tmp_path, text)
    result = run("--config", str(path), "check")
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert "Traceback" not in result.output
    assert re.search(expected, result.output), result.output


def test_check_finds_a_broken_template_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_TEMPLATES_DIR")
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "alertmanager.body.j2").write_text("{% if %}")
    path = write_config(tmp_path, f"doit: {{api_key: k}}\ntemplates_dir: {templates}\n")
    result = run("--config", str(path), "check")
    assert result.exit_code == 2
    assert "alertmanager.body.j2" in result.output


def test_preview_shows_rule_key_and_ticket_without_side_effects(
    tmp_path: Path,
) -> None:
    payload = tmp_path / "notification.json"
    payload.write_text(json.dumps(NOTIFICATION))
    config = write_config(
        tmp_path,
        "doit: {api_key: k}\n"
        f"store: {{url: 'sqlite:///{tmp_path / 'never.db'}'}}\n"
        "defaults: {category: storage__google_cloud_storage}\n"
        "rules:\n"
        "  - name: heartbeats\n"
        "    match: {matchers: ['alertname=\"Watchdog\"']}\n"
        "    drop: true\n",
    )
    result = run("--config", str(config), "preview", "alertmanager", str(payload))
    assert result.exit_code == 0, result.output
    assert "rule heartbeats: skipped" in result.output
    assert "dropped: Watchdog (rule heartbeats)" in result.output
    assert "subject: [FIRING:1] DiskFull" in result.output
    assert "severity: high" in result.output
    assert not (tmp_path / "never.db").exists()

    as_json = run(
        "--config", str(config), "preview", "alertmanager", str(payload), "--json"
    )
    data = json.loads(as_json.output)
    [ticket] = [t for t in data["tickets"] if "dedup_key" in t]
    assert ticket["dedup_key"].startswith("alertmanager:")
    assert ticket["ticket"]["category"] == "storage__google_cloud_storage"


def test_preview_reports_a_malformed_payload_in_one_line(tmp_path: Path) -> None:
    payload = tmp_path / "bad.json"
    payload.write_text('{"alerts": "no"}')
    config = write_config(tmp_path, "doit: {api_key: k}\n")
    result = run("--config", str(config), "preview", "alertmanager", str(payload))
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output


def _store_with_jobs(tmp_path: Path, count: int) -> tuple[Path, SQLiteStore]:
    db = tmp_path / "relay.db"
    store = SQLiteStore(str(db))
    for index in range(count):
        store.observe(
            Observation(
                key=f"alertmanager:{index}",
                firing=True,
                rule="r",
                severity="low",
                dedup_window=3600,
                reopen_window=3600,
                job={"key": f"alertmanager:{index}", "route": {"rule": "r"}},
            ),
            now=1_000.0,
        )
    return db, store


def test_queue_shows_dead_letters_and_retries_them(tmp_path: Path) -> None:
    db, store = _store_with_jobs(tmp_path, 3)
    [first, second] = store.lease("test", 2_000.0, 60.0, 2)
    store.dead_letter(first, "DoiT API answered 400: category is required", 2_000.0)
    store.dead_letter(second, "DoiT API answered 502: upstream refused", 2_000.0)
    config = write_config(tmp_path, f"store: {{url: 'sqlite:///{db}'}}\n")

    shown = run("--config", str(config), "queue")
    assert shown.exit_code == 0, shown.output
    assert "dead 2" in shown.output
    assert "category is required" in shown.output

    listed = json.loads(run("--config", str(config), "queue", "--json").output)
    assert listed["stats"]["dead"] == 2
    assert {job["id"] for job in listed["dead"]} == {first.id, second.id}

    one = run("--config", str(config), "queue", "retry", first.id)
    assert one.exit_code == 0 and "requeued 1" in one.output
    unknown = run("--config", str(config), "queue", "retry", "no-such-job")
    assert unknown.exit_code == 1 and "no dead letter" in unknown.output
    everything = run("--config", str(config), "queue", "retry", "--all")
    assert "requeued 1" in everything.output
    assert store.stats(3_000.0).dead == 0

    purged = run("--config", str(config), "queue", "purge", "pending", "--yes")
    assert purged.exit_code == 0 and "deleted 3 pending" in purged.output
    assert store.stats(3_000.0).pending == 0
    store.close()


def test_worker_once_delivers_due_jobs(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOIT_API_URL", emulator.url)
    monkeypatch.setenv("DOIT_API_KEY", "k")
    db = tmp_path / "relay.db"
    config = write_config(
        tmp_path,
        f"store: {{url: 'sqlite:///{db}'}}\n"
        "defaults: {category: storage__google_cloud_storage}\n",
    )
    payload = tmp_path / "n.json"
    payload.write_text(json.dumps(NOTIFICATION))

    from relay.app import Relay
    from relay.config import load_config
    from relay.dedup import decide
    from relay.sources.alertmanager import AlertmanagerSource
    from relay.sources.base import Inbound

    relay = Relay.build(load_config(config))
    notification = AlertmanagerSource(relay.config).parse(
        Inbound(body=payload.read_bytes())
    )
    decisions = decide(notification, relay.rules, relay.renderer, relay.store, 1e9)
    assert sum(d.action == "queued" for d in decisions) == 2
    relay.store.close()

    result = run("--config", str(config), "worker", "--once")
    assert result.exit_code == 0, result.output
    assert "delivered 1 job(s)" in result.output
    assert len(emulator.tickets()) == 1
