"""The two anomaly models and their SavedModel export.

Both take raw cardata-v1 features; robust scaling (median / MAD, adapted on the training window) is
the first layer, so the served model has no train/serve skew. The Keras model outputs a residual in
scaled space (reconstruction minus input, or forecast minus actual); ``score`` is the largest
residual in units of that feature's healthy residual tail on the training window (see residual_scale).
Training fits the residual to zero, with a Huber loss so failing cars hidden in the unlabelled
stream pull the fit less than they would under a squared loss.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fleetpulse.contract import N_FEATURES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

AUTOENCODER = "autoencoder"
LSTM = "lstm"
MODEL_TYPES = (AUTOENCODER, LSTM)
MODEL_NAMES = {AUTOENCODER: "car-anomaly", LSTM: "car-anomaly-lstm"}
DEFAULT_WINDOW = 8
UNCALIBRATED = np.float32(np.inf)  # threshold until evaluate calibrates it


def _scaling_layer(center: np.ndarray, scale: np.ndarray):
    import keras

    from components.features import CLIP

    class RobustScaling(keras.layers.Layer):
        """(x - median) / (1.4826 MAD), clipped; weights set from the training window, never trained."""

        def build(self, input_shape):
            self.center = self.add_weight(shape=(N_FEATURES,), initializer=keras.initializers.Constant(center), trainable=False, name="center")
            self.scale = self.add_weight(shape=(N_FEATURES,), initializer=keras.initializers.Constant(scale), trainable=False, name="scale")

        def call(self, x):
            return keras.ops.clip((x - self.center) / self.scale, -CLIP, CLIP)

    return RobustScaling(name="robust_scaling")


def build_autoencoder(center: np.ndarray, scale: np.ndarray):
    """A masked (cross-feature) autoencoder: each scaled feature is reconstructed from the other 17.

    Measured on simulator data (bench notes in the report): a dense 18-12-6-12-18 bottleneck
    autoencoder reached F1 ~0.70 and missed the relational failures (battery sag vs charge, vibration
    vs speed), because a bottleneck wide enough to pass the noisy features through also passes a
    broken relation through. Reconstructing a feature without seeing it cannot copy it, so a
    broken relation or an out-of-range value leaves a residual (F1 ~0.84 on the same data).
    """
    import keras

    class ZeroDiagonal(keras.constraints.Constraint):
        def __call__(self, w):
            return w * (1.0 - keras.ops.eye(N_FEATURES))

    raw = keras.Input((N_FEATURES,), name="input")
    z = _scaling_layer(center, scale)(raw)
    recon = keras.layers.Dense(N_FEATURES, kernel_constraint=ZeroDiagonal(), kernel_initializer="zeros", name="cross_features")(z)
    residual = keras.layers.Subtract(name="residual")([recon, z])
    return keras.Model(raw, residual, name="car_anomaly_autoencoder")


def build_lstm(center: np.ndarray, scale: np.ndarray, window: int = DEFAULT_WINDOW):
    """Forecast a car's latest reading from the ``window - 1`` before it; residual = forecast - actual."""
    import keras

    raw = keras.Input((window, N_FEATURES), name="input")
    z = _scaling_layer(center, scale)(raw)
    history = keras.layers.Lambda(lambda t: t[:, :-1, :], name="history")(z)
    actual = keras.layers.Lambda(lambda t: t[:, -1, :], name="actual")(z)
    h = keras.layers.LSTM(32)(history)
    forecast = keras.layers.Dense(N_FEATURES)(h)
    residual = keras.layers.Subtract(name="residual")([forecast, actual])
    return keras.Model(raw, residual, name="car_anomaly_lstm")


def fit(model, x: np.ndarray, epochs: int, batch_size: int = 256, seed: int = 0, progress=None) -> list[float]:
    """Fit the residual to zero; returns the loss per epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.Huber(delta=1.0))
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: progress(e + 1, epochs, logs["loss"]))] if progress else []
    history = model.fit(x, np.zeros((len(x), N_FEATURES), np.float32), epochs=epochs, batch_size=batch_size,
                        shuffle=True, verbose=0, callbacks=callbacks)
    return [float(v) for v in history.history["loss"]]


RESIDUAL_SCALE_FLOOR = 0.3  # scaled units; below it float rounding on exact relations would look like anomalies
HEALTHY_TRIM = 0.03  # share of training rows dropped as likely failing before the healthy tail is measured
HEALTHY_QUANTILE = 0.999  # per-feature |residual| quantile that maps to a score of 1
OUTLIER_MADS = 10.0  # rows further out than this (MAD units) are dropped too, however many: a window with many failing cars


def residual_scale(model, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Per-feature healthy-tail scale: the 99.9th percentile of |residual| on the training rows left
    after dropping the 3% most anomalous (under a MAD scale), floored.

    The unlabelled window holds ~5% failing cars at random onsets; trimming the rows the MAD scale
    finds most anomalous removes most of them, so the quantile measures healthy noise. Each feature's
    healthy maximum then maps to ~1, so bounded-noise features (coolant's U(0, 20) term, accelerometer
    bumps) no longer hide a shift that is small in MAD units but outside the healthy range.
    Measured on simulator data (2,000 cars, train seed 42, detection stretch seed 43, the transformer's
    hysteresis): MAD scale F1 0.926 (overheating 0.84); this scale F1 0.947 (overheating 0.95).
    Quantiles 0.995-0.9995 and trims 0-5% were within 0.01; an untrimmed max (q = 1) fell to 0.71."""
    residual = model.predict(x, batch_size=batch_size, verbose=0)
    mad = np.median(np.abs(residual - np.median(residual, axis=0)), axis=0) * 1.4826
    size = np.abs(residual)
    rough = (size / np.maximum(mad, RESIDUAL_SCALE_FLOOR)).max(axis=1)
    healthy = rough <= min(np.quantile(rough, 1.0 - HEALTHY_TRIM), OUTLIER_MADS)
    tail = np.quantile(size[healthy], HEALTHY_QUANTILE, axis=0)
    return np.maximum(tail, RESIDUAL_SCALE_FLOOR).astype(np.float32)


def score(model, x: np.ndarray, rscale: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """max over features of |residual| / residual scale: how far the worst feature is off its relations."""
    residual = model.predict(x, batch_size=batch_size, verbose=0)
    return np.abs(residual / rscale).max(axis=-1).astype(np.float32)


def export(model, path: Path, model_type: str, window: int, rscale: np.ndarray, threshold: float = UNCALIBRATED) -> Path:
    """Save a SavedModel with signature ``serving_default``: input -> {score [N], anomaly [N]}."""
    import tensorflow as tf

    shape = [None, N_FEATURES] if model_type == AUTOENCODER else [None, window, N_FEATURES]

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.threshold = tf.Variable(np.float32(threshold), trainable=False, name="threshold")
            self.residual_scale = tf.Variable(np.asarray(rscale, np.float32), trainable=False, name="residual_scale")

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
        def serve(self, input):  # noqa: A002 - the signature's input is named `input` by contract
            residual = self.model(input, training=False)
            s = tf.reduce_max(tf.abs(residual / self.residual_scale), axis=-1)
            return {"score": s, "anomaly": s > self.threshold}

    scorer = Scorer()
    path = Path(path)
    tf.saved_model.save(scorer, str(path), signatures={"serving_default": scorer.serve})
    return path


def set_threshold(saved_model_dir: Path, threshold: float, out_dir: Path) -> Path:
    """Copy a SavedModel with its ``threshold`` variable set (evaluate calibrates it after training)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    loaded.threshold.assign(np.float32(threshold))
    tf.saved_model.save(loaded, str(out_dir), signatures={"serving_default": loaded.signatures["serving_default"]})
    return Path(out_dir)


def load_scorer(saved_model_dir: Path):
    """A function rows -> scores through the SavedModel's serving signature (what the server runs)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    serve = loaded.signatures["serving_default"]

    def run(x: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        out = [serve(input=tf.constant(x[i : i + batch_size], tf.float32))["score"].numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    return run, loaded
