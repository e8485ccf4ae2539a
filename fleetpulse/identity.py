"""Per-car MQTT credentials from a provisioning file: one ``car_id<TAB>password`` line per car.

The local stack writes it (`fleetpulse stack provision --cars N`, or a car's first `stack credentials`);
a fleet would mount the same format from a Secret. Read once at start-up: 100,000 cars is a ~3 MB file
and a dict built in well under a second. A car connects with its id as both username and client id.
"""

from __future__ import annotations

from pathlib import Path

from fleetpulse.errors import SettingsError


def read_car_credentials(path: Path) -> dict[str, str]:
    """Car id -> password. Raises SettingsError naming the file and line when it is unreadable or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"car credentials file {path}: {exc.strerror or exc}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        car, sep, password = line.partition("\t")
        if not (sep and car and password) or "\t" in password:
            raise SettingsError(f"car credentials file {path}, line {number}: expected 'car_id<TAB>password'")
        found[car] = password
    return found
