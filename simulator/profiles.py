"""Fleet profiles: what healthy driving, climate and batteries look like for one kind of fleet.

A profile changes the operating point (trip mix, ambient temperature, charge levels, battery ageing),
never the car model's sensor relations (simulator/car_model.py) or the failure signatures
(simulator/failures.py): a failing car is failing the same way in every fleet, and a detector that
learnt the physics of one fleet should carry over to another. ``default`` is the fleet every figure
before profiles was measured on, and reproduces it bit for bit for a given seed.

- default: mostly highway and rural, short stops; intake air 5-35 C; charge 35-65% at the first event,
  fast charges below 5% to 55-65%.
- urban: crawling and city streets below 60% throttle, a stop every ~3.5 min and a drop-off (5 min)
  every ~25 min; little load.
- highway: long trips at 90-100% throttle.
- cold: default trips; ambient -20-0 C, every car starts cold and intake air warms 25 K over the trip
  (time constant 10 min while driving; stops cool it with 30 min).
- ageing: charge 10-40% at the first event and 30-45% after a charge, half the range, and a healthy
  sag of 0.03-0.10 V per A of draw (a degraded battery: 0.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """A kind of trip segment: its share of new segments, target throttle range, mean length."""

    share: float
    throttle: tuple[float, float]  # (0, 0) stops the car
    mean_s: float


@dataclass(frozen=True)
class Profile:
    name: str
    segments: tuple[Segment, ...]
    start_throttle: tuple[float, float] = (0.4, 0.9)
    start_segment_s: float = 300.0  # mean time left in the segment a car is in at the first event
    charge: tuple[float, float] = (0.35, 0.65)  # charge fraction at the first event
    charge_to: tuple[float, float] = (0.55, 0.65)  # a fast charge stops here
    charge_low: float = 0.05  # and starts below this
    range_m: float = 700_000.0  # metres a full charge lasts at moderate load
    ambient: tuple[float, float] = (5.0, 35.0)  # per-car intake air base, C
    warm_up_k: float = 0.0  # intake air this far above ambient once the engine bay is warm (0: no warm-up)
    warm_up_s: float = 600.0  # time constant of the warm-up while driving
    cool_down_s: float = 1800.0  # and of the cool-down while stopped
    battery_sag: tuple[float, float] = (0.0, 0.0)  # per-car healthy internal resistance, V per A of draw

    def segment_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(cumulative shares, throttle low, throttle high, mean length) as arrays for the step."""
        seg = self.segments
        return (np.cumsum([s.share for s in seg]), np.array([s.throttle[0] for s in seg]),
                np.array([s.throttle[1] for s in seg]), np.array([s.mean_s for s in seg]))


# A delivery fleet on the open road: it keeps the load-dependent failure signatures (overheating,
# battery sag) visible most of the time; see failures.py.
DEFAULT = Profile("default", (
    Segment(0.03, (0.0, 0.0), 45.0),  # stop: a light, a delivery
    Segment(0.10, (0.40, 0.65), 240.0),  # city
    Segment(0.27, (0.65, 0.90), 360.0),  # rural
    Segment(0.60, (0.85, 1.00), 600.0),  # highway
))

# Couriers and taxis in town: crawling, lights, drop-offs; little load, so overheating and battery
# sag show less than in the default fleet (their signatures scale with current draw).
URBAN = Profile("urban", (
    Segment(0.40, (0.0, 0.0), 30.0),  # lights, junctions
    Segment(0.06, (0.0, 0.0), 300.0),  # end of a short trip: a drop-off, a fare
    Segment(0.20, (0.05, 0.20), 60.0),  # crawling in traffic
    Segment(0.30, (0.20, 0.45), 120.0),  # city streets
    Segment(0.04, (0.45, 0.60), 150.0),  # an arterial road
), start_throttle=(0.05, 0.45), start_segment_s=90.0)

HIGHWAY = Profile("highway", (
    Segment(0.01, (0.0, 0.0), 30.0),  # toll, services
    Segment(0.09, (0.70, 0.90), 400.0),  # rural link roads
    Segment(0.90, (0.90, 1.00), 1800.0),  # motorway
), start_throttle=(0.85, 1.0), start_segment_s=900.0)

# Winter: every car starts its first trip cold (intake air at ambient) and the engine bay warms it while
# driving (stops cool it again, slowly). Coolant follows intake air through the car model's relation.
# No long parking: a parked car shows no load-dependent signature, which is the urban fleet's test.
COLD = Profile("cold", DEFAULT.segments, ambient=(-20.0, 0.0), warm_up_k=25.0)

# An older fleet: half the capacity (twice the drain per metre), kept at lower charge, and cells with
# some internal resistance: a healthy sag of 0.03-0.10 V per A, below the degraded 0.4 (failures.py).
AGEING = Profile("ageing", DEFAULT.segments, charge=(0.10, 0.40), charge_to=(0.30, 0.45), range_m=350_000.0,
                 battery_sag=(0.03, 0.10))

PROFILES = {p.name: p for p in (DEFAULT, URBAN, HIGHWAY, COLD, AGEING)}


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (one of {', '.join(PROFILES)})") from None
