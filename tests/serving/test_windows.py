"""The transformer's per-car windows are the training pipeline's windows, however the stream is batched."""

import numpy as np
import pytest

from components.features import car_windows
from fleetpulse.contract import N_FEATURES
from inference.transformer.windows import CarWindows


@pytest.mark.parametrize("batch", [1, 7, 64, 10_000])
def test_streamed_windows_equal_the_training_windows_for_any_batching(batch):
    rng = np.random.default_rng(batch)
    cars = rng.integers(0, 13, 600)  # cars interleaved at random, some with long gaps
    rows = rng.normal(size=(600, N_FEATURES)).astype(np.float32)
    keys = np.array([f"car-{c}".encode() for c in cars], dtype=object)
    want = car_windows(rows, keys, 8)

    windows = CarWindows(8, size=4)  # grows as cars appear
    got = np.concatenate([windows.samples(cars[i : i + batch], rows[i : i + batch]) for i in range(0, 600, batch)])

    assert got.shape == (600, 8, N_FEATURES)
    np.testing.assert_array_equal(got, want)


def test_a_cars_first_reading_fills_its_whole_window():
    windows = CarWindows(4)
    first = np.arange(N_FEATURES, dtype=np.float32)[None, :]
    sample = windows.samples(np.array([3]), first)
    assert (sample[0] == first).all()
