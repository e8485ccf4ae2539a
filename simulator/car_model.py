"""The original CarModel's sensor relations, vectorised over blocks of cars, its two bugs fixed.

Kept from the original (HiveMQ avro-car-sensor-simulator, the source of car-sensor-data.csv), per car
and sample: speed follows throttle with inertia 0.8 towards throttle x 38.9 m/s; intake air flow =
4 x speed; battery voltage = 180 + 80 x charge fraction; current draw = throttle x (|260 - voltage| + 5);
engine vibration = 100 x speed; tyres 30-34 psi; accelerometers 0-1 (2-3 on a road bump, ~5% of
samples); firmware 2000 (another value on cars an over-the-air rollout reached, simulator/ota.py);
coolant = 0.8 x (intake air temp + U(0, 20)) + 0.1 x current draw.

Fixed: the charge fraction drains with distance inside [0, 1] (cars stop to fast-charge below 5%, to 55-65%, as fleets on shift do),
and coolant is computed from the formula each sample instead of accumulating without bound.

Added: trips. Each car drives segments (in the default fleet: highway, rural, city, short stops) of
random length with a target throttle; throttle eases towards the target with a little noise, so healthy
data is not constant. A fleet profile (simulator/profiles.py) sets the segments, the climate, charge
levels and battery ageing; it generalises two relations without changing them for the default fleet:
intake air = ambient + a random walk + a warm-up term (0 unless the profile warms the engine bay), and
battery voltage = 180 + 80 x charge fraction - R x current draw, R a healthy cell's internal resistance
(0 unless the profile ages the batteries; a degraded battery's R is 0.4 V per A, failures.py). Every
other relation above holds in every profile. A sensor layer (simulator/sensor_layer.py) may then add
noise, quantisation and stuck readings to what the cars report.

Determinism: cars live in fixed blocks of BLOCK_CARS, each with its own random stream seeded by
(seed, block index), drawn in a fixed order every step. A car's values depend only on the seed, its
index, its step number, the profile and the sensor layer: not on timing, connection layout or how
blocks are split over processes. Draws a profile or the sensor layer adds come from streams of their
own, so the default profile without a sensor layer gives the values it gave before they existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpulse.contract import N_FEATURES
from simulator import failures as fm
from simulator.failures import FailurePlan
from simulator.ota import OtaPlan
from simulator.profiles import DEFAULT, Profile
from simulator.sensor_layer import SensorLayer, Sensors

BLOCK_CARS = 512
MAX_SPEED = 38.9  # m/s at full throttle
SPEED_INERTIA = 0.8  # per sample, as in the original
CHARGE_RATE = 0.8 / 900  # fast charge: +80% per 15 min (where it starts and stops: the profile)
THROTTLE_TAU_S = 15.0  # throttle eases towards its segment target with this time constant
PROFILE_STREAM = 0x9F0F11E  # third word of the seed of a profile's own draws, next to (seed, block index)

# Column indices in schema order (fleetpulse.contract.SENSOR_FIELDS).
COOLANT, IAT, AIRFLOW, BATT_PCT, BATT_V, CURRENT, SPEED, VIBRATION, THROTTLE = range(9)
TIRES = slice(9, 13)
ACCEL = slice(13, 17)
FIRMWARE = 17


def car_id(index: int) -> str:
    """Car index 0.. -> ``electric-vehicle-00001``..., the original load scenario's client ids."""
    return f"electric-vehicle-{index + 1:05d}"


@dataclass
class Step:
    """One sample of a block: sensor rows, and which cars entered their failure state with it."""

    values: np.ndarray  # float64 [n, 18]
    seq: int  # the block's step number (each car's event number)
    onsets: np.ndarray  # indices within the block whose failure starts at this step
    severity: np.ndarray  # float64 [n]


class CarBlock:
    """State of cars [first, first + n) and one vectorised step of all of them."""

    def __init__(self, index: int, first: int, n: int, seed: int, plan: FailurePlan, sample_interval_s: float, ramp_s: float = 0.0,
                 profile: Profile = DEFAULT, sensors: SensorLayer | None = None, ota: OtaPlan | None = None):
        self.index, self.first, self.n = index, first, n
        self.ota = ota
        self.dt = float(sample_interval_s)
        self.ramp_s = float(ramp_s)
        self.plan = plan
        self.profile = p = profile
        self.seg_cum, self.seg_lo, self.seg_hi, self.seg_len = p.segment_table()
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
        r = self.rng
        self.charge = r.uniform(*p.charge, n)
        self.iat_base = r.uniform(*p.ambient, n)
        self.iat_dev = np.zeros(n)
        self.throttle = r.uniform(*p.start_throttle, n)
        self.target = self.throttle.copy()
        self.seg_left = r.exponential(p.start_segment_s, n)
        self.speed = self.throttle * MAX_SPEED
        self.charging = np.zeros(n, dtype=bool)
        self.charge_to = np.full(n, 0.9)
        self.warmth = np.zeros(n)  # 0: engine bay at ambient (a cold start), 1: warm
        own = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, PROFILE_STREAM])))
        self.healthy_sag = own.uniform(*p.battery_sag, n)
        self.sensors = Sensors(sensors, seed, index) if sensors is not None and sensors.active else None
        self.seq = 0

    def step(self) -> Step:
        """Advance every car by one sample (``sample_interval_s`` simulated seconds)."""
        n, r = self.n, self.rng
        # Every draw happens every step in this order, whatever the cars' states: determinism.
        u_kind, u_target, u_len = r.random(n), r.random(n), r.exponential(1.0, n)
        thr_noise, iat_noise, coolant_u = r.normal(0.0, 1.0, n), r.normal(0.0, 1.0, n), r.random(n)
        tires = r.integers(fm.HEALTHY_TIRE_PSI[0], fm.HEALTHY_TIRE_PSI[1] + 1, (n, 4))
        accel, bump, shock_u = r.random((n, 4)), r.random(n) < 0.05, r.random(n)
        failed_tire = r.integers(fm.FAILED_TIRE_PSI[0], fm.FAILED_TIRE_PSI[1] + 1, n)
        charge_to = r.uniform(*self.profile.charge_to, n)

        self._drive(u_kind, u_target, u_len, thr_noise, charge_to)
        severity, onsets = self._severity()
        sev = {m: np.where(self.plan.mode == i, severity, 0.0) for m, i in fm.MODE_INDEX.items()}

        self.iat_dev = 0.98 * self.iat_dev + 0.3 * iat_noise  # bounded random walk (std ~1.5 K)
        iat = self.iat_base + self.iat_dev
        if self.profile.warm_up_k:
            iat = iat + self.profile.warm_up_k * self.warmth
        v0 = 180.0 + 80.0 * self.charge
        # Cells sag by R x I; I itself depends on V, solved in closed form (V0 <= 260 V, R x throttle < 1).
        sag_r = self.healthy_sag + (fm.DEGRADED_SAG_V_PER_A - self.healthy_sag) * sev["battery_degradation"]
        current = self.throttle * (265.0 - v0) / (1.0 - sag_r * self.throttle)
        volts = v0 - sag_r * current
        coolant_k = fm.HEALTHY_COOLANT_PER_AMP + (fm.OVERHEAT_COOLANT_PER_AMP - fm.HEALTHY_COOLANT_PER_AMP) * sev["overheating"]
        vib_k = fm.HEALTHY_VIBRATION + (fm.WORN_SHAFT_VIBRATION - fm.HEALTHY_VIBRATION) * sev["drive_shaft_wear"]

        out = np.empty((n, N_FEATURES))
        out[:, COOLANT] = 0.8 * (iat + 20.0 * coolant_u) + coolant_k * current
        out[:, IAT] = iat
        out[:, AIRFLOW] = 4.0 * self.speed
        out[:, BATT_PCT] = self.charge
        out[:, BATT_V] = volts
        out[:, CURRENT] = current
        out[:, SPEED] = self.speed
        out[:, VIBRATION] = vib_k * self.speed
        out[:, THROTTLE] = self.throttle
        out[:, TIRES] = self._tires(tires, failed_tire, sev["tire_pressure_loss"])
        out[:, ACCEL] = self._accelerometers(accel, bump, shock_u, sev["shock_absorber"])
        out[:, FIRMWARE] = np.where(sev["outdated_firmware"] > 0, fm.OUTDATED_FIRMWARE, self._firmware())
        if self.sensors is not None:
            out = self.sensors.read(out)
        step = Step(out, self.seq, onsets, severity)
        self.seq += 1
        return step

    def _drive(self, u_kind, u_target, u_len, thr_noise, charge_to) -> None:
        dt, p = self.dt, self.profile
        self.seg_left -= dt
        new = self.seg_left <= 0
        kind = np.searchsorted(self.seg_cum, u_kind * self.seg_cum[-1], side="right").clip(0, len(self.seg_cum) - 1)
        target = self.seg_lo[kind] + (self.seg_hi[kind] - self.seg_lo[kind]) * u_target
        self.target = np.where(new, target, self.target)
        self.seg_left = np.where(new, np.maximum(u_len * self.seg_len[kind], dt), self.seg_left)

        start_charging = ~self.charging & (self.charge < p.charge_low)
        self.charge_to = np.where(start_charging, charge_to, self.charge_to)
        self.charging |= start_charging
        stopped = self.charging | (self.target == 0.0)

        alpha = 1.0 - np.exp(-dt / THROTTLE_TAU_S)
        moving = self.throttle + alpha * (self.target - self.throttle) + 0.03 * thr_noise
        braking = self.throttle * (1.0 - alpha)
        self.throttle = np.where(stopped, np.where(braking < 0.02, 0.0, braking), moving.clip(0.05, 1.0))
        self.speed = SPEED_INERTIA * self.speed + (1.0 - SPEED_INERTIA) * self.throttle * MAX_SPEED
        if p.warm_up_k:
            warming, cooling = 1.0 - np.exp(-dt / p.warm_up_s), np.exp(-dt / p.cool_down_s)
            self.warmth = np.where(stopped, self.warmth * cooling, self.warmth + warming * (1.0 - self.warmth))

        drained = self.charge - self.speed * dt * (0.7 + 0.6 * self.throttle) / p.range_m
        charged = self.charge + CHARGE_RATE * dt
        self.charge = np.where(self.charging, np.minimum(charged, self.charge_to), drained).clip(0.0, 1.0)
        self.charging &= self.charge < self.charge_to

    def _severity(self) -> tuple[np.ndarray, np.ndarray]:
        since = self.seq - self.plan.onset_seq  # events since onset (negative before)
        active = since >= 0
        if self.ramp_s > 0:
            severity = np.where(active, np.minimum(1.0, (since + 1) * self.dt / self.ramp_s), 0.0)
        else:
            severity = active.astype(np.float64)
        firmware = self.plan.mode == fm.MODE_INDEX["outdated_firmware"]
        severity = np.where(firmware & active, 1.0, severity)
        return severity, np.flatnonzero(since == 0)

    def _firmware(self) -> np.ndarray | int:
        if self.ota is None:
            return fm.CURRENT_FIRMWARE
        return np.where(self.ota.updated(self.seq), self.ota.firmware, fm.CURRENT_FIRMWARE)

    def _tires(self, tires, failed_tire, sev) -> np.ndarray:
        out = tires.astype(np.float64)
        rows = np.flatnonzero(sev > 0)
        if len(rows):
            wheel = self.plan.wheel[rows]
            healthy = out[rows, wheel]
            out[rows, wheel] = np.rint(healthy + sev[rows] * (failed_tire[rows] - healthy))
        return out

    def _accelerometers(self, accel, bump, shock_u, sev) -> np.ndarray:
        out = np.where(bump[:, None], 2.0 + accel, accel)
        rows = np.flatnonzero(sev > 0)
        if len(rows):
            wheel = self.plan.wheel[rows]
            lo_n, hi_n = fm.FAILED_SHOCK
            lo_b, hi_b = fm.FAILED_SHOCK_BUMP
            failed = np.where(bump[rows], lo_b + (hi_b - lo_b) * shock_u[rows], lo_n + (hi_n - lo_n) * shock_u[rows])
            healthy = out[rows, wheel]
            out[rows, wheel] = healthy + sev[rows] * (failed - healthy)
        return out


def make_blocks(n_cars: int, seed: int, plan: FailurePlan, sample_interval_s: float, ramp_s: float = 0.0, only=None,
                profile: Profile = DEFAULT, sensors: SensorLayer | None = None, ota: OtaPlan | None = None) -> list[CarBlock]:
    """The fleet as fixed blocks; ``only`` (a set of block indices) builds a worker's share."""
    blocks = []
    for index, first in enumerate(range(0, n_cars, BLOCK_CARS)):
        if only is not None and index not in only:
            continue
        n = min(BLOCK_CARS, n_cars - first)
        blocks.append(CarBlock(index, first, n, seed, plan.slice(first, first + n), sample_interval_s, ramp_s, profile, sensors,
                               ota.slice(first, first + n) if ota is not None else None))
    return blocks


def block_count(n_cars: int) -> int:
    return (n_cars + BLOCK_CARS - 1) // BLOCK_CARS
