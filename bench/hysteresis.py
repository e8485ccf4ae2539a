"""The hysteresis rule's trade-off at both paces: `make demo`'s (250 events per car in the detection
stretch) and the original 100,000-car scenario's (0.1 ev/s for 5 minutes: 30 events per car).

A car alerts (status warning) once k_warning of its last n readings are over the threshold, and clears
after m clean readings in a row. More readings needed means fewer false alerts from a noisy reading
and more failures missed when a car has few events left after onset. Each rule is measured on the same
flags: the default fleet's autoencoder, trained in memory (seed 42, 150 events per car, 30% of the cars
held out for the threshold), scoring two detection stretches of 2,000 cars (seed 43) with 5% failing.
Failures are planned over each stretch, so at 30 events some begin in a car's last few.

Per rule and pace (fleetpulse.evaluation): alert F1 and recall over failing events (the demo's
headline figures: the events before a car alerts count as missed), recall over failure episodes, split
into those with at least k_warning events (a rule can alert on them) and the shorter ones, false alerts
per 1,000 car-hours, median detection delay. The baseline is the serving default, Rule(10, 3, 6, 5).
The simulator plans onsets early enough that every failure here has its 3 events; in a live run at
0.1 ev/s, onsets follow the wall clock and some do not (summary.json's failures_by_length).

    .venv/bin/python bench/hysteresis.py [--cars N] [--quick]

Writes bench/results/hysteresis.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components import evaluate, features, models  # noqa: E402
from components.kafka_dataset import is_eval_car  # noqa: E402
from devtools.benchmarking import write_result  # noqa: E402
from devtools.memory_fleet import labelled_fleet  # noqa: E402
from fleetpulse import evaluation  # noqa: E402
from fleetpulse.hysteresis import Rule  # noqa: E402

PACES = {"make demo (250 events per car)": 250, "original scenario (30 events per car)": 30}
RULES = {
    "default: 3 of 10, clear after 5": Rule(10, 3, 6, 5),
    "2 of 10, clear after 5": Rule(10, 2, 6, 5),
    "2 of 3, clear after 3": Rule(3, 2, 3, 3),
    "every reading over threshold: 1 of 10, clear after 5": Rule(10, 1, 6, 5),
    "3 of 10, clear after 2": Rule(10, 3, 6, 2),
}


def figures(flags: np.ndarray, labels, rule: Rule) -> dict:
    q = evaluation.quality(evaluation.alert_states(flags, labels.car, rule), labels)
    episodes = len(q.delays) + q.missed
    return {"rule": {"n": rule.n, "k_warning": rule.k_warning, "k_failing": rule.k_failing, "m": rule.m},
            "f1": round(q.counts.f1, 4), "precision": round(q.counts.precision, 4), "recall": round(q.counts.recall, 4),
            "failure_recall": round(len(q.delays) / episodes, 4) if episodes else None,
            "by_length": q.failures_with_at_least(rule.k_warning),
            "false_alerts_per_1000_car_hours": round(q.false_alerts_per_1000_car_hours, 2),
            "median_detection_delay_events": q.median_detection_delay}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="500 cars")
    args = ap.parse_args()
    if args.quick:
        args.cars = 500
    values, keys, labels = labelled_fleet("default", args.cars, 150, seed=42)
    held = is_eval_car(keys, 0.3)
    model = models.build_autoencoder(*features.robust_stats(values[~held]))
    models.fit(model, values[~held], epochs=0)
    rscale = models.residual_scale(model, values[~held])
    threshold = evaluate.healthy_tail_threshold(models.score(model, values[held], rscale), labels.subset(held))
    result: dict = {"cars": args.cars, "threshold": float(threshold), "paces": {}}
    table = []
    for pace, events in PACES.items():
        v, k, lab = labelled_fleet("default", args.cars, events, seed=43)
        flags = models.score(model, v, rscale) > threshold
        rows = {name: figures(flags, lab, rule) for name, rule in RULES.items()}
        result["paces"][pace] = rows
        base = rows["default: 3 of 10, clear after 5"]
        for name, row in rows.items():
            short = row["by_length"][f"fewer_than_{row['rule']['k_warning']}_events"]
            print(f"{pace:40s} {name:55s} F1 {row['f1']:.3f} recall {row['recall']:.3f} failures {row['failure_recall']} (short ones {short['detected']} of "
                  f"{short['failures']}) false alerts {row['false_alerts_per_1000_car_hours']}")
            table.append({"metric": f"failure recall, {pace}, {name} (vs default)", "value": row["failure_recall"], "unit": "share",
                          "baseline": base["failure_recall"], "ratio": None, "target": None})  # fmt: skip
            table.append({"metric": f"false alerts, {pace}, {name} (vs default)", "value": row["false_alerts_per_1000_car_hours"],
                          "unit": "per 1,000 car-h", "baseline": base["false_alerts_per_1000_car_hours"], "ratio": None,
                          "target": "< 1"})  # fmt: skip
    print(write_result("hysteresis", result, table))


if __name__ == "__main__":
    main()
