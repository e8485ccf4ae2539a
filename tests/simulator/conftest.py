"""Simulator test fixtures: a private Mosquitto per test (we flood it)."""

from __future__ import annotations

import pytest

from fleetpulse.errors import StackError


@pytest.fixture
def broker(private_service):
    """A Mosquitto of our own: the simulator's fixed topics would reach others' subscribers on the shared one."""
    for attempt in range(3):
        try:
            return private_service("mqtt")
        except StackError:  # seen once: a free port taken between choosing it and binding it
            if attempt == 2:
                raise
