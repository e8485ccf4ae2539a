"""`fleetpulse stack`: start, stop and inspect the local stack (a dev-tooling subcommand)."""

from __future__ import annotations

import json
import sys
import time

import click

from devtools.stack import control
from devtools.stack.credentials import IdentityStore
from devtools.stack.settings import StackSettings


@click.group()
def stack() -> None:
    """The local stack: Kafka, Mosquitto, FerretDB and fake-gcs-server on loopback."""


@stack.command("up")
@click.option("--mqtt-brokers", default=1, show_default=True, type=click.IntRange(1, 16), help="Mosquitto processes (one holds ~20,000 connections).")
@click.option("--secure/--insecure", default=None,
              help="TLS, an identity per car and service, ACLs (`stack credentials`). [default: as last brought up; on for a new stack]")
def stack_up(mqtt_brokers: int, secure: bool | None) -> None:
    """Install (first time) and start the servers; wait until each answers a round trip."""
    settings = StackSettings() if secure is None else StackSettings(secure=secure)
    t0 = time.monotonic()
    result = control.up(settings, mqtt_brokers, progress=lambda msg: click.echo(f"  {msg}", err=True))
    state = control.status(settings)
    mqtt = ", ".join(str(b["port"]) + (f" (TLS {b['tls_port']})" if b["tls_port"] else "") for b in state["mqtt"]["brokers"])
    kafka = state["kafka"]
    click.echo(
        f"stack up in {time.monotonic() - t0:.1f}s, security {'on' if state['secure'] else 'off'}: "
        f"kafka {kafka['bootstrap_servers']} ({kafka['security_protocol']}), mqtt {mqtt}, mongodb {state['mongodb']['uri']}, "
        f"gcs {state['gcs']['endpoint']} (started: {', '.join(result['started']) or 'none, all were running'})"
    )


@stack.command("credentials")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (read by tests and tools).")
def stack_credentials(name: str, as_json: bool) -> None:
    """Print the secret NAME connects with: a service (simulator, bridge, training, transformer), admin, or a car id
    (its identity is created on first use). The one command that prints a secret, for the local stack only."""
    found = control.credentials(StackSettings(), name)
    if as_json:
        click.echo(json.dumps(found))
        return
    for key, value in found.items():
        click.echo(f"{key:12} {value}")


@stack.command("provision")
@click.option("--cars", required=True, type=click.IntRange(min=1), help="Identities for the simulator's cars 0..N-1.")
def stack_provision(cars: int) -> None:
    """Create the identities of N cars at once (what `fleetpulse simulate --cars N` connects as)."""
    from simulator.car_model import car_id

    settings = StackSettings()
    t0 = time.monotonic()
    created = control.provision_cars(settings, [car_id(i) for i in range(cars)], progress=lambda msg: click.echo(f"  {msg}", err=True))
    store = IdentityStore(control.resolved(settings).identities_dir)
    click.echo(f"{len(created):,} car identities created, {cars - len(created):,} existed, "
               f"in {time.monotonic() - t0:.1f}s ({store.cars_file})")


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
