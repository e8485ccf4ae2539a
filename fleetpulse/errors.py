"""Errors a user can act on; the CLI prints their message as one line and exits 1."""

from __future__ import annotations

from fleetpulse.framing import DecodeError

__all__ = ["BrokerUnavailable", "DecodeError", "FleetPulseError", "SettingsError", "StackError"]


class FleetPulseError(Exception):
    """Base of errors whose message is meant for the user."""


class SettingsError(FleetPulseError):
    """A setting (environment variable or flag) has a bad value."""


class BrokerUnavailable(FleetPulseError):
    """A server (Kafka, MQTT, MongoDB, GCS, the model server) cannot be reached."""


class AccessDenied(FleetPulseError):
    """A server refused this identity: a failed login, or an action its rights (ACLs) do not grant."""


class StackError(FleetPulseError):
    """The local stack could not be installed or started."""
