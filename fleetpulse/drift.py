"""Feature drift: the training window's per-feature distribution, and the population stability index
(PSI) of live readings against it.

The pipeline stores ``reference(values)`` in a version's metadata (``drift_reference``); whoever scores
the live stream accumulates counts in the same bins (``DriftCounts``, vectorised over a batch) and
computes ``psi`` per feature once a minute. One definition, so training and serving bin alike.

Bins. A feature with few distinct training values (firmware versions, a fixed tyre pressure) is
categorical: one bin per training value plus one for any value never seen in training, which is
where an over-the-air firmware update lands. Any other feature gets its training deciles as edges
(ten bins, open at both ends). Proportions are floored at ``FLOOR`` so that a bin empty on one side
gives a large but finite PSI.

PSI = sum over bins of (live - ref) * ln(live / ref). Rule of thumb: < 0.1 stable, 0.1-0.25 a
moderate shift, > 0.25 a major one (``DRIFT_THRESHOLD``).

Which features may ask for a retrain (``triggers``, stored with the reference): those the model takes
as they are read. A model built on operating-point-invariant features (components/features.py) is
unmoved by how the fleet is driven, and that moves all the time: a fleet discharging over a few
minutes moved battery_percentage's PSI to 1-3 against a window a minute older (measured,
`fleetpulse demo --lifecycle`), and each new version was retrained again for it. Every feature's
PSI is still exported; only a trigger's requests a retrain. A reference without the list (stored
before it existed) lets every feature trigger.
"""

from __future__ import annotations

import numpy as np

CATEGORICAL_MAX = 8
"""A feature with at most this many distinct training values is binned per value."""
QUANTILES = np.linspace(0.1, 0.9, 9)
FLOOR = 1e-4
DRIFT_THRESHOLD = 0.25


def reference(values: np.ndarray, names: list[str] | tuple[str, ...], triggers: list[str] | tuple[str, ...] | None = None) -> dict:
    """Per feature: its bins (``values`` for a categorical one, else inner ``edges``) and the training
    proportions; ``triggers``: the features whose drift asks for a retrain (None: all)."""
    values = np.asarray(values, np.float64)
    features = []
    for j, name in enumerate(names):
        col = values[:, j][np.isfinite(values[:, j])]
        distinct = np.unique(col)
        if len(distinct) <= CATEGORICAL_MAX:
            counts = np.array([(col == v).sum() for v in distinct] + [0], np.float64)
            features.append({"name": name, "kind": "categorical", "values": distinct.tolist(),
                             "p": (counts / max(len(col), 1)).tolist()})
        else:
            edges = np.unique(np.quantile(col, QUANTILES))
            counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
            features.append({"name": name, "kind": "numeric", "edges": edges.tolist(), "p": (counts / len(col)).tolist()})
    ref = {"features": features, "rows": int(len(values))}
    if triggers is not None:
        unknown = set(triggers) - set(names)
        if unknown:
            raise ValueError(f"drift triggers {sorted(unknown)} are not among the features")
        ref["triggers"] = list(triggers)
    return ref


def triggers(ref: dict) -> set[str]:
    """The features of a reference whose drift asks for a retrain."""
    return set(ref.get("triggers", [f["name"] for f in ref["features"]]))


def psi(live: np.ndarray, ref: np.ndarray) -> float:
    """Population stability index of one feature's live bin counts (or proportions) against the reference proportions."""
    live = np.asarray(live, np.float64)
    total = live.sum()
    if total <= 0:
        return 0.0
    a = np.maximum(live / total, FLOOR)
    e = np.maximum(np.asarray(ref, np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class DriftCounts:
    """Live bin counts per feature against a ``reference``; ``add`` a batch, ``take`` the PSI and start again."""

    def __init__(self, ref: dict):
        self.features = ref["features"]
        self.names = [f["name"] for f in self.features]
        self.ref_p = [np.asarray(f["p"], np.float64) for f in self.features]
        self._bins = []
        for f in self.features:
            if f["kind"] == "categorical":
                self._bins.append(("categorical", np.asarray(f["values"], np.float64)))
            else:
                self._bins.append(("numeric", np.asarray(f["edges"], np.float64)))
        self.counts = [np.zeros(len(p), np.int64) for p in self.ref_p]
        self.rows = 0

    def add(self, values: np.ndarray) -> None:
        """Count a batch of readings ([N, features], the contract's column order)."""
        values = np.asarray(values)
        if not len(values):
            return
        for j, (kind, bins) in enumerate(self._bins):
            col = values[:, j]
            if kind == "categorical":
                at = np.searchsorted(bins, col)
                at_c = np.minimum(at, len(bins) - 1)
                hit = (at < len(bins)) & (bins[at_c] == col) if len(bins) else np.zeros(len(col), bool)
                idx = np.where(hit, at_c, len(bins))  # the last bin: a value training never saw
            else:
                idx = np.searchsorted(bins, col, side="right")
            self.counts[j] += np.bincount(idx, minlength=len(self.counts[j]))[: len(self.counts[j])]
        self.rows += len(values)

    def psi(self) -> np.ndarray:
        return np.array([psi(c, p) for c, p in zip(self.counts, self.ref_p)])

    def take(self) -> tuple[np.ndarray, int]:
        """PSI per feature of what was added since the last ``take``, and how many rows that was."""
        out, rows = self.psi(), self.rows
        self.counts = [np.zeros_like(c) for c in self.counts]
        self.rows = 0
        return out, rows
