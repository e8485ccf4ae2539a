"""Where the tests find the checkout, the shared reference data and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
FLEETPULSE = str(Path(sys.executable).with_name("fleetpulse"))
"""The venv's `fleetpulse` console script, for tests that run the CLI as a real subprocess."""
