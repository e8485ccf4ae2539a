"""`fleetpulse train` gates like the pipeline, and training never sees an implausible reading."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from components import kafka_dataset
from components.cli import train
from components.settings import MIN_F1
from fleetpulse.codec import encode_batch
from fleetpulse.readings import HIGH, LOW


def pipeline_default(name: str) -> float:
    tree = ast.parse((Path(__file__).resolve().parents[2] / "kubeflow" / "pipeline.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "car_anomaly_training")
    args = fn.args.args[-len(fn.args.defaults):]
    return next(ast.literal_eval(d) for a, d in zip(args, fn.args.defaults) if a.arg == name)


def test_the_cli_refuses_below_the_same_f1_as_the_pipeline():
    assert pipeline_default("min_f1") == MIN_F1
    assert next(p.default for p in train.params if p.name == "min_f1") == MIN_F1


def test_rows_with_a_nan_infinite_or_impossible_reading_are_dropped_and_counted_not_trained_on():
    import tensorflow as tf

    rows = np.tile((LOW + HIGH) / 2, (5, 1))
    rows[1, 0], rows[2, 4], rows[3, 3] = np.nan, np.inf, 9.0
    payloads = tf.constant([*encode_batch(rows), b"\x00garbage"])
    values, decodable, plausible = kafka_dataset._decode(payloads)
    assert decodable.tolist() == [True] * 5 + [False] and plausible.tolist() == [True, False, False, False, True, False]
    assert np.isfinite(values[plausible]).all()
