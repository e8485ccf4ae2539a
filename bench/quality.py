"""Detection quality offline: the simulator's car model stepped in memory (no MQTT, no Kafka), both models
trained as the pipeline trains them, measured on a later stretch they never saw.

The same split as `make demo`: a training stretch (seed S, 150 events per car) of which 30% of the cars
are held out to calibrate the threshold, and a detection stretch (seed S + 1, 250 events per car).
Labels and figures come from fleetpulse.evaluation (alerts under the serving hysteresis); the baseline
is the robust per-feature z-score on the same stretch. This is how the model choices in
components/models.py were measured.
Writes bench/results/quality.json.

    .venv/bin/python bench/quality.py [--quick] [--cars N] [--seeds 42 44]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components import evaluate, features, models  # noqa: E402
from components.kafka_dataset import is_eval_car  # noqa: E402
from fleetpulse import evaluation  # noqa: E402
from fleetpulse.ground_truth import HEALTHY, TruthRecord  # noqa: E402
from simulator.car_model import car_id, make_blocks  # noqa: E402
from simulator.failures import plan_failures  # noqa: E402

INTERVAL_S = 10.0


def stretch(cars: int, events: int, seed: int, failures: float = 0.05) -> tuple[np.ndarray, np.ndarray, evaluation.Labels]:
    """(values [N, 18], keys, labels) event-major, as the simulator publishes them; ground truth as it
    publishes it (a healthy record per car, one at each onset), on a clock of one event per interval."""
    plan = plan_failures(cars, events, failures, seed)
    blocks = make_blocks(cars, seed, plan, INTERVAL_S)
    ids = [car_id(i) for i in range(cars)]
    interval_ms = int(INTERVAL_S * 1000)
    values = np.concatenate([b.step().values.astype(np.float32) for _ in range(events) for b in blocks])
    keys = np.array([c.encode() for c in ids] * events, dtype=object)
    ts = np.repeat(np.arange(events, dtype=np.int64) * interval_ms, cars)
    truth = [TruthRecord(c, HEALTHY, 0, 0.0, 0, INTERVAL_S) for c in ids]
    for c in np.flatnonzero(plan.mode).tolist():
        onset = int(plan.onset_seq[c])
        truth.append(TruthRecord(ids[c], plan.mode_name(c), onset * interval_ms, 1.0, onset, INTERVAL_S))
    return values, keys, evaluation.label(keys, ts, truth)


def alert_figures(flags: np.ndarray, labels: evaluation.Labels) -> dict:
    m = evaluation.figures(flags, labels)
    h = m["hysteresis"]
    return {"alert_f1": round(h["f1"], 4), "alert_precision": round(h["precision"], 4), "alert_recall": round(h["recall"], 4),
            "median_detection_delay": h["median_detection_delay"], "failures_missed": h["failures_missed"],
            "false_alerts_per_1000_car_hours": round(h["false_alerts_per_1000_car_hours"], 2), "car_hours": round(m["car_hours"], 1),
            "healthy_cars_alerted_share": round(h["healthy_cars_alerted_share"], 4),
            "alert_recall_per_mode": {k: round(v["recall"], 3) for k, v in h["per_mode"].items()},
            "row_f1": round(m["f1"], 4), "row_f1_per_mode": {k: round(v["f1"], 3) for k, v in m["per_mode"].items()}}


def run_seed(cars: int, seed: int, epochs: int) -> dict:
    tv, tk, tl = stretch(cars, 150, seed)
    dv, dk, dl = stretch(cars, 250, seed + 1)
    held = is_eval_car(tk, 0.3)
    calib_failing = tl.failing[held]
    xt = tv[~held]
    center, scale = features.robust_stats(xt)
    out = {}
    for kind in models.MODEL_TYPES:
        t0 = time.perf_counter()
        if kind == models.AUTOENCODER:
            model, x, xc, xd = models.build_autoencoder(center, scale), xt, tv[held], dv
        else:
            w = models.DEFAULT_WINDOW
            model = models.build_lstm(center, scale, w)
            x = features.car_windows(tv, tk, w, np.flatnonzero(~held))
            xc, xd = features.car_windows(tv, tk, w, np.flatnonzero(held)), features.car_windows(dv, dk, w)
        models.fit(model, x, epochs)
        rscale = models.residual_scale(model, x)
        calib, detect = models.score(model, xc, rscale), models.score(model, xd, rscale)
        threshold = max(evaluate.best_f1_threshold(calib, calib_failing), evaluate.HEALTHY_SCORE)
        out[kind] = {"threshold": round(threshold, 4), "fit_s": round(time.perf_counter() - t0, 1),
                     **alert_figures(detect > threshold, dl)}
    z = evaluate.ZScoreBaseline(center, scale)
    z_threshold = evaluate.best_f1_threshold(z.score(tv[held]), calib_failing)
    out["baseline_robust_z"] = {"threshold": round(z_threshold, 4), **alert_figures(z.score(dv) > z_threshold, dl)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 cars, one seed")
    parser.add_argument("--cars", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=8, help="LSTM epochs (the demo's default)")
    args = parser.parse_args()
    cars = args.cars or (500 if args.quick else 2000)
    seeds = args.seeds or ([42] if args.quick else [42, 44])
    runs = {}
    for seed in seeds:
        print(f"seed {seed}: {cars} cars ...", file=sys.stderr, flush=True)
        runs[str(seed)] = run_seed(cars, seed, args.epochs)
        for kind, r in runs[str(seed)].items():
            print(f"  {kind}: alert F1 {r['alert_f1']} false alerts/1000 car-h {r['false_alerts_per_1000_car_hours']}", file=sys.stderr)
    table = []
    for seed, r in runs.items():
        base = r["baseline_robust_z"]
        for kind in models.MODEL_TYPES:
            table.append({"metric": f"{kind} alert F1, seed {seed} ({cars} cars; vs robust z-score)", "value": r[kind]["alert_f1"],
                          "unit": "F1", "baseline": base["alert_f1"], "ratio": round(r[kind]["alert_f1"] / max(base["alert_f1"], 1e-9), 2),
                          "target": ">= 0.95"})
            table.append({"metric": f"{kind} false alerts, seed {seed} (vs robust z-score)", "value": r[kind]["false_alerts_per_1000_car_hours"],
                          "unit": "per 1,000 car-h", "baseline": base["false_alerts_per_1000_car_hours"], "ratio": None, "target": "< 1"})
    result = {"bench": "quality", "cars": cars, "seeds": seeds, "lstm_epochs": args.epochs, "runs": runs, "table": table,
              "conditions": {"cpus": os.cpu_count(), "python": platform.python_version(), "quick": args.quick}}
    out = ROOT / "bench" / "results" / "quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "table"}))


if __name__ == "__main__":
    main()
