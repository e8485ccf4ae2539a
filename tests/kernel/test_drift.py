"""Feature drift: a live stream like the training window stays below the threshold; an over-the-air
firmware value training never saw, or a shifted sensor, goes above it."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse.drift import DRIFT_THRESHOLD, DriftCounts, psi, reference, triggers

NAMES = ["speed", "control_unit_firmware"]


def fleet(n: int, rng, firmware_share: float = 0.0, speed_shift: float = 0.0) -> np.ndarray:
    speed = rng.normal(60 + speed_shift, 15, n)
    firmware = np.where(rng.random(n) < 0.02, 1000.0, 2000.0)  # a few outdated cars, as in training
    firmware[rng.random(n) < firmware_share] = 2100.0  # the OTA update's new version
    return np.stack([speed, firmware], axis=1).astype(np.float32)


def test_the_reference_bins_a_few_valued_feature_per_value_and_others_by_deciles():
    ref = reference(fleet(20_000, np.random.default_rng(0)), NAMES)
    speed, firmware = ref["features"]
    assert speed["kind"] == "numeric" and len(speed["edges"]) == 9 and np.isclose(sum(speed["p"]), 1)
    assert firmware["kind"] == "categorical" and firmware["values"] == [1000.0, 2000.0]
    assert firmware["p"][-1] == 0  # the bin of values never seen in training


def test_an_unchanged_fleet_stays_below_the_threshold_and_an_ota_rollout_goes_above_it_on_firmware_only():
    rng = np.random.default_rng(1)
    ref = reference(fleet(20_000, rng), NAMES)
    same = DriftCounts(ref)
    for _ in range(5):
        same.add(fleet(2_000, rng))
    assert (same.psi() < 0.05).all()
    rollout = DriftCounts(ref)
    rollout.add(fleet(10_000, rng, firmware_share=0.3))
    speed_psi, firmware_psi = rollout.psi()
    assert firmware_psi > DRIFT_THRESHOLD and speed_psi < 0.05


def test_a_shifted_sensor_drifts_and_take_starts_a_new_window():
    rng = np.random.default_rng(2)
    counts = DriftCounts(reference(fleet(20_000, rng), NAMES))
    counts.add(fleet(5_000, rng, speed_shift=20))
    drifted, rows = counts.take()
    assert drifted[0] > DRIFT_THRESHOLD and rows == 5_000
    counts.add(fleet(5_000, rng))
    assert counts.take()[0][0] < 0.05


def test_psi_is_zero_for_identical_proportions_and_finite_for_an_empty_bin():
    assert psi(np.array([10, 20, 70]), np.array([0.1, 0.2, 0.7])) == 0
    assert 0 < psi(np.array([0, 50, 50]), np.array([0.5, 0.25, 0.25])) < 10
    assert psi(np.zeros(3), np.array([0.2, 0.3, 0.5])) == 0  # nothing seen yet: no drift claimed


def test_a_reference_names_the_features_whose_drift_asks_for_a_retrain_and_an_older_one_lets_all_of_them():
    values = fleet(2_000, np.random.default_rng(4))
    assert triggers(reference(values, NAMES, triggers=["control_unit_firmware"])) == {"control_unit_firmware"}
    assert triggers(reference(values, NAMES)) == set(NAMES)
    with pytest.raises(ValueError, match="not among the features"):
        reference(values, NAMES, triggers=["tyre"])
