"""One model version loaded from its SavedModel on local disk; scores feature rows: [N,18] (autoencoder) or [N,W,18] (LSTM)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleetpulse.contract import N_FEATURES
from fleetpulse.model_store import METADATA


class ShapeError(ValueError):
    """The input does not have the shape the model takes."""


@dataclass
class LoadedModel:
    """The ``serving_default`` signature of one model version plus its metadata.json."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    _serve: object = None

    @classmethod
    def load(cls, path: Path, version: int | None = None) -> "LoadedModel":
        import tensorflow as tf

        path = Path(path)
        meta_file = path / METADATA
        metadata = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        loaded = tf.saved_model.load(str(path))
        model = cls(path, int(version if version is not None else metadata.get("version", 0)), metadata)
        model._loaded = loaded  # keeps the variables alive
        model._serve = loaded.signatures["serving_default"]
        if "threshold" not in metadata and hasattr(loaded, "threshold"):
            metadata["threshold"] = float(loaded.threshold.numpy())
        return model

    @property
    def window(self) -> int:
        """Rows per sample: 1 for a per-reading model, W for a windowed (LSTM) one."""
        return int(self.metadata.get("window", 1)) if self.metadata.get("model_type") == "lstm" else 1

    @property
    def input_shape(self) -> list[int]:
        return [-1, N_FEATURES] if self.window == 1 else [-1, self.window, N_FEATURES]

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", float("nan")))

    def check_shape(self, shape) -> None:
        want = self.input_shape
        if len(shape) != len(want) or any(w != -1 and s != w for s, w in zip(shape, want)) or shape[0] < 0:
            raise ShapeError(f"input must have shape {want} (N rows of {N_FEATURES} features in SENSOR_FIELDS order), got {list(shape)}")

    def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score float32 [N], anomaly bool [N]) for float32 input of ``input_shape``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_shape(x.shape)
        if len(x) == 0:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        out = self._serve(input=x)
        return out["score"].numpy().astype(np.float32, copy=False), out["anomaly"].numpy().astype(bool, copy=False)

    def warm_up(self) -> None:
        """One call on zeros, so the first real request does not pay for tracing."""
        shape = [1 if d == -1 else d for d in self.input_shape]
        self.score(np.zeros(shape, np.float32))
