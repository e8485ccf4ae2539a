"""An over-the-air firmware rollout: a healthy change the fleet's first model has never seen.

From event ``start_seq`` on, a growing share of the fleet reports ``firmware`` as its
control_unit_firmware instead of failures.CURRENT_FIRMWARE; the share grows linearly to ``share``
over ``ramp_events`` events and stays there. Nothing else about an updated car changes, so its
ground truth does not either. A car whose outdated_firmware failure is active still reports
failures.OUTDATED_FIRMWARE: that failure is a car the rollout did not reach.

Which cars go first is a permutation drawn from the seed alone (a stream of its own, so the values
of a run without a rollout are those it had before), and a car's update event is fixed before the run:
the same seed gives the same cars updated at the same event, however the run is split over blocks or
processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator import failures as fm

OTA_STREAM = 0x07A_F1A5
NOT_UPDATED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Rollout:
    """What is rolled out, when and to how much of the fleet; times in events of a car."""

    firmware: int
    start_seq: int = 0
    ramp_events: int = 0
    share: float = 1.0

    def __post_init__(self):
        if self.firmware in (fm.CURRENT_FIRMWARE, fm.OUTDATED_FIRMWARE):
            raise ValueError(f"an OTA firmware must differ from the current ({fm.CURRENT_FIRMWARE}) and outdated "
                             f"({fm.OUTDATED_FIRMWARE}) ones, got {self.firmware}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"OTA share must be in [0, 1], got {self.share}")
        if self.start_seq < 0 or self.ramp_events < 0:
            raise ValueError("OTA start and ramp must not be negative")

    def updated_cars(self, n_cars: int) -> int:
        """How many cars the rollout reaches once the ramp is over."""
        return int(round(self.share * n_cars))


@dataclass(frozen=True)
class OtaPlan:
    """Per car: the event from which it reports the rollout's firmware (NOT_UPDATED: never)."""

    firmware: int
    update_seq: np.ndarray  # int64 [N]

    def slice(self, lo: int, hi: int) -> "OtaPlan":
        return OtaPlan(self.firmware, self.update_seq[lo:hi])

    def updated(self, seq: int) -> np.ndarray:
        return self.update_seq <= seq


def plan_ota(n_cars: int, rollout: Rollout, seed: int) -> OtaPlan:
    """The k-th car of a seeded order is updated when the ramp has reached k of its updated cars."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, OTA_STREAM])))
    order = rng.permutation(n_cars)
    reached = rollout.updated_cars(n_cars)
    update_seq = np.full(n_cars, NOT_UPDATED, dtype=np.int64)
    if reached:
        rank = np.arange(1, reached + 1, dtype=np.int64)
        # ceil(ramp x rank / reached) in integers: the share after e events of the ramp is e / ramp x share.
        update_seq[order[:reached]] = rollout.start_seq + (-(-rollout.ramp_events * rank // reached))
    return OtaPlan(rollout.firmware, update_seq)
