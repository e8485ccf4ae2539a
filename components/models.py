"""The two anomaly models and their SavedModel export.

Both take raw cardata-v1 features. Their first layer turns them into operating-point-invariant features
(components/features.py: each of the car model's relations scored against a tolerance that grows with
its load; the operating point itself dropped; tyres and accelerometers as read, firmware as its distance from the versions the fleet runs), then robust
scaling (median / MAD, adapted on the training window), all fitted at training time and saved in the
model, so the served model has no train/serve skew. The Keras model outputs a residual in
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


def _relation_layer():
    import keras

    from components.features import N_RELATION_PARAMS, UNFITTED_RELATIONS, invariant_features

    class RelationResiduals(keras.layers.Layer):
        """Raw readings -> invariant features; coefficients and tolerances set by fit_relations, never trained."""

        def build(self, input_shape):
            self.params = self.add_weight(shape=(N_RELATION_PARAMS,), initializer=keras.initializers.Constant(UNFITTED_RELATIONS),
                                          trainable=False, name="params")

        def call(self, x):
            return invariant_features(x, keras.ops.convert_to_tensor(self.params), keras.ops)

    return RelationResiduals(name="relations")


def _invariant_scaling(center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw features' robust statistics for the free sensors; relation errors are already in
    tolerance units and the operating point is 0, so those pass unscaled."""
    from components.features import FIRMWARE, FREE_SENSORS

    free = np.isin(np.arange(N_FEATURES), FREE_SENSORS) & (np.arange(N_FEATURES) != FIRMWARE)
    # Firmware arrives as a distance in version numbers from a version the fleet runs: 0 when healthy,
    # and one version number off is already far out.
    return np.where(free, center, 0.0).astype(np.float32), np.where(free, scale, 1.0).astype(np.float32)


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


PAIRS = [(i, k) for i in range(N_FEATURES) for k in range(i + 1, N_FEATURES)]
N_CROSS = N_FEATURES + len(PAIRS) + 1  # scaled features, their pairwise products, a constant


def cross_mask() -> np.ndarray:
    """[N_CROSS, 18]: which cross features may reconstruct each feature: only the free sensors and their
    products (features.FREE_SENSORS), never the feature itself nor a product it is part of.

    Relation errors are not reconstructed from each other: two relations that read the same noisy
    sensor (voltage is in the battery's and the current's) share its noise, and a fit of one on the
    other learned a weight that holds only at the training fleet's load (sensor layer on, default ->
    urban: 414 false alerts per 1,000 car-h; 0 without it)."""
    from components.features import FREE_SENSORS

    mask = np.zeros((N_CROSS, N_FEATURES), np.float32)
    mask[N_CROSS - 1, :] = 1.0  # the constant
    for j in range(N_FEATURES):
        for i in FREE_SENSORS:
            mask[i, j] = float(i != j)
        for p, (i, k) in enumerate(PAIRS):
            mask[N_FEATURES + p, j] = float(i in FREE_SENSORS and k in FREE_SENSORS and j not in (i, k))
    return mask


def _cross_features_layer():
    import keras

    left = np.array([i for i, _ in PAIRS])
    right = np.array([k for _, k in PAIRS])

    class CrossFeatures(keras.layers.Layer):
        """[N, 18] scaled -> [N, N_CROSS]: the features, every pairwise product, and 1."""

        def call(self, z):
            products = keras.ops.take(z, left, axis=1) * keras.ops.take(z, right, axis=1)
            return keras.ops.concatenate([z, products, keras.ops.ones_like(z[:, :1])], axis=1)

    return CrossFeatures(name="cross_features")


def _reconstruction_layer():
    import keras

    mask = cross_mask()

    class Masked(keras.constraints.Constraint):
        def __call__(self, w):
            return w * mask

    # Weights are solved by least squares (fit_cross_reconstruction), not trained: not trainable.
    return keras.layers.Dense(N_FEATURES, use_bias=False, kernel_constraint=Masked(), kernel_initializer="zeros",
                              trainable=False, name="reconstruction")


def build_autoencoder(center: np.ndarray, scale: np.ndarray):
    """A masked cross-feature autoencoder: each scaled feature is reconstructed from the other 17
    and their pairwise products (never from itself); residual = reconstruction - scaled input.

    Why this shape (measured on simulator data, 2,000 cars, train seed 42, detection seed 43, the
    serving hysteresis): a dense 18-12-6-12-18 bottleneck autoencoder reached F1 ~0.70 and missed the
    relational failures, because a bottleneck wide enough to pass the noisy features through also
    passes a broken relation through. Reconstructing a feature without seeing it cannot copy it. A
    linear masked reconstruction reached alert F1 0.951 with 25 false alerts per 1,000 car-hours, almost
    all on current draw and throttle: the car's current is throttle x (265 - pack voltage), a product
    no linear map rebuilds. With the pairwise products it reached F1 0.983 and 0 false alerts.

    That model reconstructed the raw readings, and learned each relation at the training fleet's
    operating point only (bench/quality.py, 1,000 cars, every pair of fleet profiles): trained on the
    default fleet it flagged 77% of an ageing fleet's healthy cars (1,185 false alerts per 1,000 car-h:
    its cells sag a little, and throttle was rebuilt from current and voltage by a fit that held only
    over the default charge range), and caught a tenth of the degraded batteries and a quarter of the
    worn shafts of an urban fleet, whose small currents and speeds kept those signatures under a
    floor set in the default fleet's units. Trained on highway cars, 92% of urban cars were alerted.
    Now the input is the relation features (features.invariant_features): each relation's error in
    units of a tolerance that grows with its load, and the autoencoder reconstructs only the sensors no
    relation covers (cross_mask). Every one of the 20 off-diagonal cells: 0 false alerts, no healthy car
    alerted, recall at the ceiling the car model allows for every mode but overheating, which stays
    0.02-0.05 under it (0.93 of 0.98) and on urban cars reaches 0.22-0.23 of 0.62 (bench/quality.py's
    ceiling); the diagonal's default cell F1 0.990 (was 0.990). Sparse term selection (forward
    selection by least squares) instead of the masked dense fit changed nothing once the relation
    errors were no longer inputs; training the old model on a mix of the other four fleets did not
    help it (leave-one-out: 0.2-0.8 F1, up to 1,260 false alerts per 1,000 car-h on cold cars).
    """
    import keras

    raw = keras.Input((N_FEATURES,), name="input")
    z = _scaling_layer(*_invariant_scaling(center, scale))(_relation_layer()(raw))
    recon = _reconstruction_layer()(_cross_features_layer()(z))
    residual = keras.layers.Subtract(name="residual")([recon, z])
    return keras.Model(raw, residual, name="car_anomaly_autoencoder")


LSTM_UNITS_PER_FEATURE = 4
LSTM_CORRECTION_L2 = 1e-3  # keeps the forecast correction small unless the history really predicts


def _masked_lstm_constraints(units: int):
    """Kernel masks for one LSTM whose units come in 18 groups: group j never sees feature j's history
    and its recurrence stays inside the group, so it is 18 small LSTMs in one layer."""
    import keras

    n = N_FEATURES * units
    group = np.repeat(np.arange(N_FEATURES), units)  # unit -> the feature it forecasts
    kernel = np.tile((np.arange(N_FEATURES)[:, None] != group[None, :]).astype(np.float32), (1, 4))  # i, f, c, o gates
    recurrent = np.tile((group[:, None] == group[None, :]).astype(np.float32), (1, 4))
    out = (group[:, None] == np.arange(N_FEATURES)[None, :]).astype(np.float32)

    class Mask(keras.constraints.Constraint):
        def __init__(self, mask):
            self.mask = mask

        def __call__(self, w):
            return w * self.mask

    return n, Mask(kernel), Mask(recurrent), Mask(out)


def build_lstm(center: np.ndarray, scale: np.ndarray, window: int = DEFAULT_WINDOW):
    """A forecaster: the latest reading is predicted from the same cross-feature reconstruction as the
    autoencoder plus a masked LSTM over the car's ``window - 1`` readings before it; residual =
    prediction - actual.

    The LSTM adds what only time tells (speed follows throttle with inertia, intake temperature
    drifts). It is masked like the reconstruction: feature j's forecast never sees feature j's own
    history. Measured: an unmasked LSTM correction learned to carry a failed value forward (a flat
    tyre forecast as flat one reading after the onset) and fell to F1 0.68; a plain LSTM forecaster
    over all 18 features reached F1 0.19. This one: alert F1 0.966, 0 false alerts per 1,000 car-hours
    (2,000 cars, seeds 42/43, 5 epochs). Its correction is L2-regularised: without it, four training
    orders of the same rows gave F1 0.967-0.978 and 0-2.9 false alerts per 1,000 car-hours (one demo
    run 45); with it, F1 0.983-0.985 and 0 for all four.

    On the relation features (as the autoencoder) its off-diagonal cells went from up to 2,740 false
    alerts per 1,000 car-h (urban -> ageing) to 0 in all 20. The features are nearly independent from
    one reading to the next in the simulator's cars, so its correction stays small and its figures are
    the autoencoder's within 0.01 F1.
    """
    import keras

    units, kernel_mask, recurrent_mask, out_mask = _masked_lstm_constraints(LSTM_UNITS_PER_FEATURE)
    raw = keras.Input((window, N_FEATURES), name="input")
    z = _scaling_layer(*_invariant_scaling(center, scale))(_relation_layer()(raw))
    actual = keras.layers.Lambda(lambda t: t[:, -1, :], name="actual")(z)
    cross = _reconstruction_layer()(_cross_features_layer()(actual))
    # Changes relative to the latest reading, not levels: a level the window never held (a charge lower
    # than any in training) would push the LSTM's tanh units where it never fitted them.
    changes = keras.layers.Lambda(lambda t: t[:, :-1, :] - t[:, -1:, :], name="changes")(z)
    h = keras.layers.LSTM(units, kernel_constraint=kernel_mask, recurrent_constraint=recurrent_mask, name="lstm")(changes)
    correction = keras.layers.Dense(N_FEATURES, kernel_constraint=out_mask, kernel_initializer="zeros", kernel_regularizer=keras.regularizers.L2(LSTM_CORRECTION_L2), name="forecast")(h)
    forecast = keras.layers.Add(name="prediction")([cross, correction])
    residual = keras.layers.Subtract(name="residual")([forecast, actual])
    return keras.Model(raw, residual, name="car_anomaly_lstm")


CROSS_TRIM = 0.03  # share of rows, most anomalous first, left out of each refit (failing cars in the window)
CROSS_ROUNDS = 3
CROSS_RIDGE = 1e-6


def fit_cross_reconstruction(model, x: np.ndarray, rounds: int = CROSS_ROUNDS, progress=None) -> dict:
    """Solve the reconstruction layer by trimmed least squares, per feature, in closed form.

    Each round solves the normal equations on the rows kept, then drops the ``CROSS_TRIM`` rows whose
    worst residual (in MAD units) is largest: the unlabelled window holds failing cars, and a
    squared loss would bend the relations towards them. Closed form because the problem is linear
    in the weights: exact in one pass per round, where Adam needed 20 epochs to reach a worse fit.
    For the LSTM, ``x`` are windows and the layer is solved on their last rows.
    """
    import keras

    layer = model.get_layer("reconstruction")
    z_model = keras.Model(model.inputs, model.get_layer("cross_features").input)
    cross_model = keras.Model(model.inputs, model.get_layer("cross_features").output)
    z = np.asarray(z_model.predict(x, batch_size=8192, verbose=0), np.float64)
    if z.ndim == 3:
        z = z[:, -1, :]
    features = np.asarray(cross_model.predict(x, batch_size=8192, verbose=0), np.float64)
    mask = cross_mask().astype(bool)
    weights = np.zeros((N_CROSS, N_FEATURES))
    keep = np.ones(len(z), bool)
    for r in range(rounds):
        kept = features[keep]
        gram, cross = kept.T @ kept, kept.T @ z[keep]  # one pass; each feature solves its sub-block
        ridge = CROSS_RIDGE * len(kept)
        for j in range(N_FEATURES):
            use = mask[:, j]
            weights[use, j] = np.linalg.solve(gram[np.ix_(use, use)] + ridge * np.eye(use.sum()), cross[use, j])
        residual = features @ weights - z
        mad = np.maximum(np.median(np.abs(residual), axis=0) * 1.4826, 0.05)
        rough = np.abs(residual / mad).max(axis=1)
        keep = rough <= np.quantile(rough, 1.0 - CROSS_TRIM)
        if progress:  # loss: mean |residual| of the rows kept, capped at 1 (a Huber-like figure)
            progress(r + 1, rounds, float(np.mean(np.minimum(np.abs(residual[keep]), 1.0))))
    layer.set_weights([weights.astype(np.float32)])
    return {"rounds": rounds, "trim": CROSS_TRIM, "rows": int(len(z))}


def fit(model, x: np.ndarray, epochs: int, batch_size: int = 256, seed: int = 0, progress=None) -> list[float]:
    """Fit the residual to zero; returns the loss per least-squares round, then per epoch.

    ``progress(stage, i, n, loss)`` is called after each round and epoch.

    The relations' coefficients and tolerances are fitted first (features.fit_relations, on each
    window's last reading for the LSTM), then the cross-feature reconstruction is solved
    (fit_cross_reconstruction). The autoencoder has nothing else to fit; the LSTM then trains its
    forecast correction for ``epochs`` with a Huber loss, so failing cars hidden in the unlabelled
    stream pull it less than a squared loss would.
    """
    import keras

    from components.features import fit_relations

    keras.utils.set_random_seed(seed)
    model.get_layer("relations").set_weights([fit_relations(x if x.ndim == 2 else x[:, -1, :])])
    losses: list[float] = []
    report = progress or (lambda stage, i, n, loss: None)

    def solved(r: int, n: int, loss: float) -> None:
        losses.append(loss)
        report("least-squares round", r, n, loss)

    fit_cross_reconstruction(model, x, progress=solved)
    if not any(w.trainable for w in model.weights):
        return losses
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.Huber(delta=1.0))
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: report("epoch", e + 1, epochs, logs["loss"]))]
    history = model.fit(x, np.zeros((len(x), N_FEATURES), np.float32), epochs=epochs, batch_size=batch_size,
                        shuffle=True, verbose=0, callbacks=callbacks)
    return losses + [float(v) for v in history.history["loss"]]


RESIDUAL_SCALE_FLOOR = 0.8
"""Scaled units (MAD for the free sensors, tolerances for relation errors). On raw readings: an exact
relation fits the training window to ~0, but that fit is only as exact as the window's coverage: a
stopped car at a charge lower than any in the window missed throttle by 0.4-0.8 MAD, and at a floor of
0.3 those readings raised 2-7 false alerts per 1,000 car-hours. A floor of 0.8 took them to 0 at the
same recall (2,000 cars, seeds 42/43, checked on seeds 44/45 and 46/47). On the relation features, 0.5
and 0.8 gave the same fleet-profile matrix; 1.2 lost urban overheating recall (0.22 -> 0.13)."""
RANK_FLOOR = 0.3  # MAD floor (scaled units) when ranking training rows by how anomalous they look
HEALTHY_TRIM = 0.03  # share of training rows dropped as likely failing before the healthy tail is measured
HEALTHY_QUANTILE = 0.999  # per-feature |residual| quantile that maps to a score of 1
OUTLIER_MADS = 10.0  # rows further out than this (MAD units) are dropped too, however many: a window with many failing cars
FEATURE_OUTLIER_MADS = 5.0  # and from one feature's tail, its readings further out than this


def residual_scale(model, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Per-feature healthy-tail scale: the 99.9th percentile of |residual| on the training rows left
    after dropping the 3% most anomalous (under a MAD scale), floored.

    The unlabelled window holds ~5% failing cars at random onsets; trimming the rows the MAD scale
    finds most anomalous removes most of them, so the quantile measures healthy noise. Each feature's
    healthy maximum then maps to ~1, so bounded-noise features (coolant's U(0, 20) term, accelerometer
    bumps) no longer hide a shift that is small in MAD units but outside the healthy range.
    Measured on simulator data (2,000 cars, train seed 42, detection stretch seed 43, the transformer's
    hysteresis), with the linear masked model: MAD scale F1 0.926 (overheating 0.84); this scale F1
    0.947 (overheating 0.95). Quantiles 0.995-0.9995 and trims 0-5% were within 0.01; an untrimmed max
    (q = 1) fell to 0.71. With the cross-feature model, ranking rows with a MAD floor of 0.05 instead
    of 0.3 lost 0.07 F1 on overheating (a tighter ranking trims healthy rows with a wide coolant term)."""
    residual = model.predict(x, batch_size=batch_size, verbose=0)
    mad = np.maximum(np.median(np.abs(residual - np.median(residual, axis=0)), axis=0) * 1.4826, RANK_FLOOR)
    size = np.abs(residual)
    rough = (size / mad).max(axis=1)
    healthy = rough <= min(np.quantile(rough, 1.0 - HEALTHY_TRIM), OUTLIER_MADS)
    # Each feature's tail also leaves out that feature's own outliers: the 3% trim is shared, and a
    # feature with a wide healthy spread (an ageing fleet's sag) used it up, leaving flat tyres in the
    # tyres' "healthy" tail (scale 1.35 -> 6.7, tyre recall 0.99 -> 0.65).
    tail = np.empty(size.shape[1])
    for j in range(size.shape[1]):
        rows = healthy & (size[:, j] <= FEATURE_OUTLIER_MADS * mad[j])
        tail[j] = np.quantile(size[rows if rows.any() else healthy, j], HEALTHY_QUANTILE)
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
