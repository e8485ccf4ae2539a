"""Feature preparation shared by both models: robust scaling statistics and per-car look-back windows."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826
CLIP = 20.0  # scaled values are clipped so one absurd reading cannot dominate a loss or a score


def robust_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (median, scale): scale = 1.4826 x MAD, or 1.2533 x mean absolute deviation where
    the MAD is 0, floored for constant features.

    Robust rather than mean/std because the training stream is unlabelled and contains failing cars
    whose extreme readings would inflate a standard deviation. Integer sensors (tyre pressures) can
    have a MAD of 0 when over half the readings share one value; the mean absolute deviation keeps a
    1-psi wobble from scaling to 20 sigma. A truly constant feature (firmware) gets a small floor, so
    any change in it scales to a large value instead of dividing by zero.
    """
    center = np.median(values, axis=0)
    deviation = np.abs(values - center)
    mad = np.median(deviation, axis=0) * MAD_TO_SIGMA
    mean_ad = deviation.mean(axis=0) * 1.2533
    scale = np.where(mad > 0, mad, mean_ad)
    floor = 1e-3 * (np.abs(center) + 1.0)
    return center.astype(np.float32), np.maximum(scale, floor).astype(np.float32)


def robust_z(values: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip((values - center) / scale, -CLIP, CLIP)


def car_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices per car, each in stream order (stable sort keeps Kafka's per-key order)."""
    order = np.argsort(keys.astype("S"), kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    return np.split(order, cuts)


def car_windows(values: np.ndarray, keys: np.ndarray, window: int, rows: np.ndarray | None = None) -> np.ndarray:
    """[N, window, 18]: for every row, that car's last ``window`` rows ending at it (edge-padded at the car's start).

    ``rows`` restricts the output to those row indices (in that order), to bound memory when training.
    """
    position = np.empty(len(values), dtype=np.int64)
    group_start = np.empty(len(values), dtype=np.int64)
    ordered = []
    offset = 0
    for idx in car_groups(keys):
        ordered.append(idx)
        position[idx] = offset + np.arange(len(idx))
        group_start[idx] = offset
        offset += len(idx)
    by_car = values[np.concatenate(ordered)] if ordered else values
    rows = np.arange(len(values)) if rows is None else rows
    end = position[rows]
    steps = end[:, None] - np.arange(window - 1, -1, -1)[None, :]
    steps = np.maximum(steps, group_start[rows][:, None])
    return by_car[steps]
