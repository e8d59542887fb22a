"""Configuration: file, interpolation, environment overrides, and a precise
message for every kind of mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.config import interpolate, load_config, parse_duration
from relay.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_apply_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={"DOIT_API_KEY": "k"})
    assert config.store.url == "sqlite:///relay.db"
    assert config.server.bind == "0.0.0.0:8080"
    assert config.doit.api_url == "https://api.doit.com"
    assert config.defaults.dedup_window == 7 * 86400


def test_interpolation_with_defaults_and_escapes() -> None:
    env = {"A": "alpha", "EMPTY": ""}
    assert interpolate("${A}", env) == "alpha"
    assert interpolate("${MISSING:-fallback}", env) == "fallback"
    assert interpolate("${EMPTY:-fallback}", env) == "fallback"
    assert interpolate("${MISSING}", env) == ""
    assert interpolate("$${A}", env) == "${A}"
    assert interpolate({"k": ["x${A}y"]}, env) == {"k": ["xalphay"]}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "doit: {api_url: 'http://file.example', api_key: from-file}\n"
        "store: {url: 'sqlite:///file.db'}\nserver: {bind: '127.0.0.1:1'}\n",
    )
    config = load_config(
        path,
        env={
            "DOIT_API_URL": "http://env.example/",
            "DOIT_API_KEY": "from-env",
            "RELAY_STORE": "redis://127.0.0.1:6379/3",
            "RELAY_BIND": "127.0.0.1:9999",
            "RELAY_DRY_RUN": "1",
        },
    )
    assert config.doit.api_url == "http://env.example"
    assert config.doit.api_key == "from-env"
    assert config.store.url == "redis://127.0.0.1:6379/3"
    assert config.server.bind == "127.0.0.1:9999"
    assert config.dry_run is True
    assert config.path == str(path)


def test_file_values_are_interpolated_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "doit: {api_key: '${KEY}'}\n"
        "sources: {alertmanager: {auth: {bearer_token: '${TOKEN:-none}'}}}\n",
    )
    config = load_config(path, env={"KEY": "k1"})
    assert config.doit.api_key == "k1"
    assert config.sources.alertmanager.auth.bearer_token == "none"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("surprise: 1\n", {}, r"surprise: unknown key"),
        ("doit: {api_key: k, colour: red}\n", {}, r"doit\.colour: unknown key"),
        ("server: {workers: lots}\n", {}, r"server\.workers: .*got 'lots'"),
        ("server: {log_format: xml}\n", {}, r"server\.log_format: .*got 'xml'"),
        ("defaults: {severity: critical}\n", {}, r"defaults\.severity: expected one"),
        ("defaults: {platform: mainframe}\n", {}, r"defaults\.platform: expected"),
        ("defaults: {reopen_window: tomorrow}\n", {}, r"reopen_window: expected a dur"),
        ("doit: {api_url: 'ftp://x'}\n", {}, r"doit\.api_url: expected an http"),
        ("store: {url: 'postgres://x'}\n", {}, r"store\.url: expected sqlite"),
        ("rules: [{match: {}}]\n", {}, r"rules\[0\]\.name: required key is missing"),
        (
            "rules: [{name: a}, {name: a}]\n",
            {},
            r"expected a unique rule name; got 'a' twice",
        ),
        ("severity_map: {sev1: catastrophic}\n", {}, r"severity_map\.sev1: expected"),
        ("- just\n- a list\n", {}, r"expected a mapping at the top level"),
        ("doit: {api_key: [unclosed\n", {}, r"not valid YAML"),
        ("server: {max_body_bytes: 10}\n", {}, r"server\.max_body_bytes"),
    ],
)
def test_every_mistake_names_file_field_expected_and_found(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"DOIT_API_KEY": "k", **env})
    text_of = str(caught.value)
    assert text_of.startswith(f"{path}: "), text_of
    assert re.search(message, text_of), text_of


def test_a_missing_api_key_stops_start_unless_dry_run(tmp_path: Path) -> None:
    path = write(tmp_path, "doit: {api_key: '${DOIT_API_KEY}'}\n")
    with pytest.raises(ConfigError, match=r"doit\.api_key: expected a DoiT API key"):
        load_config(path, env={})
    assert load_config(path, env={"RELAY_DRY_RUN": "1"}).dry_run is True


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml", env={"DOIT_API_KEY": "k"})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(env={"RELAY_CONFIG": str(tmp_path / "gone.yaml")})


@pytest.mark.parametrize(
    "text",
    [
        "doit: {api_key: 'sk-SECRET', read_timeout: slow}\n",
        "doit: {api_key: [sk-SECRET]}\n",
        "sources: {alertmanager: {auth: {bearer_token: [sk-SECRET]}}}\n",
        "sources: {alertmanager: {auth: {basic: {username: u, password: [sk-SECRET]}}}}"
        "\n",
    ],
)
def test_secrets_are_not_echoed_in_errors(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "sk-SECRET" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("7d", 604800),
        (12, 12),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
