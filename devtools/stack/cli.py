"""`fleetpulse stack`: start, stop and inspect the local stack (a dev-tooling subcommand)."""

from __future__ import annotations

import json
import sys
import time

import click

from devtools.stack import control
from devtools.stack.settings import StackSettings


@click.group()
def stack() -> None:
    """The local stack: Kafka, Mosquitto, FerretDB and fake-gcs-server on loopback."""


@stack.command("up")
@click.option("--mqtt-brokers", default=1, show_default=True, type=click.IntRange(1, 16), help="Mosquitto processes (one holds ~20,000 connections).")
def stack_up(mqtt_brokers: int) -> None:
    """Install (first time) and start the servers; wait until each answers a round trip."""
    settings = StackSettings()
    t0 = time.monotonic()
    result = control.up(settings, mqtt_brokers, progress=lambda msg: click.echo(f"  {msg}", err=True))
    state = control.status(settings)
    click.echo(
        f"stack up in {time.monotonic() - t0:.1f}s: kafka {state['kafka']['bootstrap_servers']}, "
        f"mqtt {', '.join(str(b['port']) for b in state['mqtt']['brokers'])}, mongodb {state['mongodb']['uri']}, "
        f"gcs {state['gcs']['endpoint']} (started: {', '.join(result['started']) or 'none, all were running'})"
    )


@stack.command("down")
@click.option("--wipe", is_flag=True, help="Also delete the stack's data (Kafka logs, twins, models).")
def stack_down(wipe: bool) -> None:
    """Stop the servers this stack started (by pid file); keep data unless --wipe."""

    stopped = control.down(StackSettings(), wipe=wipe)
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}{' (data wiped)' if wipe else ''}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print endpoints as JSON (read by other tools).")
def stack_status(as_json: bool) -> None:
    """Show endpoints and whether each server runs."""

    state = control.status(StackSettings())
    if as_json:
        click.echo(json.dumps(state))
        return
    for name in control.SERVICE_NAMES:
        info = state[name]
        where = info.get("bootstrap_servers") or info.get("uri") or info.get("endpoint") or f"{info['host']}:{info['port']}"
        click.echo(f"{name:8} {'running' if info['running'] else 'stopped':8} {where}")
    if not all(state[n]["running"] for n in control.SERVICE_NAMES):
        sys.exit(3)


@stack.command("logs")
@click.argument("service", required=False)
@click.option("-n", "--lines", default=40, show_default=True)
def stack_logs(service: str | None, lines: int) -> None:
    """Print the last lines of a server's log (all servers without SERVICE)."""

    settings = StackSettings()
    names = [s.label for s in control.services(settings)]
    if service is not None and service not in names:
        raise click.BadParameter(f"unknown service {service!r}; one of {', '.join(names)}", param_hint="SERVICE")
    for name in [service] if service else names:
        path = control.log_file(settings, name)
        click.secho(f"==> {name}: {path}", bold=True)
        try:
            click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        except FileNotFoundError:
            click.echo("(no log yet)")
