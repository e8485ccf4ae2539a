"""The sensor layer: what a car reports of its true state. Usable with any profile.

The car model computes each car's true readings; real sensors add Gaussian noise, report in steps
(OBD-style integer degrees and km/h, like the original CSV's integer tyre pressures) and now and then
repeat their previous reading. Ground truth is about the car, never the sensors: a stuck reading on a
healthy car is healthy. Applied in this order: noise (then clipped to the sensor's physical range),
quantisation, stuck readings (a stuck sensor repeats what it reported last).

The layer draws from its own random stream per block, so a fleet with the layer has the same true
state as one without, and a run without it is bit for bit what it was before the layer existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpulse.contract import N_FEATURES

SENSOR_STREAM = 0x5E4503  # third word of the layer's seed, next to (seed, block index)

# Schema order (fleetpulse.contract.SENSOR_FIELDS): coolant, intake air temp, intake air flow, battery %,
# battery V, current, speed, vibration, throttle, 4 tyres, 4 accelerometers, firmware.
NOISE_SD = np.array([0.5, 0.5, 2.0, 0.002, 0.5, 0.5, 0.1, 20.0, 0.005, *[0.5] * 4, *[0.02] * 4, 0.0])
"""One standard deviation of noise at ``noise=1``, in each sensor's unit (a typical automotive sensor)."""
QUANTUM = np.array([1.0, 1.0, 1.0, 0.01, 0.5, 0.5, 1 / 3.6, 10.0, 1 / 255, *[1.0] * 4, *[0.01] * 4, 1.0])
"""Reporting step: OBD's integer C and km/h and its 8-bit throttle, 1% charge, integer psi (the CSV)."""
LOW = np.array([-np.inf, -np.inf, *[0.0] * 15, -np.inf])
HIGH = np.array([np.inf] * 3 + [1.0] + [np.inf] * 4 + [1.0] + [np.inf] * 9)
FIRMWARE = N_FEATURES - 1  # a version, not a measurement: never noisy, never stuck


@dataclass(frozen=True)
class SensorLayer:
    noise: float = 0.0  # multiples of NOISE_SD
    quantise: bool = False
    stuck: float = 0.0  # per car and reading: the chance that one sensor (drawn at random) repeats its last report

    @property
    def active(self) -> bool:
        return self.noise > 0 or self.quantise or self.stuck > 0


class Sensors:
    """One block's sensor layer: its random stream and what it reported last."""

    def __init__(self, layer: SensorLayer, seed: int, block_index: int):
        self.layer = layer
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block_index, SENSOR_STREAM])))
        self.last: np.ndarray | None = None

    def read(self, true: np.ndarray) -> np.ndarray:
        """Reported readings [n, 18] for true readings [n, 18]."""
        n, layer = len(true), self.layer
        # Every draw every step, whatever the settings: the stream stays aligned with the step number.
        noise, stuck_u, stuck_col = self.rng.normal(0.0, 1.0, true.shape), self.rng.random(n), self.rng.integers(0, FIRMWARE, n)
        out = (true + layer.noise * NOISE_SD * noise).clip(LOW, HIGH)
        if layer.quantise:
            out = np.round(out / QUANTUM) * QUANTUM
        if self.last is not None and layer.stuck > 0:
            rows = np.flatnonzero(stuck_u < layer.stuck)
            out[rows, stuck_col[rows]] = self.last[rows, stuck_col[rows]]
        self.last = out
        return out
