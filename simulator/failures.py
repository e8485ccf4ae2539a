"""Which cars fail, when, and how each failure mode shows in the sensors.

Signatures (from the original CarModel, the one missing there added), applied by car_model.step:

| mode                  | sensors moved                     | signature at full severity                          |
|-----------------------|-----------------------------------|-----------------------------------------------------|
| tire_pressure_loss    | one tyre_pressure_W_S             | 20-24 psi instead of 30-34                          |
| shock_absorber        | one accelerometer_W_S_value       | 3-4 instead of 0-1; 5-7 instead of 2-3 on a bump     |
| drive_shaft_wear      | engine_vibration_amplitude        | 150 x speed instead of 100 x speed                  |
| overheating           | coolant_temp                      | + 0.5 x current draw instead of + 0.1 x             |
| outdated_firmware     | control_unit_firmware             | 1000 instead of 2000                                |
| battery_degradation   | battery_voltage (and current_draw)| sags by 0.4 V per A of draw below 180 + 80 x charge |

Overheating and battery degradation depend on current draw, so they show while the car is under load
(not while it stands at a light or charges); the trip model keeps cars driving most of the time.

Plan: exactly round(F x cars) cars fail, chosen by the seed, each with one mode drawn uniformly and
an onset uniformly in [10%, 90%) of the car's events in the run, so a model sees healthy history for
every car first and every failure lasts at least a tenth of the run. Failures are sticky. With a
ramp, severity climbs linearly from the onset over ``ramp_s`` simulated seconds (firmware excepted:
a version is not gradual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpulse.ground_truth import FAILURE_MODES, HEALTHY

MODE_INDEX = {mode: i + 1 for i, mode in enumerate(FAILURE_MODES)}  # 0 = healthy
NO_FAILURE = np.iinfo(np.int64).max

ONSET_WINDOW = (0.10, 0.90)
"""Onsets fall in this fraction of a car's events: healthy history first, and time to be seen."""

# Signature constants, in the units of the sensors.
FAILED_TIRE_PSI = (20, 24)
HEALTHY_TIRE_PSI = (30, 34)
FAILED_SHOCK = (3.0, 4.0)
FAILED_SHOCK_BUMP = (5.0, 7.0)
WORN_SHAFT_VIBRATION = 150.0
HEALTHY_VIBRATION = 100.0
OVERHEAT_COOLANT_PER_AMP = 0.5
HEALTHY_COOLANT_PER_AMP = 0.1
OUTDATED_FIRMWARE = 1000
CURRENT_FIRMWARE = 2000
DEGRADED_SAG_V_PER_A = 0.4


@dataclass(frozen=True)
class FailurePlan:
    """Per car: mode index (0 healthy), onset event number, and the affected wheel (0-3)."""

    mode: np.ndarray  # int8 [N]
    onset_seq: np.ndarray  # int64 [N]; NO_FAILURE for healthy cars
    wheel: np.ndarray  # int8 [N]

    def mode_name(self, car: int) -> str:
        m = int(self.mode[car])
        return HEALTHY if m == 0 else FAILURE_MODES[m - 1]

    def failing_counts(self) -> dict[str, int]:
        counts = np.bincount(self.mode, minlength=len(FAILURE_MODES) + 1)
        return {mode: int(counts[i + 1]) for i, mode in enumerate(FAILURE_MODES)}

    def slice(self, lo: int, hi: int) -> "FailurePlan":
        return FailurePlan(self.mode[lo:hi], self.onset_seq[lo:hi], self.wheel[lo:hi])


def plan_failures(n_cars: int, events_per_car: int, fraction: float, seed: int) -> FailurePlan:
    """Draw the fleet's failures; depends only on the arguments, never on timing or worker split."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED_FA11])))
    n_fail = int(round(fraction * n_cars))
    failing = rng.permutation(n_cars)[:n_fail]
    modes = rng.integers(1, len(FAILURE_MODES) + 1, size=n_fail)
    lo = max(1, int(ONSET_WINDOW[0] * events_per_car))
    hi = max(lo + 1, int(ONSET_WINDOW[1] * events_per_car))
    onsets = rng.integers(lo, hi, size=n_fail)
    wheels = rng.integers(0, 4, size=n_cars)
    mode = np.zeros(n_cars, dtype=np.int8)
    onset = np.full(n_cars, NO_FAILURE, dtype=np.int64)
    mode[failing] = modes
    onset[failing] = onsets
    return FailurePlan(mode, onset, wheels.astype(np.int8))
