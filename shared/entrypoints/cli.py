"""``python -m shared``: run the local stack or one of its parts, and operator commands."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import bootstrap
from ..config import SettingsError
from ..domain.model import Channel
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
    reconcile: bool = typer.Option(True, help="Also run the reconciliation timer (one worker per stack should)."),
) -> None:
    """Run only the dispatcher worker (and the reconciliation timer)."""
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
    """Stop sending to a recipient."""
    from ..domain.model import Suppression

    _setup(quiet=True)
    svc = bootstrap.services()
    added = svc.suppressions.add(Suppression(channel=channel, address=recipient, reason=f"Operator: {reason}", created_at=svc.clock.now()))
    console.print("added" if added else "already on the list")


@suppressions_cli.command("remove")
def suppressions_remove(channel: Channel, recipient: str) -> None:
    """Allow sending to a recipient again."""
    _setup(quiet=True)
    removed = bootstrap.services().suppressions.remove(channel, recipient)
    console.print("removed" if removed else "not on the list")
    if not removed:
        raise typer.Exit(1)


@cli.command("hash-recipient")
def hash_recipient(address: str = typer.Argument(..., help="An email address or phone number, in any spelling.")) -> None:
    """The keyed hash telemetry knows this recipient by (PII_HASH_KEY), to search logs and traces."""
    _setup(quiet=True)
    from ..service import observability

    print(observability.hash_recipient(address))


def main() -> None:
    cli()
