"""Per-car look-back windows for a windowed (LSTM) model: each event becomes that car's last W readings.

The transformer applies events in stream order in micro-batches; a car can appear several times in
one batch. State is one array of every car's last ``W - 1`` readings, so building a batch's samples
and updating the state are a few vectorised gathers, with no per-event Python.

Windows match the training pipeline's (components.features.car_windows) exactly: a car's window
before it has W - 1 readings is padded with its first reading. The history is process state: after a
restart a car's first W - 1 windows are padded again (the twin does not carry raw readings).
"""

from __future__ import annotations

import numpy as np

from fleetpulse.contract import N_FEATURES


class CarWindows:
    def __init__(self, window: int, size: int = 1024):
        if window < 2:
            raise ValueError(f"a window needs at least 2 readings, got {window}")
        self.window = window
        self.history = np.zeros((size, window - 1, N_FEATURES), np.float32)
        self.seen = np.zeros(size, np.int64)  # readings applied per car (capped use: only < W - 1 matters)

    def ensure(self, size: int) -> None:
        if size > len(self.seen):
            grow = max(size, 2 * len(self.seen)) - len(self.seen)
            self.history = np.concatenate([self.history, np.zeros((grow, *self.history.shape[1:]), np.float32)])
            self.seen = np.concatenate([self.seen, np.zeros(grow, np.int64)])

    def samples(self, cars: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """[n, W, 18] for readings (car index, row) in stream order; advances every car's history."""
        n, h = len(cars), self.window - 1
        if n == 0:
            return np.zeros((0, self.window, N_FEATURES), np.float32)
        self.ensure(int(cars.max()) + 1)
        order = np.argsort(cars, kind="stable")  # each car's readings together, in stream order
        sorted_cars = cars[order]
        unique, first, counts = np.unique(sorted_cars, return_index=True, return_counts=True)
        # One run per car: its h history rows, then its rows of this batch.
        run_len = h + counts
        start = np.concatenate([[0], np.cumsum(run_len)[:-1]])
        runs = np.empty((int(run_len.sum()), N_FEATURES), np.float32)
        hist_pos = (start[:, None] + np.arange(h)[None, :]).ravel()
        runs[hist_pos] = self.history[unique].reshape(-1, N_FEATURES)
        rank = np.arange(n) - np.repeat(first, counts)  # a reading's position among its car's readings here
        run_of = np.repeat(np.arange(len(unique)), counts)
        runs[start[run_of] + h + rank] = rows[order]
        # Slots older than a young car's first reading repeat that reading (car_windows pads the same way).
        oldest = start + np.maximum(h - self.seen[unique], 0)
        idx = start[run_of][:, None] + rank[:, None] + np.arange(self.window)[None, :]
        idx = np.maximum(idx, oldest[run_of][:, None])
        out = np.empty((n, self.window, N_FEATURES), np.float32)
        out[order] = runs[idx]
        # New history: each car's last h slots of its run (padded the same way).
        last = start[:, None] + counts[:, None] + np.arange(h)[None, :]
        self.history[unique] = runs[np.maximum(last, oldest[:, None])]
        self.seen[unique] += counts
        return out
