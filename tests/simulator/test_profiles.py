"""Fleet profiles and the sensor layer: each profile keeps the car model's relations, stays physical
and changes what healthy looks like; the default profile is the car model as it was; the sensor layer
changes what cars report, never what they are."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fleetpulse.ground_truth import FAILURE_MODES
from simulator import car_model as cm
from simulator import failures as fm
from simulator import profiles
from simulator.failures import NO_FAILURE, FailurePlan, plan_failures
from simulator.sensor_layer import NOISE_SD, QUANTUM, SensorLayer
from tests.support.simulator import simulate

DT = 10.0
CARS, STEPS = 200, 2000  # 5.6 simulated hours per car: trips, parking, charge cycles


def fleet_values(profile, cars=CARS, steps=STEPS, seed=3, sensors=None, plan=None) -> np.ndarray:
    """Values [steps, cars, 18] of a fleet (healthy unless a plan is given)."""
    plan = plan or plan_failures(cars, steps, 0.0, seed)
    blocks = cm.make_blocks(cars, seed, plan, DT, profile=profile, sensors=sensors)
    return np.stack([np.concatenate([b.step().values for b in blocks]) for _ in range(steps)])


@pytest.fixture(scope="module", params=list(profiles.PROFILES))
def healthy(request):
    p = profiles.get(request.param)
    return p, fleet_values(p)


def test_every_profile_keeps_the_car_model_relations_over_a_long_run(healthy):
    p, v = healthy
    coolant, iat, flow, pct, volts, current, speed, vib, thr = (v[..., i] for i in range(9))
    np.testing.assert_allclose(flow, 4 * speed, rtol=1e-9)
    np.testing.assert_allclose(vib, 100 * speed, rtol=1e-9)
    np.testing.assert_allclose(current, thr * (np.abs(260 - volts) + 5), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(speed[1:], 0.8 * speed[:-1] + 0.2 * thr[1:] * cm.MAX_SPEED, rtol=1e-9, atol=1e-9)
    base = coolant - 0.1 * current - 0.8 * iat
    assert base.min() >= -1e-9 and base.max() <= 0.8 * 20 + 1e-9
    # Voltage = 180 + 80 x charge - R x draw, R a healthy cell's resistance: the profile's range.
    sag = 180 + 80 * pct - volts
    if p.battery_sag == (0.0, 0.0):
        np.testing.assert_array_equal(sag, 0.0)
    else:
        loaded = current > 1
        r = sag[loaded] / current[loaded]
        assert p.battery_sag[0] - 1e-9 <= r.min() and r.max() <= p.battery_sag[1] + 1e-9
        assert r.max() < fm.DEGRADED_SAG_V_PER_A / 3  # well clear of a degraded battery


def test_every_profile_stays_physical_over_a_long_run(healthy):
    p, v = healthy
    coolant, iat, pct, volts, speed, thr = (v[..., i] for i in (cm.COOLANT, cm.IAT, cm.BATT_PCT, cm.BATT_V, cm.SPEED, cm.THROTTLE))
    tires, accel, fw = v[..., cm.TIRES], v[..., cm.ACCEL], v[..., cm.FIRMWARE]
    assert 0 <= pct.min() and pct.max() <= max(p.charge[1], p.charge_to[1])
    assert 0 <= thr.min() and thr.max() <= 1 and 0 <= speed.min() and speed.max() <= cm.MAX_SPEED
    assert 165 <= volts.min() and volts.max() <= 260
    assert p.ambient[0] - 10 < iat.min() and iat.max() < p.ambient[1] + p.warm_up_k + 10
    assert -30 < coolant.min() and coolant.max() < 120
    assert np.isin(tires, [30, 31, 32, 33, 34]).all() and (fw == 2000).all()
    bump = accel.min(axis=-1) >= 2
    assert ((accel >= 0) & (accel <= 1) | bump[..., None]).all() and (accel <= 3).all()
    # Charging stops and resumes: no car runs flat or sits charging for the whole run.
    assert (pct[-1] > 0).all() and (thr > 0).mean(axis=0).min() > 0.3


def _summary(v: np.ndarray) -> dict:
    thr, speed = v[..., cm.THROTTLE], v[..., cm.SPEED]
    return {"speed": speed.mean(), "stopped": (thr == 0).mean(), "full_throttle": (thr > 0.85).mean(),
            "charge": v[..., cm.BATT_PCT].mean()}


@pytest.fixture(scope="module")
def default_summary():
    return _summary(fleet_values(profiles.DEFAULT, steps=500))


def test_urban_cars_crawl_and_stop_more_than_the_default_fleet(default_summary):
    u = _summary(fleet_values(profiles.URBAN, steps=500))
    assert u["speed"] < 0.4 * default_summary["speed"] and u["stopped"] > 2 * default_summary["stopped"]


def test_highway_cars_spend_more_time_at_full_throttle_than_the_default_fleet(default_summary):
    h = _summary(fleet_values(profiles.HIGHWAY, steps=500))
    assert h["full_throttle"] > default_summary["full_throttle"] + 0.15 and h["speed"] > default_summary["speed"]


def test_cold_cars_start_with_low_intake_air_that_warms_over_the_trip():
    v = fleet_values(profiles.COLD, steps=120)
    iat, coolant = v[..., cm.IAT], v[..., cm.COOLANT]
    assert iat[0].mean() < -5 and iat[-10:].mean() > iat[0].mean() + 10  # ~20 min on
    assert coolant[-10:].mean() > coolant[0].mean() + 8  # through coolant = 0.8 x (intake air + ...)


def test_ageing_cars_run_at_lower_charge_and_sag_under_load(default_summary):
    v = fleet_values(profiles.AGEING, steps=500)
    assert _summary(v)["charge"] < default_summary["charge"] - 0.08
    sag = 180 + 80 * v[..., cm.BATT_PCT] - v[..., cm.BATT_V]
    assert sag.max() > 4 and (sag >= 0).all()


def test_default_profile_gives_the_values_it_gave_before_profiles_existed():
    """Digests of the car model's output at 52f378f (before profiles): existing tests and the demo's figures rest on them."""
    expected = {(700, 42, 0.2, 0.0): "c8af6181fbb15feec6995f21e4bec4f7c32da22b0a2f22aa14bed3a503b99a90",
                (600, 7, 0.3, 120.0): "0c8797caf781e09f3b6d7c0d88382a0f0ef41f43e81dd61a5ddee559a253db40"}
    for (cars, seed, failures, ramp), digest in expected.items():
        blocks = cm.make_blocks(cars, seed, plan_failures(cars, 300, failures, seed), DT, ramp)
        h = hashlib.sha256()
        for _ in range(300):
            for b in blocks:
                s = b.step()
                h.update(s.values.tobytes())
                h.update(s.onsets.astype(np.int64).tobytes())
                h.update(s.severity.tobytes())
        assert h.hexdigest() == digest, (cars, seed)


def one_of_each(n_cars: int, onset: int) -> FailurePlan:
    mode = np.zeros(n_cars, dtype=np.int8)
    mode[: len(FAILURE_MODES)] = np.arange(1, len(FAILURE_MODES) + 1)
    onset_seq = np.where(mode > 0, onset, NO_FAILURE).astype(np.int64)
    return FailurePlan(mode, onset_seq, (np.arange(n_cars) % 4).astype(np.int8))


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_failure_signatures_are_the_same_in_every_profile(name):
    onset = 50
    v = fleet_values(profiles.get(name), cars=8, steps=200, seed=9, plan=one_of_each(8, onset))
    car = {m: FAILURE_MODES.index(m) for m in FAILURE_MODES}
    after = v[onset:]

    def at(mode, col):
        return after[:, car[mode], col]

    wheel = car["tire_pressure_loss"] % 4
    assert np.isin(at("tire_pressure_loss", 9 + wheel), range(20, 25)).all()
    assert (at("shock_absorber", 13 + car["shock_absorber"] % 4) >= 3).all()
    np.testing.assert_allclose(at("drive_shaft_wear", cm.VIBRATION), 150 * at("drive_shaft_wear", cm.SPEED))
    excess = at("overheating", cm.COOLANT) - 0.8 * at("overheating", cm.IAT) - 0.1 * at("overheating", cm.CURRENT)
    assert (excess >= 0.4 * at("overheating", cm.CURRENT) - 1e-9).all()
    assert (at("outdated_firmware", cm.FIRMWARE) == 1000).all()
    sag = 180 + 80 * at("battery_degradation", cm.BATT_PCT) - at("battery_degradation", cm.BATT_V)
    np.testing.assert_allclose(sag, 0.4 * at("battery_degradation", cm.CURRENT), rtol=1e-9, atol=1e-12)


def test_sensor_layer_changes_what_cars_report_not_what_they_are():
    layer = SensorLayer(noise=1.0, quantise=True)
    true = fleet_values(profiles.URBAN, steps=300)
    reported = fleet_values(profiles.URBAN, steps=300, sensors=layer)
    np.testing.assert_array_equal(reported, fleet_values(profiles.URBAN, steps=300, sensors=layer))
    np.testing.assert_allclose(reported, np.round(reported / QUANTUM) * QUANTUM, atol=1e-9)
    # Off by noise (6 sigma) and half a step; firmware untouched; physical ranges kept.
    assert (np.abs(reported - true) <= 6 * NOISE_SD + QUANTUM / 2 + 1e-9).all()
    assert (reported[..., cm.FIRMWARE] == true[..., cm.FIRMWARE]).all()
    assert (reported[..., cm.BATT_PCT] >= 0).all() and (reported[..., cm.THROTTLE] <= 1).all() and (reported[..., cm.SPEED] >= 0).all()


def test_a_stuck_sensor_repeats_its_last_report_now_and_then():
    rate = 0.02
    true = fleet_values(profiles.DEFAULT, steps=300)
    reported = fleet_values(profiles.DEFAULT, steps=300, sensors=SensorLayer(stuck=rate))
    off = reported != true
    assert (reported[1:][off[1:]] == reported[:-1][off[1:]]).all()  # wrong only by repeating the last report
    assert (off.sum(axis=-1) <= 1).all()  # one sensor at a time
    # A stuck sensor shows where its true value moved: the 13 analogue sensors (tyres and firmware repeat often).
    share = off[..., [*range(9), *range(13, 17)]].any(axis=-1).mean()
    assert 0.7 * rate * 13 / 17 < share < 1.1 * rate * 13 / 17


def test_simulate_cli_takes_a_profile_and_the_sensor_layer(broker):
    # QoS 0: nothing subscribes here, and at QoS 1 the cars would keep every unrouted message until the drain timeout.
    run = simulate("--cars", "20", "--rate", "2", "--duration", "2", "--profile", "cold", "--sensor-noise", "1", "--quantise",
                   "--stuck-rate", "0.01", "--truth-topic", "", "--qos", "0", broker=broker)
    assert run.summary["profile"] == "cold" and run.summary["sensors"] == {"noise": 1.0, "quantise": True, "stuck": 0.01}
    assert run.summary["events_sent"] == 80


@pytest.mark.parametrize("args", [("--profile", "arctic"), ("--source", "csv", "--profile", "urban")])
def test_profile_flags_a_run_cannot_honour_are_usage_errors(args):
    proc = simulate(*args, "--mqtt-brokers", "127.0.0.1:1", check=False)
    assert proc.returncode == 2 and "--profile" in proc.stderr
