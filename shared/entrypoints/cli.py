"""``python -m shared``: run the local stack or one of its parts, and operator commands."""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import bootstrap
from ..config import SettingsError
from ..domain.commands import DeadLetterFilter, PurgeDeadLetters, ReplayDeadLetters
from ..domain.model import Channel
from ..service import operator
from . import local

cli = typer.Typer(help="Notification service: local stack and operator tools.", no_args_is_help=True, add_completion=False)
console = Console()


def _setup(verbose: bool = False, quiet: bool = False, role: str = "cli") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # The Azure SDK logs every request at INFO; that is noise on the local stack.
    logging.getLogger("azure").setLevel(logging.WARNING)
    local.load_local_settings()
    try:
        bootstrap.services(role)
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@cli.command()
def run(
    port: int = typer.Option(7071, help="Port of the HTTP API."),
    emulator_port: int = typer.Option(7072, help="Port of the ACS emulator."),
    data_dir: Optional[str] = typer.Option(None, help="Where the embedded queue and ledger live (default .data)."),
    report_delay_ms: Optional[int] = typer.Option(None, help="How long the emulator waits before a delivery report."),
    workers: int = typer.Option(1, min=1, max=16, help="Dispatcher processes consuming the queue."),
) -> None:
    """Start the whole service locally: API, dispatcher worker(s) and ACS emulator."""
    local.load_local_settings()
    raise typer.Exit(
        local.run_stack(
            api_port=port, emulator_port=emulator_port, data_dir=data_dir, report_delay_ms=report_delay_ms, workers=workers
        )
    )


@cli.command()
def api(host: str = "127.0.0.1", port: int = 7071) -> None:
    """Serve only the HTTP API."""
    _setup(role="api")
    local.run_api(host, port)


@cli.command()
def worker(
    reconcile: bool = typer.Option(
        True, help="Also run the reconciliation timer and the status event relay (one worker per stack should)."
    ),
) -> None:
    """Run only the dispatcher worker (and the reconciliation timer and status event relay)."""
    _setup(role="worker")
    local.run_worker(reconcile=reconcile)


@cli.command()
def reconciliation(
    hours: float = typer.Option(24.0, help="Window length, ending now."),
    channel: Optional[Channel] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Sent against delivered for notifications accepted in the window."""
    _setup()
    from ..service.handlers import reconciliation_report

    end = datetime.now(timezone.utc)
    report = reconciliation_report(ledger=bootstrap.services().ledger, start=end - timedelta(hours=hours), end=end, channel=channel)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"Notifications accepted {report['from']} .. {report['to']}")
    rows = list(report["channels"].items()) + [("total", report["total"])]
    keys = list(report["total"].keys())
    table.add_column("status")
    for name, _ in rows:
        table.add_column(name, justify="right")
    for key in keys:
        table.add_row(key, *(f"{figures[key]:.2%}" if key == "failureRate" else str(figures[key]) for _, figures in rows))
    console.print(table)


@cli.command()
def enqueue(
    request: Path = typer.Argument(..., exists=True, dir_okay=False, help="A JSON file: the body of POST /api/notifications."),
    idempotency_key: Optional[str] = typer.Option(None, help="The Idempotency-Key application property (default: the message id)."),
    correlation_id: Optional[str] = typer.Option(None, help="The message's correlation id, echoed on its status events."),
    prop: Optional[List[str]] = typer.Option(None, "--property", help="An application property, name=value; repeatable."),
    message_id: Optional[str] = typer.Option(None, help="The message id (default: a new UUID)."),
) -> None:
    """Put a notification request on the requests queue (REQUESTS_QUEUE), as an app would on Service Bus."""
    from ..service.ports import OutgoingMessage
    from .triggers import IDEMPOTENCY_KEY_PROPERTY

    _setup(quiet=True)
    try:
        body = json.loads(request.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        console.print(f"[red]{request} is not JSON: {exc}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(body, dict):
        console.print(f"[red]{request} must hold a JSON object (a notification request)[/red]")
        raise typer.Exit(2)
    properties: dict[str, str] = {}
    for item in prop or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            console.print(f"[red]--property takes name=value, got {item!r}[/red]")
            raise typer.Exit(2)
        properties[name] = value
    if idempotency_key is not None:
        properties[IDEMPOTENCY_KEY_PROPERTY] = idempotency_key
    svc = bootstrap.services()
    message = OutgoingMessage(
        body=body, message_id=message_id or str(uuid.uuid4()), application_properties=properties, correlation_id=correlation_id
    )
    svc.requests_queue.send(message)
    print(json.dumps({"queue": svc.settings.requests_queue, "messageId": message.message_id}))


suppressions_cli = typer.Typer(help="The suppression list: recipients the service will not send to again.", no_args_is_help=True)
cli.add_typer(suppressions_cli, name="suppressions")


@suppressions_cli.command("list")
def suppressions_list(
    channel: Optional[Channel] = typer.Option(None),
    limit: int = typer.Option(100, min=1, max=10000),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Entries, newest first."""
    _setup(quiet=True)
    entries = bootstrap.services().suppressions.list(channel=channel, limit=limit)
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(title=f"{len(entries)} suppressed recipient(s)")
    for column in ("channel", "recipient", "reason", "since", "notification"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.channel.value, e.address, e.reason, e.created_at.isoformat(timespec="seconds"), e.notification_id or "")
    console.print(table)


@suppressions_cli.command("add")
def suppressions_add(
    channel: Channel,
    recipient: str,
    reason: str = typer.Option(..., help="Why, for the next operator."),
) -> None:
    """Stop sending to a recipient (recorded in the audit trail)."""
    _setup(quiet=True)
    svc = bootstrap.services()
    added = operator.add_suppression(
        channel, recipient, reason, actor=_actor(), suppressions=svc.suppressions, ledger=svc.ledger, clock=svc.clock
    )
    console.print("added" if added else "already on the list")


@suppressions_cli.command("remove")
def suppressions_remove(channel: Channel, recipient: str) -> None:
    """Allow sending to a recipient again (recorded in the audit trail)."""
    _setup(quiet=True)
    svc = bootstrap.services()
    removed = operator.remove_suppression(
        channel, recipient, actor=_actor(), suppressions=svc.suppressions, ledger=svc.ledger, clock=svc.clock
    )
    console.print("removed" if removed else "not on the list")
    if not removed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ dead letters

dlq_cli = typer.Typer(
    help="Dead letters: what could not be sent and why; replay them safely, or purge them.", no_args_is_help=True
)
cli.add_typer(dlq_cli, name="dlq")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

ChannelOption = typer.Option(None, "--channel", help="Only this channel.")
ReasonOption = typer.Option(None, "--reason", help="Only this dead-letter reason, e.g. MaxAttemptsExceeded.")
SinceOption = typer.Option(None, "--since", help="Dead-lettered since: an ISO-8601 time, or a duration ago (30m, 2h, 1d).")
LimitOption = typer.Option(100, "--limit", min=1, max=10000, help="At most this many, newest first.")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
IdsArgument = typer.Argument(None, metavar="[ID]...", help="Dead letters by id (else by the filters).")
AllOption = typer.Option(False, "--all", help="Every dead letter (up to --limit).")


def _actor() -> str:
    """Who runs the command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return f"cli:uid-{os.getuid()}"


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    match = _DURATION.match(value.strip().lower())
    if match:
        return datetime.now(timezone.utc) - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("an ISO-8601 time or a duration such as 30m, 2h, 1d", param_hint="--since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _filter(channel: Channel | None, reason: str | None, since: str | None, limit: int) -> DeadLetterFilter:
    return DeadLetterFilter(channel=channel, reason=reason, since=_since(since), limit=limit)


def _dead_letter_table(found: list[operator.DeadLetter], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "channel", "reason", "dead-lettered", "source", "replays", "description"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(
            d.id, d.channel.value if d.channel else "?", d.reason, d.dead_lettered_at.isoformat(timespec="seconds"),
            d.source, str(d.replay_count), d.description[:120],
        )
    return table


@dlq_cli.command("list")
def dlq_list(
    channel: Optional[Channel] = ChannelOption,
    reason: Optional[str] = ReasonOption,
    since: Optional[str] = SinceOption,
    limit: int = LimitOption,
    as_json: bool = JsonOption,
) -> None:
    """Dead letters, newest first: the ledger's and the queue's, each notification once."""
    _setup(quiet=True)
    svc = bootstrap.services()
    found = operator.list_dead_letters(_filter(channel, reason, since, limit), ledger=svc.ledger, dead_letters=svc.queue)
    if as_json:
        print(json.dumps([d.summary() for d in found], indent=2))
        return
    console.print(_dead_letter_table(found, f"{len(found)} dead letter(s)"))


@dlq_cli.command("show")
def dlq_show(dead_letter_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JsonOption) -> None:
    """One dead letter: its queue message(s), reason and description, and the notification's history."""
    from .api import notification_view

    _setup(quiet=True)
    svc = bootstrap.services()
    found = operator.get_dead_letter(dead_letter_id, ledger=svc.ledger, dead_letters=svc.queue)
    if found is None:
        console.print(f"[red]No dead letter {dead_letter_id}.[/red]")
        raise typer.Exit(1)
    view = found.summary() | {
        "queueMessages": [
            {"sequenceNumber": m.sequence_number, "messageId": m.message_id, "body": m.body,
             "deliveryCount": m.delivery_count, "reason": m.reason, "description": m.description}
            for m in found.queue_messages
        ],
        "notification": notification_view(found.notification) if found.notification else None,
    }
    if as_json:
        print(json.dumps(view, indent=2))
        return
    console.print(f"[bold]{found.id}[/bold] ({found.source}, {found.channel.value if found.channel else 'unknown channel'})")
    console.print(f"reason: [red]{found.reason}[/red]\n{found.description}")
    console.print(f"dead-lettered {found.dead_lettered_at.isoformat(timespec='seconds')}, replayed {found.replay_count} time(s)")
    for m in view["queueMessages"]:
        console.print(f"queue message {m['sequenceNumber']} ({m['messageId']}): {json.dumps(m['body'])}")
    if found.notification is not None:
        n = view["notification"]
        console.print(f"notification {n['id']}: {n['status']}, {n['attempts']} attempt(s)")
        history = Table(title="history")
        for column in ("at", "event", "detail"):
            history.add_column(column, overflow="fold")
        for h in n["history"]:
            history.add_row(h["at"], h["event"], json.dumps(h.get("detail", {}))[:160])
        console.print(history)


class _Pace:
    """At most ``rate`` replays a second, evenly spaced (the queue and ACS quotas see a trickle)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def __call__(self) -> None:
        if self.interval:
            delay = self.next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next = max(self.next, time.monotonic() - self.interval) + self.interval


def _require_selection(ids: list[str], everything: bool, *filters: object) -> None:
    if not ids and not everything and all(f is None for f in filters):
        console.print("[red]Name dead letters by id, or choose them with --channel/--reason/--since, or pass --all.[/red]")
        raise typer.Exit(2)


def _print_result(result: operator.OperatorResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.summary(), indent=2))
        return
    table = Table(title=f"{'dry run: ' if result.dry_run else ''}{result.action} (audit {result.audit_id})")
    for column in ("id", "outcome", "reason"):
        table.add_column(column, overflow="fold")
    for o in result.outcomes:
        table.add_row(o["id"], o["outcome"], o.get("reason", ""))
    console.print(table)
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(result.counts().items())) or "nothing selected"
    console.print(f"[bold]{counts}[/bold]")


@dlq_cli.command("replay")
def dlq_replay(
    ids: Optional[list[str]] = IdsArgument,
    channel: Optional[Channel] = ChannelOption,
    reason: Optional[str] = ReasonOption,
    since: Optional[str] = SinceOption,
    limit: int = LimitOption,
    everything: bool = AllOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be replayed; change nothing."),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.1, help="At most this many replays per second."),
    as_json: bool = JsonOption,
) -> None:
    """Send dead letters again. A notification already sent or final is skipped, and so is a
    recipient suppressed or opted out since; each replay starts a fresh retry budget."""
    _require_selection(ids or [], everything, channel, reason, since)
    _setup(quiet=True)
    svc = bootstrap.services()
    cmd = ReplayDeadLetters(actor=_actor(), ids=tuple(ids or ()), filter=_filter(channel, reason, since, limit), dry_run=dry_run)
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=as_json, transient=True,
    ) as progress:
        task = progress.add_task("replay", total=None)
        result = operator.replay_dead_letters(
            cmd,
            ledger=svc.ledger,
            dead_letters=svc.queue,
            publisher=svc.publisher,
            suppressions=svc.suppressions,
            clock=svc.clock,
            on_targets=lambda total: progress.update(task, total=total),
            before_each=_Pace(rate),
            after_each=lambda _: progress.advance(task),
        )
    _print_result(result, as_json)


@dlq_cli.command("purge")
def dlq_purge(
    ids: Optional[list[str]] = IdsArgument,
    channel: Optional[Channel] = ChannelOption,
    reason: Optional[str] = ReasonOption,
    since: Optional[str] = SinceOption,
    limit: int = LimitOption,
    everything: bool = AllOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = JsonOption,
) -> None:
    """Give up on dead letters: their notifications end failed (DeadLetterPurged) and their queue
    messages are deleted. Asks first."""
    _require_selection(ids or [], everything, channel, reason, since)
    _setup(quiet=True)
    svc = bootstrap.services()
    selection = _filter(channel, reason, since, limit)
    if not yes:
        preview = operator.purge_dead_letters(
            PurgeDeadLetters(actor=_actor(), ids=tuple(ids or ()), filter=selection, dry_run=True),
            ledger=svc.ledger, dead_letters=svc.queue, clock=svc.clock,
        )
        count = preview.counts().get("wouldPurge", 0)
        if count == 0:
            console.print("No dead letters match; nothing to purge.")
            return
        typer.confirm(f"Purge {count} dead letter(s)? Their notifications will not be sent", abort=True)
    result = operator.purge_dead_letters(
        PurgeDeadLetters(actor=_actor(), ids=tuple(ids or ()), filter=selection),
        ledger=svc.ledger, dead_letters=svc.queue, clock=svc.clock,
    )
    _print_result(result, as_json)


@dlq_cli.command("audit")
def dlq_audit(
    since: Optional[str] = SinceOption,
    limit: int = typer.Option(20, "--limit", min=1, max=1000),
    as_json: bool = JsonOption,
) -> None:
    """The audit trail: every operator action, newest first."""
    _setup(quiet=True)
    entries = bootstrap.services().ledger.audit_entries(since=_since(since), limit=limit)
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(title=f"{len(entries)} operator action(s)")
    for column in ("at", "actor", "action", "filter", "outcomes", "id"):
        table.add_column(column, overflow="fold")
    for e in entries:
        counts: dict[str, int] = {}
        for o in e.outcomes:
            counts[o["outcome"]] = counts.get(o["outcome"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        state = ("dry run; " if e.dry_run else "") + ("" if e.finished else "interrupted; ")
        table.add_row(e.at.isoformat(timespec="seconds"), e.actor, e.action, json.dumps(e.filter), state + summary, e.id)
    console.print(table)


@cli.command("hash-recipient")
def hash_recipient(address: str = typer.Argument(..., help="An email address or phone number, in any spelling.")) -> None:
    """The keyed hash telemetry knows this recipient by (PII_HASH_KEY), to search logs and traces."""
    _setup(quiet=True)
    from ..service import observability

    print(observability.hash_recipient(address))


def main() -> None:
    cli()
