"""Feature preparation shared by both models: robust scaling statistics, per-car look-back windows, and
the car model's relations as operating-point-invariant features."""

from __future__ import annotations

import numpy as np

from fleetpulse.contract import N_FEATURES, SENSOR_FIELDS

MAD_TO_SIGMA = 1.4826
CLIP = 20.0  # scaled values are clipped so one absurd reading cannot dominate a loss or a score


def robust_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (median, scale): scale = 1.4826 x MAD, or 1.2533 x mean absolute deviation where
    the MAD is 0, floored for constant features.

    Robust rather than mean/std because the training stream is unlabelled and contains failing cars
    whose extreme readings would inflate a standard deviation. Integer sensors (tyre pressures) can
    have a MAD of 0 when over half the readings share one value; the mean absolute deviation keeps a
    1-psi wobble from scaling to 20 sigma. A truly constant feature (firmware) gets a small floor, so
    any change in it scales to a large value instead of dividing by zero.
    """
    center = np.median(values, axis=0)
    deviation = np.abs(values - center)
    mad = np.median(deviation, axis=0) * MAD_TO_SIGMA
    mean_ad = deviation.mean(axis=0) * 1.2533
    scale = np.where(mad > 0, mad, mean_ad)
    floor = 1e-3 * (np.abs(center) + 1.0)
    return center.astype(np.float32), np.maximum(scale, floor).astype(np.float32)


def robust_z(values: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip((values - center) / scale, -CLIP, CLIP)


def car_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices per car, each in stream order (stable sort keeps Kafka's per-key order)."""
    order = np.argsort(keys.astype("S"), kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return np.split(order, cuts)


def car_windows(values: np.ndarray, keys: np.ndarray, window: int, rows: np.ndarray | None = None) -> np.ndarray:
    """[N, window, 18]: for every row, that car's last ``window`` rows ending at it (edge-padded at the car's start).

    ``rows`` restricts the output to those row indices (in that order), to bound memory when training.
    """
    position = np.empty(len(values), dtype=np.int64)
    group_start = np.empty(len(values), dtype=np.int64)
    ordered = []
    offset = 0
    for idx in car_groups(keys):
        ordered.append(idx)
        position[idx] = offset + np.arange(len(idx))
        group_start[idx] = offset
        offset += len(idx)
    by_car = values[np.concatenate(ordered)] if ordered else values
    rows = np.arange(len(values)) if rows is None else rows
    end = position[rows]
    steps = end[:, None] - np.arange(window - 1, -1, -1)[None, :]
    steps = np.maximum(steps, group_start[rows][:, None])
    return by_car[steps]


# --- the car model's relations, as operating-point-invariant features --------------------------------
#
# The simulator's car model (simulator/car_model.py) states how its sensors relate: coolant = c0 +
# 0.8 x intake air + 0.1 x current draw (+ bounded noise), airflow = 4 x speed, battery voltage =
# open-circuit voltage (180 + 80 x charge) - R x current, current = throttle x (265 - voltage),
# vibration = 100 x speed. Every failure that moves these changes a coefficient (overheating the
# coolant's per-amp term, a degraded battery R, a worn shaft the vibration per m/s), so its size
# scales with the load (current draw, speed). A fleet that drives slower, colder or on older cells
# moves the operating point, not the relations. Scoring each relation's error against a tolerance
# that grows with its load makes a detector trained on one fleet carry over to another: measured on
# the 5 x 5 fleet-profile matrix (bench/quality.py), see components/models.py.

_FIELD = {name: i for i, name in enumerate(SENSOR_FIELDS)}
COOLANT, INTAKE_TEMP, AIRFLOW, CHARGE, VOLTAGE, CURRENT, SPEED, VIBRATION, THROTTLE = (_FIELD[n] for n in (
    "coolant_temp", "intake_air_temp", "intake_air_flow_speed", "battery_percentage", "battery_voltage", "current_draw",
    "speed", "engine_vibration_amplitude", "throttle_pos"))
RELATION_SLOTS = (COOLANT, AIRFLOW, VOLTAGE, CURRENT, VIBRATION)
"""Where each relation's scored error goes in the 18 invariant features (the sensor it predicts)."""
OPERATING_POINT = (INTAKE_TEMP, CHARGE, SPEED, THROTTLE)
"""How the car is driven, not whether it is healthy: zero in the invariant features (the relations use them)."""
FREE_SENSORS = tuple(i for i in range(N_FEATURES) if i not in RELATION_SLOTS + OPERATING_POINT)
"""Tyres, accelerometers, firmware: no relation covers them; tyres and accelerometers pass through as
read, firmware as its distance from the versions the fleet runs (known_firmware)."""
FIRMWARE = _FIELD["control_unit_firmware"]

# A firmware version is a category, not a magnitude: the invariant feature is the distance from the
# nearest version the training window's fleet runs (0 on every healthy car), so a fleet that runs
# two versions (an over-the-air rollout under way) is as quiet as one that runs one, and a version
# the window never saw in force (an outdated one, or a rollout after training) stands out. Read as
# a magnitude, a window early in a rollout (a few percent on the new version) gave firmware a
# scale that made the new version a mild outlier and blurred every other score: trained on 2,000
# cars at a 10% share, recall 0.22 and 112 false alerts per 1,000 car-h on a fleet at 60%; at 30%,
# overheating recall 0.0. As a distance: 0.96 and 1.5 at both shares.
FIRMWARE_SLOTS = 4
FIRMWARE_MIN_SHARE = 0.05
"""A version carried by at least this share of the window's readings is one the fleet runs. The
window is unlabelled: a failure's version (outdated firmware on ~1% of cars) stays under it."""
NO_FIRMWARE = -1.0e6  # an empty slot: farther from any real version (0..65,535) than any real one

N_COEFFICIENTS = 10
# coefficients, then noise tolerance, then per-load tolerance, then the fleet's firmware versions
N_RELATION_PARAMS = N_COEFFICIENTS + 2 * len(RELATION_SLOTS) + FIRMWARE_SLOTS
UNFITTED_RELATIONS = np.r_[np.zeros(N_COEFFICIENTS), np.ones(len(RELATION_SLOTS)), np.zeros(len(RELATION_SLOTS)),
                           np.full(FIRMWARE_SLOTS, NO_FIRMWARE)].astype(np.float32)  # fmt: skip

RESOLUTION = 1e-3  # noise tolerance floor, relative to the predicted sensor's typical reading
OUTLIER_TOLERANCES = 5.0  # an error this many tolerances out is a failure in the unlabelled window, not noise
MIN_OUTLIER_SHARE = 5e-4  # fewer outliers than this (stuck readings, glitches) set no margin
FAILURE_MARGIN = 0.5  # per-load tolerance: this share of the coefficient change the window's failures show
TRIM, TRIM_ROUNDS = 0.03, 3


def relation_errors(x, p, xp=np):
    """Each relation's error and the load it scales with, for raw readings ``x`` [..., 18].

    Arithmetic and ``xp.abs`` only, so one definition serves the fit (numpy) and the model (``xp`` =
    keras.ops). ``p`` holds the coefficients (fit_relations)."""
    coolant, intake, airflow, charge, volts, current, speed, vibration, throttle = (
        x[..., i] for i in (COOLANT, INTAKE_TEMP, AIRFLOW, CHARGE, VOLTAGE, CURRENT, SPEED, VIBRATION, THROTTLE))
    expected_current = throttle * (p[7] - p[8] * volts)
    errors = (coolant - p[0] - p[1] * intake - p[2] * current,
              airflow - p[3] * speed,
              p[4] + p[5] * charge - p[6] * current - volts,  # sag beyond the fleet's healthy cells
              current - expected_current,
              vibration - p[9] * speed)
    loads = (xp.abs(current), xp.abs(p[3] * speed), xp.abs(current), xp.abs(expected_current), xp.abs(p[9] * speed))
    return errors, loads


def invariant_features(x, p, xp=np):
    """[..., 18] raw -> [..., 18]: relation errors in units of their tolerance sqrt(noise^2 + (margin x load)^2)
    in the relations' slots, 0 for the operating point, firmware as its distance from the nearest
    version the fleet runs, the other free sensors as read."""
    errors, loads = relation_errors(x, p, xp)
    n = len(RELATION_SLOTS)
    noise = p[N_COEFFICIENTS : N_COEFFICIENTS + n]
    margin = p[N_COEFFICIENTS + n : N_COEFFICIENTS + 2 * n]
    versions = p[N_COEFFICIENTS + 2 * n :]
    scored = {slot: errors[k] / xp.sqrt(noise[k] ** 2 + (margin[k] * loads[k]) ** 2) for k, slot in enumerate(RELATION_SLOTS)}
    scored[FIRMWARE] = xp.min(xp.abs(xp.expand_dims(x[..., FIRMWARE], -1) - versions), axis=-1)
    zero = xp.zeros_like(x[..., 0])
    return xp.stack([scored[i] if i in scored else zero if i in OPERATING_POINT else x[..., i] for i in range(N_FEATURES)], axis=-1)


def _trimmed_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares refitted without the TRIM largest errors, TRIM_ROUNDS times (failing cars in the window)."""
    keep = np.ones(len(y), bool)
    for _ in range(TRIM_ROUNDS):
        w = np.linalg.lstsq(a[keep], y[keep], rcond=None)[0]
        error = np.abs(a @ w - y)
        keep = error <= np.quantile(error, 1.0 - TRIM)
    return w


def fit_coefficients(values: np.ndarray) -> np.ndarray:
    """The relations' coefficients on the training window, each where it is identified.

    The open-circuit voltage is fitted on the readings at rest (no current, so no sag), then the
    fleet's cell resistance as the median sag per amp under load: a joint fit lets the spread of
    resistances across an ageing fleet bend the intercept, which a car at rest then shows as sag.
    """
    x = values.astype(np.float64)
    coolant, intake, airflow, charge, volts, current, speed, vibration, throttle = (
        x[:, i] for i in (COOLANT, INTAKE_TEMP, AIRFLOW, CHARGE, VOLTAGE, CURRENT, SPEED, VIBRATION, THROTTLE))
    one = np.ones(len(x))
    p = np.zeros(N_COEFFICIENTS)
    p[0:3] = _trimmed_lstsq(np.stack([one, intake, current], 1), coolant)
    p[3] = _trimmed_lstsq(speed[:, None], airflow)[0]
    rest = current <= RESOLUTION * (np.median(current) + 1.0)
    if rest.sum() >= 100:
        p[4:6] = _trimmed_lstsq(np.stack([one[rest], charge[rest]], 1), volts[rest])
        load = current >= max(np.median(current), 1.0)
        p[6] = np.median((p[4] + p[5] * charge[load] - volts[load]) / current[load]) if load.any() else 0.0
    else:  # a fleet that never stands still: one joint fit
        p[4:7] = _trimmed_lstsq(np.stack([one, charge, -current], 1), volts)
    p[7:9] = _trimmed_lstsq(np.stack([throttle, -throttle * volts], 1), current)
    p[9] = _trimmed_lstsq(speed[:, None], vibration)[0]
    return p


def _tolerances(error: np.ndarray, load: np.ndarray, floor: float) -> tuple[float, float]:
    """(noise, per-load margin) of one relation on the unlabelled training window.

    Noise: the 99.9th percentile of |error| where the load is lowest (a load-dependent failure cannot
    show there), floored. Per-load: the healthy spread of error per unit of load (an ageing fleet's
    cells differ), or, where the window holds failures of this relation (errors far outside that
    tolerance), FAILURE_MARGIN of the coefficient change they show: a fleet whose healthy coefficients
    differ from the training fleet's by less than that is not flagged, at any load.
    """
    size = np.abs(error)
    mad = max(np.median(size) * MAD_TO_SIGMA, floor)
    low = (size <= 10 * mad) & (load <= np.quantile(load, 0.05))
    noise = max(float(np.quantile(size[low], 0.999)) if low.any() else 0.0, floor)
    high = (load >= np.quantile(load, 0.5)) & (load > 0)
    per_load = 0.0
    if high.any():
        ratio = np.maximum(size[high] - noise, 0.0) / load[high]
        center = np.median(ratio)
        spread = max(np.median(np.abs(ratio - center)) * MAD_TO_SIGMA, 1e-6)
        per_load = float(np.quantile(ratio[ratio <= center + OUTLIER_TOLERANCES * spread], 0.999))
    far = size / np.sqrt(noise**2 + (per_load * load) ** 2) > OUTLIER_TOLERANCES
    failing = far & (load >= np.quantile(load, 0.25)) & (load > 0)
    if failing.mean() >= MIN_OUTLIER_SHARE:
        per_load = max(per_load, FAILURE_MARGIN * float(np.median(size[failing] / load[failing])))
    return noise, per_load


def fit_relations(values: np.ndarray) -> np.ndarray:
    """Coefficients and tolerances of the car model's relations on an unlabelled training window [N, 18]."""
    p = fit_coefficients(values)
    errors, loads = relation_errors(values.astype(np.float64), p)
    tolerances = [_tolerances(e, load, RESOLUTION * (float(np.median(np.abs(values[:, slot]))) + 1.0))
                  for e, load, slot in zip(errors, loads, RELATION_SLOTS)]
    noise, per_load = zip(*tolerances)
    return np.r_[p, noise, per_load, known_firmware(values[:, FIRMWARE])].astype(np.float32)


def known_firmware(firmware: np.ndarray) -> np.ndarray:
    """[FIRMWARE_SLOTS]: the versions at least FIRMWARE_MIN_SHARE of the readings carry, most common
    first, the empty slots NO_FIRMWARE."""
    versions, counts = np.unique(firmware[np.isfinite(firmware)], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    common = versions[order][counts[order] >= FIRMWARE_MIN_SHARE * max(len(firmware), 1)]
    out = np.full(FIRMWARE_SLOTS, NO_FIRMWARE)
    out[: min(len(common), FIRMWARE_SLOTS)] = common[:FIRMWARE_SLOTS]
    return out
