"""The physical range of every cardata reading: the one definition of an impossible reading.

The bridge dead-letters a record with a reading outside its range (or NaN, or infinite) and the
transformer guards with the same bounds, so no model, twin or database ever sees one. The bounds
come from the car model (simulator/car_model.py, failures.py, profiles.py), read rather than
imported, so the kernel stays free of the simulator: each is the widest value a healthy or failing
car of any fleet profile reaches, with sensor noise, widened by a margin to what the quantity could
physically be on a road car. A value beyond that is a broken sensor or a broken encoder, not a car
state a detector should learn or score. The original CSV (shared/reference/car-sensor-data.csv)
breaks them in 9,410 of its 10,000 rows, through the two bugs car_model.py fixes (coolant accumulates
to 1,976 C, charge falls to -29.9): a CSV replay reaches the dead-letter topic, not the models.

| reading                        | car model                                                    | bound         |
|--------------------------------|--------------------------------------------------------------|---------------|
| coolant_temp (C)               | 0.8 (intake + U(0, 20)) + 0.1..0.5 x current: about -25..100 | -60..180      |
| intake_air_temp (C)            | ambient -20..35, random walk, +25 K warm-up: about -25..60   | -60..100      |
| intake_air_flow_speed          | 4 x speed: 0..156                                            | 0..400        |
| battery_percentage (fraction)  | charge 0..1                                                  | 0..1          |
| battery_voltage (V)            | 180 + 80 x charge - sag x current: about 120..260            | 0..400        |
| current_draw (A)               | throttle x (265 - V0) / (1 - sag x throttle): 0..142         | -200..500     |
| speed (m/s)                    | 0..38.9 (full throttle)                                      | 0..100        |
| engine_vibration_amplitude     | 100..150 x speed: 0..5,835                                   | 0..15,000     |
| throttle_pos (fraction)        | 0..1                                                         | 0..1          |
| tire_pressure_* (psi)          | 30..34 healthy, 20..24 failing                               | 0..100        |
| accelerometer_*_value          | 0..1, 2..3 on a bump, 3..7 failing                           | 0..50         |
| control_unit_firmware          | a version: 1000 or 2000                                      | 0..65,535     |
"""

from __future__ import annotations

import numpy as np

from fleetpulse.contract import SENSOR_FIELDS
from fleetpulse.topics import DLQ_NON_FINITE, DLQ_OUT_OF_RANGE

RANGES: dict[str, tuple[float, float]] = {
    "coolant_temp": (-60.0, 180.0),
    "intake_air_temp": (-60.0, 100.0),
    "intake_air_flow_speed": (0.0, 400.0),
    "battery_percentage": (0.0, 1.0),
    "battery_voltage": (0.0, 400.0),
    "current_draw": (-200.0, 500.0),
    "speed": (0.0, 100.0),
    "engine_vibration_amplitude": (0.0, 15_000.0),
    "throttle_pos": (0.0, 1.0),
    **{f"tire_pressure_{w}": (0.0, 100.0) for w in ("1_1", "1_2", "2_1", "2_2")},
    **{f"accelerometer_{w}_value": (0.0, 50.0) for w in ("1_1", "1_2", "2_1", "2_2")},
    "control_unit_firmware": (0.0, 65_535.0),
}
"""Field -> (lowest, highest) physically possible value, inclusive."""

LOW = np.array([RANGES[f][0] for f in SENSOR_FIELDS], dtype=np.float32)
HIGH = np.array([RANGES[f][1] for f in SENSOR_FIELDS], dtype=np.float32)
"""The bounds as rows in schema order, for vectorised checks of [N, 18] feature matrices."""


def implausible(values: np.ndarray) -> np.ndarray:
    """Bool [N]: rows with a reading that is NaN, infinite or outside its physical range."""
    # NaN compares False both ways, so "inside" is False for it: one test covers all three.
    return ~((values >= LOW) & (values <= HIGH)).all(axis=1)


def problem(row: np.ndarray) -> tuple[str, str]:
    """(dead-letter kind, reason) for a row ``implausible`` flagged, naming its first bad reading."""
    for name, value, low, high in zip(SENSOR_FIELDS, row.tolist(), LOW.tolist(), HIGH.tolist()):
        if not np.isfinite(value):
            return DLQ_NON_FINITE, f"{name} is {value}"
        if not low <= value <= high:
            return DLQ_OUT_OF_RANGE, f"{name} = {value:g} is outside its physical range {low:g}..{high:g}"
    raise ValueError("every reading of this row is plausible")
