"""The car model alone (no broker): relations of the original CarModel, physical over long runs,
failure signatures, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse.ground_truth import FAILURE_MODES
from simulator import car_model as cm
from simulator.failures import NO_FAILURE, ONSET_WINDOW, FailurePlan, plan_failures

DT = 10.0


def run(blocks, steps: int) -> np.ndarray:
    """Values [steps, cars, 18] of the given blocks."""
    out = np.empty((steps, sum(b.n for b in blocks), 18))
    for k in range(steps):
        at = 0
        for b in blocks:
            out[k, at : at + b.n] = b.step().values
            at += b.n
    return out


def healthy_fleet(n: int, seed: int = 3):
    plan = plan_failures(n, 100, 0.0, seed)
    return cm.make_blocks(n, seed, plan, DT)


def test_healthy_cars_keep_the_original_relations_and_stay_physical_over_a_long_run():
    steps = 6000  # 16.7 simulated hours per car, several charge cycles
    v = run(healthy_fleet(256), steps)
    coolant, iat, flow, pct, volts, current, speed, vib, thr = (v[..., i] for i in range(9))
    tires, accel, fw = v[..., cm.TIRES], v[..., cm.ACCEL], v[..., cm.FIRMWARE]

    np.testing.assert_allclose(flow, 4 * speed, rtol=1e-9)
    np.testing.assert_allclose(vib, 100 * speed, rtol=1e-9)
    np.testing.assert_allclose(volts, 180 + 80 * pct, rtol=1e-9)
    np.testing.assert_allclose(current, thr * (np.abs(260 - volts) + 5), rtol=1e-9)
    base = coolant - 0.1 * current - 0.8 * iat
    assert base.min() >= 0 and base.max() <= 0.8 * 20 + 1e-9
    # speed follows throttle with inertia 0.8 (per sample, as the original)
    np.testing.assert_allclose(speed[1:], 0.8 * speed[:-1] + 0.2 * thr[1:] * cm.MAX_SPEED, rtol=1e-9, atol=1e-9)

    assert 0 <= pct.min() and pct.max() <= 1  # the original drained far below zero
    assert 0 <= thr.min() and thr.max() <= 1 and 0 <= speed.min() and speed.max() <= cm.MAX_SPEED
    assert 180 <= volts.min() and volts.max() <= 260
    assert coolant.max() < 120  # the original accumulated to hundreds of degrees
    assert -10 < iat.min() and iat.max() < 50
    assert np.isin(tires, [30, 31, 32, 33, 34]).all() and (fw == 2000).all()
    bump = accel.min(axis=-1) >= 2
    assert ((accel >= 0) & (accel <= 1) | bump[..., None]).all() and (accel <= 3).all()
    assert 0.04 < bump.mean() < 0.06

    # trips: throttle varies within and between cars, and the last hours look like the first
    assert thr.std(axis=0).mean() > 0.1
    first, last = v[: steps // 4], v[-steps // 4 :]
    for col in (cm.COOLANT, cm.CURRENT, cm.SPEED, cm.BATT_PCT):
        assert abs(first[..., col].mean() - last[..., col].mean()) < 0.25 * first[..., col].std() + 1e-6, col
    # Most samples are under load, so load-dependent failures show (see failures.py).
    assert (thr > 0.3).mean() > 0.9


def plan_one_of_each(n_cars: int, onset: int) -> FailurePlan:
    mode = np.zeros(n_cars, dtype=np.int8)
    mode[: len(FAILURE_MODES)] = np.arange(1, len(FAILURE_MODES) + 1)
    onset_seq = np.where(mode > 0, onset, NO_FAILURE).astype(np.int64)
    return FailurePlan(mode, onset_seq, (np.arange(n_cars) % 4).astype(np.int8))


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_each_failure_mode_moves_its_sensors_from_its_onset(mode):
    onset, steps = 100, 300
    plan = plan_one_of_each(16, onset)
    car = FAILURE_MODES.index(mode)
    wheel = car % 4
    block = cm.CarBlock(0, 0, 16, 7, plan, DT)
    values, onsets = [], []
    for _ in range(steps):
        s = block.step()
        values.append(s.values[car])
        onsets.append(car in s.onsets)
    v = np.array(values)
    assert np.flatnonzero(onsets).tolist() == [onset]
    before, after = v[:onset], v[onset:]
    moving = after[:, cm.SPEED] > 5
    if mode == "tire_pressure_loss":
        assert np.isin(before[:, 9 + wheel], range(30, 35)).all() and np.isin(after[:, 9 + wheel], range(20, 25)).all()
        others = [9 + w for w in range(4) if w != wheel]
        assert np.isin(after[:, others], range(30, 35)).all()
    elif mode == "shock_absorber":
        a = after[:, 13 + wheel]
        assert (before[:, 13 + wheel] <= 3).all() and ((a >= 3) & (a <= 7)).all()
        assert ((a >= 3) & (a <= 4)).mean() > 0.9
    elif mode == "drive_shaft_wear":
        np.testing.assert_allclose(before[:, cm.VIBRATION], 100 * before[:, cm.SPEED])
        np.testing.assert_allclose(after[:, cm.VIBRATION], 150 * after[:, cm.SPEED])
    elif mode == "overheating":
        excess = after[:, cm.COOLANT] - 0.8 * after[:, cm.IAT] - 0.1 * after[:, cm.CURRENT]
        np.testing.assert_array_less(0.4 * after[:, cm.CURRENT] - 1e-9, excess)
        assert (excess[moving] > 16).mean() > 0.8  # above anything a healthy car shows, most of the time
    elif mode == "outdated_firmware":
        assert (before[:, cm.FIRMWARE] == 2000).all() and (after[:, cm.FIRMWARE] == 1000).all()
    elif mode == "battery_degradation":
        sag = 180 + 80 * after[:, cm.BATT_PCT] - after[:, cm.BATT_V]
        np.testing.assert_allclose(sag, 0.4 * after[:, cm.CURRENT], rtol=1e-9)
        assert (sag[moving] > 5).mean() > 0.95
        np.testing.assert_allclose(before[:, cm.BATT_V], 180 + 80 * before[:, cm.BATT_PCT])


def test_failures_ramp_in_when_asked():
    plan = plan_one_of_each(8, 10)
    block = cm.CarBlock(0, 0, 8, 1, plan, DT, ramp_s=100.0)
    sev = [block.step().severity[FAILURE_MODES.index("overheating")] for _ in range(30)]
    assert sev[9] == 0 and sev[10] == pytest.approx(0.1) and sev[19] == 1 and sev[29] == 1


def test_failure_plan_picks_the_fraction_with_onsets_after_healthy_history():
    plan = plan_failures(10_000, 600, 0.05, 11)
    failing = plan.mode > 0
    assert failing.sum() == 500
    counts = plan.failing_counts()
    assert set(counts) == set(FAILURE_MODES) and min(counts.values()) > 50
    onsets = plan.onset_seq[failing]
    assert onsets.min() >= ONSET_WINDOW[0] * 600 and onsets.max() < ONSET_WINDOW[1] * 600


def test_same_seed_gives_the_same_cars_and_values_however_the_fleet_is_split():
    n = 3 * cm.BLOCK_CARS
    plan = plan_failures(n, 50, 0.2, 5)
    whole = run(cm.make_blocks(n, 5, plan, DT), 50)
    again = run(cm.make_blocks(n, 5, plan_failures(n, 50, 0.2, 5), DT), 50)
    odd = run(cm.make_blocks(n, 5, plan, DT, only={1}), 50)
    np.testing.assert_array_equal(whole, again)
    np.testing.assert_array_equal(whole[:, cm.BLOCK_CARS : 2 * cm.BLOCK_CARS], odd)
    other = run(cm.make_blocks(n, 6, plan_failures(n, 50, 0.2, 6), DT), 50)
    assert not np.allclose(whole, other)
