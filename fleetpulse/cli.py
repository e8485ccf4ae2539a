"""The `fleetpulse` command. Subcommands of the deployables are found through entry points
(group ``fleetpulse.commands``) so the kernel never imports a deployable, and `--help` stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points

import click

from fleetpulse import __version__
from fleetpulse.errors import FleetPulseError


class FleetPulseGroup(click.Group):
    """Loads entry-point subcommands lazily and turns FleetPulseError into one line and exit 1."""

    def _plugins(self) -> dict:
        found = {}
        for ep in entry_points(group="fleetpulse.commands"):
            module = ep.value.split(":", 1)[0]
            try:
                if importlib.util.find_spec(module) is not None:
                    found[ep.name] = ep
            except ModuleNotFoundError:
                continue
        return found

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and (ep := self._plugins().get(name)) is not None:
            cmd = ep.load()
        return cmd

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FleetPulseError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=FleetPulseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetpulse")
def main() -> None:
    """FleetPulse: predictive maintenance for connected cars, streamed end to end."""


if __name__ == "__main__":
    main()
