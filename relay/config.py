"""Configuration: defaults, then the YAML file, then the environment.

The file named by ``RELAY_CONFIG`` (default ``config/relay.yaml``) is read,
``${VAR}`` and ``${VAR:-default}`` are replaced in its string values, the
environment overrides of the public surface are applied, and the result is
validated strictly: an unknown key, a wrong type or a missing API key stops
start-up with a message naming the file, the field, what was expected and
what was found.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/relay.yaml"
SEVERITIES = ("low", "normal", "high", "urgent")
PLATFORMS = (
    "google_cloud_platform",
    "amazon_web_services",
    "microsoft_azure",
    "google_g_suite",
    "microsoft_office_365",
    "cloud_management_platform",
    "finance___billing",
    "credits___request",
    "perfectscale",
)
PLATFORM_ALIASES = {
    "gcp": "google_cloud_platform",
    "google": "google_cloud_platform",
    "google cloud": "google_cloud_platform",
    "aws": "amazon_web_services",
    "amazon": "amazon_web_services",
    "azure": "microsoft_azure",
    "gsuite": "google_g_suite",
    "google_workspace": "google_g_suite",
    "office365": "microsoft_office_365",
    "o365": "microsoft_office_365",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """Seconds from ``30s``, ``5m``, ``24h``, ``7d``, ``1w``, ``250ms`` or a
    bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected a duration such as 30s, 5m, 24h or 7d; got {value!r}"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"expected a duration such as 30s, 5m, 24h or 7d; got {value!r}"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"expected a duration of zero or more; got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def is_template(value: str) -> bool:
    """Whether a rule value is a Jinja2 template rather than a literal."""
    return "{{" in value or "{%" in value


def normalise_platform(value: str) -> str:
    """Map friendly platform names (gcp, aws, azure) to DoiT's ids."""
    return PLATFORM_ALIASES.get(value.strip().lower(), value.strip())


def _check_severity(value: str | None) -> str | None:
    if value is None or value == "" or is_template(value):
        return value
    if value not in SEVERITIES:
        raise ValueError(f"expected one of {', '.join(SEVERITIES)}; got {value!r}")
    return value


def _check_platform(value: str | None) -> str | None:
    if value is None or value == "" or is_template(value):
        return value
    platform = normalise_platform(value)
    if platform not in PLATFORMS:
        raise ValueError(
            f"expected a DoiT platform id ({', '.join(PLATFORMS)}) "
            f"or an alias (gcp, aws, azure); got {value!r}"
        )
    return platform


Severity = Annotated[str, BeforeValidator(_check_severity)]
Platform = Annotated[str, BeforeValidator(_check_platform)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class BasicAuth(_Model):
    username: str
    password: str


class InboundAuth(_Model):
    """Credentials a source must present. Empty means no auth (warned)."""

    bearer_token: str = ""
    basic: BasicAuth | None = None
    realm: str = "relay"

    @property
    def enabled(self) -> bool:
        return bool(self.bearer_token) or self.basic is not None


class DoitConfig(_Model):
    api_url: str = "https://api.doit.com"
    api_key: str = ""
    tenant_id: str = ""
    requester: str = ""
    category_field: Literal["category", "product"] = "category"
    connect_timeout: Duration = 5.0
    read_timeout: Duration = 30.0
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_initial: Duration = 2.0
    backoff_max: Duration = 60.0
    rate_limit_per_minute: int = Field(default=1000, ge=1)

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL; got {value!r}")
        return value.rstrip("/")


class ServerConfig(_Model):
    bind: str = "0.0.0.0:8080"
    workers: int = Field(default=2, ge=1)
    threads: int = Field(default=4, ge=1)
    timeout: Duration = 30.0
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class StoreConfig(_Model):
    url: str = "sqlite:///relay.db"
    prefix: str = "relay"
    # how long a process answers repeats of a problem the store called open
    # without asking the store again (0 turns it off)
    duplicate_memory: Duration = 1.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        schemes = (
            "sqlite:///",
            "redis://",
            "rediss://",
            "unix://",
            "redis+sentinel://",
        )
        if not value.startswith(schemes):
            raise ValueError(
                "expected sqlite:///PATH, redis://HOST:PORT/DB or rediss://…; "
                f"got {value!r}"
            )
        return value


class DeliveryConfig(_Model):
    workers: int = Field(default=2, ge=0)
    lease: Duration = 300.0
    poll_interval: Duration = 1.0
    max_age: Duration = 86400.0
    backoff_initial: Duration = 5.0
    backoff_max: Duration = 600.0
    message_id_ttl: Duration = 86400.0


class AlertmanagerSource(_Model):
    enabled: bool = True
    auth: InboundAuth = InboundAuth()
    ticket_per: Literal["group", "alert"] = "group"


class RawDelivery(_Model):
    """SNS raw message delivery: no envelope and no signature, so only on a
    path that carries its own secret."""

    enabled: bool = False
    token: str = ""


class EventBridgeSource(_Model):
    enabled: bool = False
    api_key_header: str = "x-api-key"
    api_key: str = ""


class CloudWatchSeverity(_Model):
    """Where a CloudWatch alarm's severity hint comes from.

    ``description``: a ``severity=<value>`` tag in the alarm description;
    ``name``: the first of ``name_patterns`` (regex to severity) that
    matches the alarm name; ``fixed``: always ``default``.
    """

    source: Literal["description", "name", "fixed"] = "description"
    name_patterns: dict[str, str] = Field(default_factory=dict)
    default: str = ""


class CloudWatchSource(_Model):
    enabled: bool = True
    topics: list[str] = Field(default_factory=list)
    cert_host_pattern: str = r"^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$"
    cert_dir: str = ""
    auto_confirm: bool = True
    insufficient_data: Literal["ignore", "fire", "resolve"] = "ignore"
    raw_delivery: RawDelivery = RawDelivery()
    eventbridge: EventBridgeSource = EventBridgeSource()
    severity: CloudWatchSeverity = CloudWatchSeverity()

    @field_validator("cert_host_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(
                f"expected a regular expression; got {value!r}: {e}"
            ) from e
        return value


class CloudMonitoringSource(_Model):
    enabled: bool = True
    token: str = ""
    auth: InboundAuth = InboundAuth()


class Sources(_Model):
    alertmanager: AlertmanagerSource = AlertmanagerSource()
    cloudwatch: CloudWatchSource = CloudWatchSource()
    cloud_monitoring: CloudMonitoringSource = CloudMonitoringSource()


class TicketSpec(_Model):
    """What a rule (or the defaults) sets on a ticket. Every string may be a
    Jinja2 template over the alert."""

    platform: Platform | None = None
    category: str | None = None
    severity: Severity | None = None
    severity_map: dict[str, Severity] | None = None
    requester: str | None = None
    template: str | None = None
    subject: str | None = None
    body: str | None = None
    dedup_key: str | None = None
    ticket_per: Literal["group", "alert"] | None = None
    dedup_window: Duration | None = None
    reopen_window: Duration | None = None


class Defaults(TicketSpec):
    platform: Platform | None = "google_cloud_platform"
    category: str | None = ""
    severity: Severity | None = "low"
    dedup_window: Duration | None = 7 * 86400.0
    reopen_window: Duration | None = 86400.0


class RuleMatch(_Model):
    source: Literal["alertmanager", "cloudwatch", "cloud-monitoring"] | None = None
    matchers: list[str] = Field(default_factory=list)


class Rule(_Model):
    name: str
    match: RuleMatch = RuleMatch()
    drop: bool = False
    ticket: TicketSpec = TicketSpec()


class Config(_Model):
    """The whole configuration. ``path`` is where it was read from."""

    doit: DoitConfig = DoitConfig()
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    sources: Sources = Sources()
    defaults: Defaults = Defaults()
    severity_map: dict[str, Severity] = Field(
        default_factory=lambda: {
            "critical": "high",
            "page": "urgent",
            "error": "high",
            "warning": "normal",
            "info": "low",
        }
    )
    rules: list[Rule] = Field(default_factory=list)
    templates_dir: str = ""
    dry_run: bool = False
    path: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Config:
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(
                    f"rules[{index}].name: expected a unique rule name; "
                    f"got {rule.name!r} twice"
                )
            seen.add(rule.name)
        return self


# environment variable -> (section, field); each overrides the file
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "RELAY_STORE": ("store", "url"),
    "RELAY_STORE_PREFIX": ("store", "prefix"),
    "RELAY_BIND": ("server", "bind"),
    "RELAY_WORKERS": ("server", "workers"),
    "RELAY_LOG_FORMAT": ("server", "log_format"),
    "RELAY_LOG_LEVEL": ("server", "log_level"),
    "RELAY_MAX_BODY_BYTES": ("server", "max_body_bytes"),
    "RELAY_DELIVERY_WORKERS": ("delivery", "workers"),
    "RELAY_TEMPLATES_DIR": ("templates_dir",),
    "DOIT_API_URL": ("doit", "api_url"),
    "DOIT_API_KEY": ("doit", "api_key"),
    "DOIT_TENANT_ID": ("doit", "tenant_id"),
    "DOIT_REQUESTER": ("doit", "requester"),
    "RELAY_DRY_RUN": ("dry_run",),
}

_SECRET_FIELD = re.compile(r"(api_key|token|password|secret)", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of
    ``value``; ``$$`` stands for a literal ``$``. An unset variable without a
    default becomes the empty string."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            found = env.get(name, "")
            if found == "" and default is not None:
                return default
            return found

        return _VAR.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def _apply_env(data: dict[str, Any], env: dict[str, str]) -> None:
    for name, path in ENV_OVERRIDES.items():
        if name not in env or env[name] == "":
            continue
        target = data
        for part in path[:-1]:
            section = target.get(part)
            if not isinstance(section, dict):
                section = {}
                target[part] = section
            target = section
        value: Any = env[name]
        if path == ("dry_run",):
            value = value.strip().lower() in ("1", "true", "yes", "on")
        target[path[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        elif "[" in str(part) or "function-" in str(part):
            continue
        else:
            location += f".{part}" if location else str(part)
    kind = error["type"]
    found = error.get("input")
    if _SECRET_FIELD.search(location):
        # never echo what was given for a credential, even a wrong one
        found = "[redacted]"
    if kind == "extra_forbidden":
        return f"{location}: unknown key (found {found!r})"
    if kind == "missing":
        return f"{location}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "got " in message:
        return f"{location}: {message}"
    return f"{location}: {message[0].lower()}{message[1:]}; got {found!r}"


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    *,
    require_api_key: bool = True,
) -> Config:
    """Read, interpolate, override and validate the configuration.

    Raises ConfigError with one line per problem, each naming the file and
    the field. A missing file is an error only when it was named explicitly
    (``path`` or ``RELAY_CONFIG``); otherwise the embedded defaults apply.
    """
    env = dict(os.environ if env is None else env)
    explicit = path is not None or bool(env.get("RELAY_CONFIG"))
    file = Path(path or env.get("RELAY_CONFIG") or DEFAULT_CONFIG_PATH)

    data: dict[str, Any] = {}
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML: {e}") from e
        except OSError as e:
            raise ConfigError(f"{file}: cannot be read: {e.strerror}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{file}: expected a mapping at the top level; "
                f"got {type(loaded).__name__}"
            )
        data = interpolate(loaded, env)
    elif explicit:
        raise ConfigError(f"{file}: no such file")

    _apply_env(data, env)
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        lines = [f"{file}: {_describe(dict(error))}" for error in e.errors()]
        raise ConfigError("\n".join(lines)) from None
    config.path = str(file)

    if require_api_key and not config.dry_run and not config.doit.api_key:
        raise ConfigError(
            f"{file}: doit.api_key: expected a DoiT API key (set DOIT_API_KEY, "
            "or RELAY_DRY_RUN=1 to run without one); got nothing"
        )
    return config
