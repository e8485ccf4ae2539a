"""A small synthetic fleet for tests and benchmarks: healthy cars plus injected failures, with ground truth.

The simulator (``simulator/``) is the real data source; this exists so training can be developed and
tested without it. Every car emits one cardata-v1 event per ``interval_s`` simulated seconds; a share of
the cars develops one failure mode at a random onset, ramping in over a few events. Kafka timestamps
are simulated time (``t0_ms + seq * interval``), and TruthRecords use the same clock, so labels join
exactly on the Kafka timestamp the way they do for the simulator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fleetpulse.clients import ensure_topics, kafka_config
from fleetpulse.contract import N_FEATURES, SENSOR_FIELDS
from fleetpulse.ground_truth import FAILURE_MODES, HEALTHY, TruthRecord
from fleetpulse.settings import KafkaConnection
from fleetpulse.topics import TopicSpec

COL = {name: i for i, name in enumerate(SENSOR_FIELDS)}
RAMP_EVENTS = 3


@dataclass
class Fleet:
    values: np.ndarray  # float32 [cars * events, 18], interleaved in time (event-major)
    car_ids: list[str]  # per row
    ts_ms: np.ndarray  # int64 per row
    truth: list[TruthRecord]
    interval_s: float


def _healthy(rng: np.random.Generator, n_cars: int, n_events: int) -> np.ndarray:
    """[cars, events, 18] healthy readings: per-car baselines, smooth driving, sensor noise."""
    shape = (n_cars, n_events)
    out = np.empty((*shape, N_FEATURES), dtype=np.float64)
    t = np.arange(n_events)[None, :]
    phase = rng.uniform(0, 2 * np.pi, (n_cars, 1))
    speed = np.clip(20 + 8 * np.sin(t / 15 + phase) + rng.normal(0, 1.5, shape), 0, None)
    out[..., COL["speed"]] = speed
    # The original generator ties vibration to speed (x100); a worn drive shaft breaks that tie.
    out[..., COL["engine_vibration_amplitude"]] = speed * 100 + rng.normal(0, 20, shape)
    out[..., COL["throttle_pos"]] = np.clip(0.4 + 0.01 * (speed - 20) + rng.normal(0, 0.05, shape), 0, 1)
    out[..., COL["coolant_temp"]] = rng.normal(88, 2, (n_cars, 1)) + 0.1 * speed + rng.normal(0, 0.8, shape)
    out[..., COL["intake_air_temp"]] = rng.normal(25, 3, (n_cars, 1)) + rng.normal(0, 0.5, shape)
    out[..., COL["intake_air_flow_speed"]] = 5 * speed + rng.normal(0, 3, shape)
    out[..., COL["battery_percentage"]] = np.clip(rng.uniform(0.5, 0.95, (n_cars, 1)) - 0.0005 * t, 0.05, 1)
    out[..., COL["battery_voltage"]] = rng.normal(240, 3, (n_cars, 1)) + rng.normal(0, 1, shape)
    out[..., COL["current_draw"]] = 0.5 * speed + rng.normal(0, 1, shape)
    for tyre in ("tire_pressure_1_1", "tire_pressure_1_2", "tire_pressure_2_1", "tire_pressure_2_2"):
        out[..., COL[tyre]] = np.rint(rng.normal(32, 0.6, (n_cars, 1)) + rng.normal(0, 0.4, shape))
    for acc in ("accelerometer_1_1_value", "accelerometer_1_2_value", "accelerometer_2_1_value", "accelerometer_2_2_value"):
        out[..., COL[acc]] = np.abs(rng.normal(0.3, 0.08, shape))
    out[..., COL["control_unit_firmware"]] = 2000
    return out


def _inject(x: np.ndarray, mode: str, severity: np.ndarray, rng: np.random.Generator) -> None:
    """Apply a failure to one car's [events, 18] readings in place; severity [events] in 0..1."""
    if mode == "tire_pressure_loss":
        tyre = COL[rng.choice(["tire_pressure_1_1", "tire_pressure_1_2", "tire_pressure_2_1", "tire_pressure_2_2"])]
        x[:, tyre] = np.rint(x[:, tyre] - 9 * severity)
    elif mode == "shock_absorber":
        acc = COL[rng.choice(["accelerometer_1_1_value", "accelerometer_1_2_value", "accelerometer_2_1_value", "accelerometer_2_2_value"])]
        x[:, acc] += 1.2 * severity
    elif mode == "drive_shaft_wear":
        x[:, COL["engine_vibration_amplitude"]] += 600 * severity
    elif mode == "overheating":
        x[:, COL["coolant_temp"]] += 35 * severity
    elif mode == "outdated_firmware":
        x[:, COL["control_unit_firmware"]] = np.where(severity > 0, 1000, x[:, COL["control_unit_firmware"]])
    elif mode == "battery_degradation":
        x[:, COL["battery_voltage"]] -= 40 * severity
    else:
        raise ValueError(f"unknown failure mode {mode!r}")


def make_fleet(n_cars: int = 30, n_events: int = 120, failing_share: float = 0.5, seed: int = 7,
               t0_ms: int | None = None, interval_s: float = 10.0, prefix: str = "car") -> Fleet:
    """Readings for ``n_cars`` cars x ``n_events`` events; failing cars cycle through FAILURE_MODES."""
    rng = np.random.default_rng(seed)
    interval_ms = int(interval_s * 1000)
    if t0_ms is None:  # recent, so Kafka's retention does not delete the records at once
        t0_ms = int(time.time() * 1000) - n_events * interval_ms
    x = _healthy(rng, n_cars, n_events)
    car_ids = [f"{prefix}{i:05d}" for i in range(n_cars)]
    truth = [TruthRecord(c, HEALTHY, t0_ms, 0.0, 0, interval_s) for c in car_ids]
    n_failing = int(round(n_cars * failing_share))
    for k, car in enumerate(rng.choice(n_cars, n_failing, replace=False)):
        mode = FAILURE_MODES[k % len(FAILURE_MODES)]
        onset = int(rng.integers(n_events // 3, 2 * n_events // 3))
        severity = np.clip((np.arange(n_events) - onset + 1) / RAMP_EVENTS, 0, 1)
        _inject(x[car], mode, severity, rng)
        truth.append(TruthRecord(car_ids[car], mode, t0_ms + onset * interval_ms, float(severity[onset]), onset, interval_s))
    values = x.transpose(1, 0, 2).reshape(-1, N_FEATURES).astype(np.float32)
    rows_car = [car_ids[i % n_cars] for i in range(n_cars * n_events)]
    ts = t0_ms + np.repeat(np.arange(n_events, dtype=np.int64) * interval_ms, n_cars)
    return Fleet(values, rows_car, ts, truth, interval_s)


def produce_fleet(kafka: KafkaConnection, fleet: Fleet, topic: str, truth_topic: str, partitions: int = 3) -> None:
    """Create the topics and produce the readings (framed Avro, keyed by car) and the ground truth.

    ``kafka`` must be allowed to create ``topic`` and ``truth_topic`` (the operator's identity on a
    secured stack: no service principal may create topics)."""
    from confluent_kafka import Producer

    from fleetpulse.codec import encode_batch

    ensure_topics(kafka, [TopicSpec(topic, partitions, -1), TopicSpec(truth_topic, 1, -1)])
    producer = Producer(kafka_config(kafka, **{"linger.ms": 20, "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000}))
    messages = [(topic, payload, car, ts) for payload, car, ts in zip(encode_batch(fleet.values), fleet.car_ids, fleet.ts_ms.tolist())]
    messages += [(truth_topic, r.to_json(), r.car_id, r.onset_ts) for r in fleet.truth]
    for to, value, key, ts in messages:
        try:
            producer.produce(to, value, key=key.encode(), timestamp=ts)
        except BufferError:
            producer.flush()
            producer.produce(to, value, key=key.encode(), timestamp=ts)
    if producer.flush(60):
        raise RuntimeError("could not deliver the synthetic fleet to Kafka")
