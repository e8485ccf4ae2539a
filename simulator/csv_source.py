"""Replay of the original generator's output (car-sensor-data.csv) instead of the car model.

Fleet car i replays CSV car i mod (cars in the file), one row per event in time order, wrapping
around. The CSV carries its own unlabelled, overlapping failures (and generator bugs: battery below
zero, runaway coolant), so a replay writes no ground truth.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fleetpulse.contract import SENSOR_FIELDS
from fleetpulse.errors import FleetPulseError
from simulator.car_model import BLOCK_CARS, Step

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "car-sensor-data.csv"


def load_csv(path: Path) -> np.ndarray:
    """Rows per CSV car: float64 [cars, samples, 18], each car's rows in time order."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise FleetPulseError(f"cannot read CSV {path}: {exc.strerror or exc}") from None
    missing = [n for n in ("time", "car", *SENSOR_FIELDS) if rows and n not in rows[0]]
    if not rows or missing:
        raise FleetPulseError(f"{path} is not a car-sensor-data CSV (missing columns: {', '.join(missing) or 'all rows'})")
    by_car: dict[str, list[tuple[float, list[float]]]] = {}
    for r in rows:
        by_car.setdefault(r["car"], []).append((float(r["time"]), [float(r[n]) for n in SENSOR_FIELDS]))
    n_samples = min(len(v) for v in by_car.values())
    cars = sorted(by_car, key=lambda c: (len(c), c))  # car1, car2, ..., car100
    return np.array([[vals for _, vals in sorted(by_car[c], key=lambda t: t[0])[:n_samples]] for c in cars])


class CsvBlock:
    """Same interface as CarBlock: ``step()`` gives the next row of each car in the block."""

    def __init__(self, index: int, first: int, n: int, data: np.ndarray):
        self.index, self.first, self.n = index, first, n
        cars = np.arange(first, first + n)
        self.src = cars % data.shape[0]
        self.data = data
        self.seq = 0

    def step(self) -> Step:
        values = self.data[self.src, self.seq % self.data.shape[1]]
        step = Step(values, self.seq, np.empty(0, dtype=np.int64), np.zeros(self.n))
        self.seq += 1
        return step


def make_csv_blocks(n_cars: int, path: Path, only=None) -> list[CsvBlock]:
    data = load_csv(path)
    return [
        CsvBlock(index, first, min(BLOCK_CARS, n_cars - first), data)
        for index, first in enumerate(range(0, n_cars, BLOCK_CARS))
        if only is None or index in only
    ]
