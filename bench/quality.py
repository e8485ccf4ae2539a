"""Detection quality across fleets: train on one fleet profile, detect on another, every pair.

The simulator's car model stepped in memory (no MQTT, no Kafka) for each profile of simulator/profiles.py.
Per profile, a training stretch (seed 42, 150 events per car) of which 30% of the cars are held out to
calibrate the threshold (the split `make demo` uses), and a detection stretch (seed 43, 250 events per
car). Each model (both models and the robust z-score baseline) is trained and calibrated on one
profile's training stretch and measured on every profile's detection stretch: the diagonal is the
figure a fleet gets from a model trained on itself, the off-diagonal the one a fleet lives with when the
model was trained on another. Figures come from fleetpulse.evaluation (alerts under the serving
hysteresis); `recall` is the worst failure mode's. The models' threshold comes from the held-out
cars' healthy scores (components.evaluate.healthy_tail_threshold); the baseline keeps its best-F1 one,
the bar to beat (`calibration` in the JSON).

`ceiling` is the recall a perfect detector would reach on each detection stretch through the same
hysteresis: it flags every failing reading whose signature the car model lets show (a load-dependent
signature needs load: overheating shows only when the coolant is above any healthy reading, a degraded
battery only under current, a worn shaft only when moving). A cell's recall is bounded by it.

    .venv/bin/python bench/quality.py [--quick] [--cars N] [--epochs N] [--profiles default urban ...]

`sensor_layer` repeats cells with simulator/sensor_layer.py on (SENSORS) for the autoencoder and the
baseline: trained on clean default cars and detecting on noisy ones (a fleet whose sensors are worse
than any the model saw), and trained and detecting with the layer on.

Writes bench/results/quality.json ({"default_model", "matrix": [...], "ceiling", "sensor_layer", ...}).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components import evaluate, features, models  # noqa: E402
from components.kafka_dataset import is_eval_car  # noqa: E402
from devtools.benchmarking import write_result  # noqa: E402
from fleetpulse import evaluation  # noqa: E402
from fleetpulse.ground_truth import HEALTHY, TruthRecord  # noqa: E402
from simulator import car_model as cm  # noqa: E402
from simulator.failures import HEALTHY_COOLANT_PER_AMP, plan_failures  # noqa: E402
from simulator.profiles import PROFILES, get as get_profile  # noqa: E402
from simulator.sensor_layer import SensorLayer  # noqa: E402

INTERVAL_S = 10.0
TRAIN_EVENTS, DETECT_EVENTS = 150, 250
TRAIN_SEED, DETECT_SEED = 42, 43
HELD_OUT = 0.3
HEALTHY_COOLANT_SPREAD = 0.8 * 20.0  # the car model's 0.8 x U(0, 20): healthy coolant is at most this above 0.8 x intake + 0.1 x current
BASELINE = "baseline"
KINDS = (*models.MODEL_TYPES, BASELINE)
SENSORS = SensorLayer(noise=1.0, quantise=True, stuck=0.001)
"""The `sensor_layer` cells' sensors: typical noise, OBD-style steps, one stuck reading per 1,000."""


def stretch(profile: str, cars: int, events: int, seed: int, sensors: SensorLayer | None = None, failures: float = 0.05):
    """(values [N, 18], keys, labels) event-major, as the simulator publishes them; ground truth as it
    publishes it (a healthy record per car, one at each onset), on a clock of one event per interval."""
    plan = plan_failures(cars, events, failures, seed)
    blocks = cm.make_blocks(cars, seed, plan, INTERVAL_S, profile=get_profile(profile), sensors=sensors)
    ids = [cm.car_id(i) for i in range(cars)]
    interval_ms = int(INTERVAL_S * 1000)
    values = np.concatenate([b.step().values.astype(np.float32) for _ in range(events) for b in blocks])
    keys = np.array([c.encode() for c in ids] * events, dtype=object)
    ts = np.repeat(np.arange(events, dtype=np.int64) * interval_ms, cars)
    truth = [TruthRecord(c, HEALTHY, 0, 0.0, 0, INTERVAL_S) for c in ids]
    for c in np.flatnonzero(plan.mode).tolist():
        onset = int(plan.onset_seq[c])
        truth.append(TruthRecord(ids[c], plan.mode_name(c), onset * interval_ms, 1.0, onset, INTERVAL_S))
    return values, keys, evaluation.label(keys, ts, truth)


def visible(values: np.ndarray, labels: evaluation.Labels) -> np.ndarray:
    """Failing readings whose signature the car model lets show (see the module docstring)."""
    current, speed = values[:, cm.CURRENT], values[:, cm.SPEED]
    excess = values[:, cm.COOLANT] - 0.8 * values[:, cm.IAT] - HEALTHY_COOLANT_PER_AMP * current
    shows = {"overheating": excess > HEALTHY_COOLANT_SPREAD, "battery_degradation": current > 0.5, "drive_shaft_wear": speed > 0.5}
    out = labels.failing.copy()
    for mode, where in shows.items():
        rows = labels.modes == mode
        out[rows] = where[rows]
    return out


def cell(flags: np.ndarray, labels: evaluation.Labels) -> dict:
    q = evaluation.quality(evaluation.alert_states(flags, labels.car), labels)
    per_mode = {m: round(r, 4) for m, r in q.recall_per_mode.items()}
    return {"f1": round(q.counts.f1, 4), "precision": round(q.counts.precision, 4), "recall": min(per_mode.values(), default=0.0),
            "recall_per_mode": per_mode, "false_alerts_per_1000_car_hours": round(q.false_alerts_per_1000_car_hours, 2),
            "healthy_cars_alerted_share": round(q.healthy_cars_alerted_share, 4), "car_hours": round(q.car_hours, 1),
            "median_detection_delay": q.median_detection_delay}


class Detector:
    """One trained and calibrated model (or the baseline): rows -> flags."""

    def __init__(self, kind: str, values: np.ndarray, keys: np.ndarray, labels: evaluation.Labels, epochs: int):
        held = is_eval_car(keys, HELD_OUT)
        center, scale = features.robust_stats(values[~held])
        self.kind, self.window = kind, models.DEFAULT_WINDOW
        t0 = time.perf_counter()
        if kind == BASELINE:
            self.z = evaluate.ZScoreBaseline(center, scale)
            self.threshold = evaluate.best_f1_threshold(self.z.score(values[held]), labels.failing[held])
        else:
            self.model = models.build_autoencoder(center, scale) if kind == models.AUTOENCODER else models.build_lstm(center, scale, self.window)
            x = self._inputs(values, keys, np.flatnonzero(~held))
            models.fit(self.model, x, epochs)
            self.rscale = models.residual_scale(self.model, x)
            calib = models.score(self.model, self._inputs(values, keys, np.flatnonzero(held)), self.rscale)
            self.threshold = evaluate.healthy_tail_threshold(calib, labels.subset(held))
        self.fit_s = time.perf_counter() - t0

    def _inputs(self, values, keys, rows=None):
        if self.kind == models.AUTOENCODER:
            return values if rows is None else values[rows]
        return features.car_windows(values, keys, self.window, rows)

    def flags(self, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
        if self.kind == BASELINE:
            return self.z.score(values) > self.threshold
        return models.score(self.model, self._inputs(values, keys), self.rscale) > self.threshold


def summary_rows(matrix: list[dict], ceiling: dict, cars: int) -> list[dict]:
    """The bench table: per model, its default -> default cell and its worst off-diagonal figures, beside the z-score's."""

    def home(kind):
        return next((c for c in matrix if c["model"] == kind and c["train_profile"] == c["eval_profile"] == "default"), None)

    def off(kind):
        return [c for c in matrix if c["model"] == kind and c["train_profile"] != c["eval_profile"]]

    rows = []
    for kind in models.MODEL_TYPES:
        own, base = home(kind), home(BASELINE)
        if own:
            rows.append({"metric": f"{kind} alert F1, default -> default ({cars} cars; vs robust z-score)", "value": own["f1"], "unit": "F1",
                         "baseline": base["f1"], "ratio": round(own["f1"] / max(base["f1"], 1e-9), 2), "target": ">= 0.95"})
        cells, base = off(kind), off(BASELINE)
        if not cells:
            continue
        low = min(cells, key=lambda c: c["recall"])
        mode = min(low["recall_per_mode"], key=low["recall_per_mode"].get)
        rows += [
            {"metric": f"{kind} worst off-diagonal alert F1 (vs z-score's worst)", "value": min(c["f1"] for c in cells), "unit": "F1",
             "baseline": min(c["f1"] for c in base), "ratio": None, "target": ">= 0.95"},
            {"metric": f"{kind} most false alerts in an off-diagonal cell", "value": max(c["false_alerts_per_1000_car_hours"] for c in cells),
             "unit": "per 1,000 car-h", "baseline": max(c["false_alerts_per_1000_car_hours"] for c in base), "ratio": None, "target": "< 1"},
            {"metric": f"{kind} most healthy cars alerted in an off-diagonal cell", "value": max(c["healthy_cars_alerted_share"] for c in cells),
             "unit": "share", "baseline": max(c["healthy_cars_alerted_share"] for c in base), "ratio": None, "target": "< 0.02"},
            {"metric": f"{kind} lowest off-diagonal recall ({low['train_profile']} -> {low['eval_profile']}, {mode})", "value": low["recall"],
             "unit": "recall", "baseline": None, "ratio": None,
             "target": f">= 0.95; ceiling {ceiling[low['eval_profile']]['recall_per_mode'][mode]}"},
        ]
    return rows


def measure(out: list, detector: Detector, train: str, target: str, data, **extra) -> None:
    """Append the cell of ``detector`` (trained on ``train``) detecting on ``data``, and print it."""
    dv, dk, dl = data
    out.append({"train_profile": train, "eval_profile": target, "model": detector.kind, **extra,
                "threshold": round(float(detector.threshold), 4), **cell(detector.flags(dv, dk), dl)})
    c = out[-1]
    print(f"{train:>8} -> {target:<8} {detector.kind:<12} {'(sensor layer) ' if extra else ''}F1 {c['f1']:.3f}  "
          f"worst-mode recall {c['recall']:.3f}  false alerts {c['false_alerts_per_1000_car_hours']:7.2f}/1000 car-h  "
          f"healthy alerted {c['healthy_cars_alerted_share']:.3f}", file=sys.stderr, flush=True)


def run_matrix(profiles: list[str], cars: int, epochs: int) -> tuple[list[dict], dict, dict]:
    """(matrix cells, ceiling per profile, fit seconds per training)."""
    detect = {p: stretch(p, cars, DETECT_EVENTS, DETECT_SEED) for p in profiles}
    ceiling = {p: cell(visible(v, lab), lab) for p, (v, _, lab) in detect.items()}
    matrix, fit_s = [], {}
    for train in profiles:
        values, keys, labels = stretch(train, cars, TRAIN_EVENTS, TRAIN_SEED)
        for kind in KINDS:
            detector = Detector(kind, values, keys, labels, epochs)
            fit_s[f"{train}/{kind}"] = round(detector.fit_s, 1)
            for target, data in detect.items():
                measure(matrix, detector, train, target, data)
    ceiling = {p: {"recall": c["recall"], "recall_per_mode": c["recall_per_mode"]} for p, c in ceiling.items()}
    return matrix, ceiling, fit_s


def run_sensor_layer(profiles: list[str], cars: int) -> list[dict]:
    """Default-trained autoencoder and baseline on fleets with the sensor layer, trained without it and with it."""
    noisy = {p: stretch(p, cars, DETECT_EVENTS, DETECT_SEED, SENSORS) for p in profiles}
    cells = []
    for train_sensors in (None, SENSORS):
        values, keys, labels = stretch("default", cars, TRAIN_EVENTS, TRAIN_SEED, train_sensors)
        for kind in (models.AUTOENCODER, BASELINE):
            detector = Detector(kind, values, keys, labels, epochs=0)
            # Clean training: only the default fleet (a fleet whose sensors are worse than any the model saw).
            for target in profiles if train_sensors else ["default"]:
                measure(cells, detector, "default", target, noisy[target], train_sensors=train_sensors is not None, eval_sensors=True)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 cars, LSTM 2 epochs")
    parser.add_argument("--cars", type=int, default=None, help="cars per stretch (default 1000)")
    parser.add_argument("--epochs", type=int, default=None, help="LSTM epochs (default 8, the demo's)")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    args = parser.parse_args()
    cars = args.cars or (300 if args.quick else 1000)
    epochs = args.epochs or (2 if args.quick else 8)
    t0 = time.perf_counter()
    matrix, ceiling, fit_s = run_matrix(args.profiles, cars, epochs)
    sensor_cells = run_sensor_layer(args.profiles, cars) if "default" in args.profiles else []
    result = {"default_model": models.AUTOENCODER, "matrix": matrix, "ceiling": ceiling,
              "calibration": {models.AUTOENCODER: "healthy_tail", models.LSTM: "healthy_tail", BASELINE: "best_f1",
                              "false_alert_budget_per_1000_car_hours": evaluate.FALSE_ALERT_BUDGET},
              "sensor_layer": {"sensors": asdict(SENSORS), "cells": sensor_cells},
              "fleet": {"cars": cars, "failing_share": 0.05, "train_events_per_car": TRAIN_EVENTS, "detect_events_per_car": DETECT_EVENTS,
                        "train_seed": TRAIN_SEED, "detect_seed": DETECT_SEED, "held_out_for_threshold": HELD_OUT,
                        "sample_interval_s": INTERVAL_S, "lstm_epochs": epochs},
              "fit_s": fit_s, "wall_s": round(time.perf_counter() - t0, 1), "quick": args.quick}
    path = write_result("quality", result, summary_rows(matrix, ceiling, cars))
    print(f"wrote {path.relative_to(ROOT)} in {result['wall_s']:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
