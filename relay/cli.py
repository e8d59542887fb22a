"""The ``relay`` command line.

One group, ``main``, with global options for logging and the configuration
file. Commands share a few helpers: :func:`_load` reads the configuration
(a ConfigError ends the command with exit status 2), :func:`_client` builds
the DoiT client from it, and :class:`CliError` prints one ``error: …`` line
on standard error and exits without a traceback (status 1; 2 for a
configuration problem, :class:`ConfigProblem`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import click

from relay import __version__, logs
from relay.config import (
    PLATFORMS,
    SEVERITIES,
    Config,
    load_config,
    normalise_platform,
    parse_duration,
)
from relay.doit import DoitClient, Ticket, TicketRequest
from relay.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from relay.rules import Rules

# the widest subject shown in a table; --json shows it whole
_SUBJECT_WIDTH = 60


class CliError(click.ClickException):
    """Ends a command with one ``error: <message>`` line on standard error
    and exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ConfigProblem(CliError):
    """The configuration cannot serve this command: exit status 2."""

    exit_code = 2


@dataclass
class CliState:
    """What the global options decided, shared by every command."""

    config_path: str | None
    log_format: logs.LogFormat
    log_level: str


def _load(ctx: click.Context, *, require_api_key: bool = False) -> Config:
    """The configuration named by ``--config`` (or ``RELAY_CONFIG``), or a
    CliError with exit status 2 naming what is wrong."""
    state: CliState = ctx.ensure_object(CliState)
    try:
        return load_config(state.config_path, require_api_key=require_api_key)
    except ConfigError as e:
        raise ConfigProblem(str(e)) from e


@contextmanager
def _client(ctx: click.Context, config: Config | None = None) -> Iterator[DoitClient]:
    """A DoiT client from the configuration (read now unless given); the
    relay's errors raised inside the block become CliErrors."""
    config = config or _load(ctx)
    if not config.doit.api_key:
        raise ConfigProblem(
            "doit.api_key: expected a DoiT API key for this command "
            "(set DOIT_API_KEY); got nothing"
        )
    try:
        with DoitClient.from_config(config.doit) as client:
            yield client
    except RelayError as e:
        raise CliError(str(e)) from e


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _ticket_json(ticket: Ticket) -> dict[str, Any]:
    data = asdict(ticket)
    del data["raw"]
    return data


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [
        max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))
    ]
    lines = [
        "  ".join(
            str(cell).ljust(widths[i]) if i < len(headers) - 1 else str(cell)
            for i, cell in enumerate(row)
        ).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class When(click.ParamType):  # type: ignore[type-arg]
    """A point in time, as milliseconds since the epoch: an ISO 8601
    date-time (UTC when it names no offset) or a duration meaning that long
    ago (``30m``, ``24h``, ``7d``)."""

    name = "when"
    _ago = re.compile(r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*$")

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if self._ago.match(text):
            return int((time.time() - parse_duration(text)) * 1000)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                "expected an ISO date-time such as 2024-05-01T12:00:00Z or a "
                f"duration ago such as 24h; got {text!r}",
                param,
                ctx,
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)


class Platform(click.ParamType):  # type: ignore[type-arg]
    """A DoiT platform id, or an alias such as gcp, aws or azure."""

    name = "platform"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        platform = normalise_platform(str(value))
        if platform not in PLATFORMS:
            self.fail(
                f"expected one of {', '.join(PLATFORMS)} or an alias "
                f"(gcp, aws, azure); got {value!r}",
                param,
                ctx,
            )
        return platform


# -- the group -------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relay")
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    envvar="RELAY_LOG_FORMAT",
    help="Logs on standard error as JSON lines or as text.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="RELAY_LOG_LEVEL",
    help="The least severe log level shown.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The YAML configuration (default: $RELAY_CONFIG or config/relay.yaml).",
)
@click.pass_context
def main(
    ctx: click.Context,
    log_format: logs.LogFormat,
    log_level: str,
    config_path: str | None,
) -> None:
    """Turn monitoring alerts into DoiT support tickets."""
    logs.configure(log_format, log_level)
    ctx.obj = CliState(
        config_path=config_path, log_format=log_format, log_level=log_level
    )


# -- relay emulator --------------------------------------------------------


@main.command()
@click.option(
    "--bind",
    default="127.0.0.1:8081",
    show_default=True,
    help="HOST:PORT to listen on.",
)
@click.option(
    "--api-key",
    default=None,
    envvar="RELAY_EMULATOR_API_KEY",
    help="Accept only this bearer key (default: any key).",
)
def emulator(bind: str, api_key: str | None) -> None:
    """Run the DoiT API emulator in the foreground."""
    from relay.emulator import serve

    def ready(url: str) -> None:
        click.echo(f"DoiT API emulator listening on {url}")
        click.echo(f"point the relay at it with DOIT_API_URL={url}")

    try:
        serve(bind, api_key, on_ready=ready)
    except ValueError as e:
        raise ConfigProblem(str(e)) from e
    except OSError as e:
        raise CliError(f"cannot listen on {bind}: {e.strerror or e}") from e


# -- relay tickets ---------------------------------------------------------


@main.group()
def tickets() -> None:
    """List and create DoiT support tickets by hand."""


@tickets.command("list")
@click.option("--filter", "filter_", help="The API's filter, e.g. severity:high.")
@click.option("--since", type=When(), help="Created at or after: ISO date-time or 24h.")
@click.option("--until", type=When(), help="Created at or before: ISO date-time or 1h.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="At most this many tickets, newest first; 0 for all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def tickets_list(
    ctx: click.Context,
    filter_: str | None,
    since: int | None,
    until: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, newest first."""
    with _client(ctx) as client:
        found = client.list_tickets(
            filter=filter_, since_ms=since, until_ms=until, limit=limit or None
        )

    if as_json:
        _echo_json([_ticket_json(t) for t in found])
        return
    if not found:
        click.echo("no tickets")
        return

    rows = []
    for ticket in found:
        created = ticket.created_at()
        rows.append(
            [
                ticket.id,
                created.strftime("%Y-%m-%d %H:%M") if created else "-",
                ticket.severity or "-",
                ticket.status or "-",
                ticket.platform or "-",
                _shorten(ticket.subject, _SUBJECT_WIDTH),
            ]
        )
    headers = ["ID", "CREATED (UTC)", "SEVERITY", "STATUS", "PLATFORM", "SUBJECT"]
    click.echo(_table(headers, rows))


@tickets.command("create")
@click.option("--subject", required=True, help="The ticket's subject line.")
@click.option("--body", required=True, help="The ticket's text.")
@click.option(
    "--severity",
    type=click.Choice(SEVERITIES),
    required=True,
    help="low, normal, high or urgent.",
)
@click.option("--platform", type=Platform(), required=True, help="e.g. gcp or aws.")
@click.option(
    "--category", required=True, help="e.g. containers___kubernetes__google_gke."
)
@click.option(
    "--requester",
    default=None,
    help="Email to notify (default: doit.requester; needed with a service key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def tickets_create(
    ctx: click.Context,
    subject: str,
    body: str,
    severity: str,
    platform: str,
    category: str,
    requester: str | None,
    as_json: bool,
) -> None:
    """Open one ticket. It cannot be deleted afterwards."""
    config = _load(ctx)
    if requester is None:
        requester = config.doit.requester
    with _client(ctx, config) as client:
        ticket = client.create_ticket(
            TicketRequest(
                subject=subject,
                body=body,
                severity=severity,
                platform=platform,
                category=category,
                requester=requester,
            )
        )

    if as_json:
        _echo_json(_ticket_json(ticket))
        return
    click.echo(f"created ticket {ticket.id} ({ticket.severity}, {ticket.status})")
    if ticket.url:
        click.echo(ticket.url)


# -- relay check -----------------------------------------------------------


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the configuration, rules and templates; exit non-zero on any
    problem."""
    from relay.app import templates_dir

    config = _load(ctx, require_api_key=True)
    rules = _check_rules(config)
    click.echo(
        f"{config.path}: ok ({len(rules)} rules, templates in "
        f"{templates_dir(config)}, store {config.store.url.split('@')[-1]})"
    )


# -- relay preview ---------------------------------------------------------


@main.command()
@click.argument(
    "source", type=click.Choice(["alertmanager", "cloudwatch", "cloud-monitoring"])
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def preview(ctx: click.Context, source: str, file: str, as_json: bool) -> None:
    """Show what the relay would do with a payload: the alerts, the rule
    that matched and why the others did not, the dedup key and the ticket.
    Nothing is stored, fetched or sent."""
    from pathlib import Path

    from relay.preview import format_text
    from relay.preview import preview as run_preview

    config = _load(ctx)
    try:
        result = run_preview(config, source, Path(file))
    except RelayError as e:
        raise CliError(str(e)) from e
    if as_json:
        _echo_json(result)
    else:
        click.echo(format_text(result), nl=False)


# -- relay serve and relay worker ------------------------------------------


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the production server (gunicorn) with delivery workers."""
    from relay.server import serve as run_server

    config = _load(ctx, require_api_key=True)
    _check_rules(config)
    state: CliState = ctx.ensure_object(CliState)
    if state.config_path:
        config.path = state.config_path
    run_server(config, state.log_format)


@main.command()
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads.")
@click.option("--once", is_flag=True, help="Deliver what is due, then exit.")
@click.pass_context
def worker(ctx: click.Context, threads: int | None, once: bool) -> None:
    """Run delivery workers alone, without the web server."""
    import signal

    from relay.app import Relay
    from relay.delivery import Delivery, WorkerPool, make_client

    config = _load(ctx, require_api_key=True)
    _check_rules(config)
    relay = Relay.build(config)
    delivery = Delivery(relay, make_client(relay))
    if once:
        try:
            done = delivery.drain()
        except RelayError as e:
            raise CliError(str(e)) from e
        click.echo(f"delivered {done} job(s)")
        return
    pool = WorkerPool(delivery, threads or max(1, config.delivery.workers)).start()
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    try:
        while not stopped:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    pool.stop()


def _check_rules(config: Config) -> Rules:
    """The compiled rules; refuse rules or templates that would fail at run
    time (exit status 2, naming the file, the rule and the field)."""
    from relay.app import templates_dir
    from relay.rules import Rules

    try:
        rules = Rules(config, templates_dir(config))
    except ConfigError as e:
        raise ConfigProblem(str(e)) from e
    problems = rules.renderer.check_templates(rules.template_names())
    if problems:
        raise ConfigProblem("\n".join(problems))
    return rules


# -- relay queue -----------------------------------------------------------


def _open_store(ctx: click.Context) -> Any:
    from relay.store import open_store

    config = _load(ctx)
    try:
        return open_store(config.store.url, config.store.prefix)
    except RelayError as e:
        raise CliError(str(e)) from e


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many jobs of each queue.",
)
@click.pass_context
def queue(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Show pending, scheduled and dead-lettered delivery jobs."""
    if ctx.invoked_subcommand is not None:
        return
    store = _open_store(ctx)
    now = time.time()
    try:
        stats = store.stats(now)
        listing = {
            name: store.jobs(name, limit) for name in ("pending", "scheduled", "dead")
        }
    except RelayError as e:
        raise CliError(str(e)) from e
    finally:
        store.close()

    if as_json:
        _echo_json(
            {
                "stats": asdict(stats),
                **{
                    name: [_job_json(job, now) for job in jobs]
                    for name, jobs in listing.items()
                },
            }
        )
        return
    click.echo(
        f"pending {stats.pending} (leased {stats.leased}), scheduled "
        f"{stats.scheduled}, dead {stats.dead}; oldest pending "
        f"{_age(stats.oldest_pending_age)}"
    )
    for name, jobs in listing.items():
        if not jobs:
            continue
        click.echo(f"\n{name.upper()}")
        rows = [
            [
                job.id,
                _age(now - job.enqueued_at),
                str(job.attempts),
                _age(job.next_at - now) if name == "scheduled" else "-",
                job.payload.get("route", {}).get("rule", "-"),
                _shorten(job.last_error or "-", 60),
            ]
            for job in jobs
        ]
        headers = ["JOB", "AGE", "ATTEMPTS", "DUE IN", "RULE", "LAST ERROR"]
        click.echo(_table(headers, rows))


def _job_json(job: Any, now: float) -> dict[str, Any]:
    return {
        "id": job.id,
        "key": job.key,
        "age_seconds": round(now - job.enqueued_at, 3),
        "attempts": job.attempts,
        "next_at": job.next_at,
        "last_error": job.last_error,
        "rule": job.payload.get("route", {}).get("rule"),
        "alerts": [a.get("name") for a in job.payload.get("alerts", [])],
    }


@queue.command("retry")
@click.argument("job_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Retry every dead letter.")
@click.pass_context
def queue_retry(ctx: click.Context, job_id: str | None, all_: bool) -> None:
    """Send one dead letter (or all, with --all) back to the queue."""
    if bool(job_id) == all_:
        raise CliError("name one JOB_ID or pass --all")
    store = _open_store(ctx)
    try:
        moved = store.requeue_dead(None if all_ else job_id, time.time())
    except RelayError as e:
        raise CliError(str(e)) from e
    finally:
        store.close()
    if job_id and not moved:
        raise CliError(f"no dead letter with id {job_id!r}")
    click.echo(f"requeued {moved} job(s)")


@queue.command("purge")
@click.argument("which", type=click.Choice(["pending", "scheduled", "dead"]))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def queue_purge(ctx: click.Context, which: str, yes: bool) -> None:
    """Delete every job of one queue (their tickets will never be created)."""
    if not yes:
        click.confirm(f"delete every {which} job?", abort=True)
    store = _open_store(ctx)
    try:
        deleted = store.purge(which)
    except RelayError as e:
        raise CliError(str(e)) from e
    finally:
        store.close()
    click.echo(f"deleted {deleted} {which} job(s)")


if __name__ == "__main__":
    main()
