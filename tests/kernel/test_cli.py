"""The `fleetpulse` command: one entry point, help on every subcommand, clear usage errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetpulse import __version__


def fleetpulse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetpulse.cli", *args], capture_output=True, text=True, timeout=120)


def test_version():
    proc = fleetpulse("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_help_lists_the_stack_and_every_installed_subcommand():
    proc = fleetpulse("--help")
    assert proc.returncode == 0
    assert "stack" in proc.stdout


@pytest.mark.parametrize("sub", ["up", "down", "status", "logs"])
def test_stack_subcommands_have_help(sub):
    proc = fleetpulse("stack", sub, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_every_listed_command_has_help():
    from click.testing import CliRunner

    from fleetpulse.cli import main

    runner = CliRunner()
    names = main.list_commands(None)
    for name in names:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_a_wrong_flag_is_a_usage_error_naming_it():
    proc = fleetpulse("stack", "up", "--mqtt-brokers", "0")
    assert proc.returncode == 2
    assert "--mqtt-brokers" in proc.stderr


def test_unknown_log_service_is_named(stack):
    proc = fleetpulse("stack", "logs", "nosuch")
    assert proc.returncode == 2 and "nosuch" in proc.stderr
