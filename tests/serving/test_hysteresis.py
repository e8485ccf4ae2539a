"""The hysteresis rule as a plain module: per-reading semantics and the vectorised batch path agree."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.hysteresis import FAILING, OK, WARNING, Hysteresis, Rule, step

RULE = Rule(n=10, k_warning=3, k_failing=6, m=5)


def statuses(flags, rule=RULE):
    status, bits, clean, out = OK, 0, 0, []
    for f in flags:
        status, bits, clean = step(rule, status, bits, clean, f)
        out.append(status)
    return out


def test_one_noisy_reading_does_not_alert():
    assert set(statuses([False] * 5 + [True] + [False] * 5)) == {OK}


def test_sustained_anomaly_goes_ok_warning_failing():
    s = statuses([True] * 8)
    assert s[:2] == [OK, OK] and s[2] == WARNING and s[5] == FAILING and s[-1] == FAILING


def test_m_clean_readings_clear_and_failing_does_not_flap_to_warning():
    s = statuses([True] * 8 + [False] * 6)
    assert s[8:12] == [FAILING] * 4 and s[12] == OK and s[13] == OK


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=200), st.integers(1, 5))
def test_batched_apply_matches_reading_by_reading(events, n_batches):
    cars = np.array([c for c, _ in events], dtype=np.int64)
    over = np.array([o for _, o in events], dtype=bool)
    h = Hysteresis(RULE, size=2)
    h.ensure(5)
    changes = []
    for part in np.array_split(np.arange(len(events)), n_batches):
        changes += [(int(part[i]), old, new) for i, old, new in h.apply(cars[part], over[part])]
    expected_changes = []
    for car in range(5):
        idx = [i for i, (c, _) in enumerate(events) if c == car]
        s = statuses([events[i][1] for i in idx])
        prev = OK
        for i, st_ in zip(idx, s):
            if st_ != prev:
                expected_changes.append((i, prev, st_))
            prev = st_
        assert h.status[car] == (s[-1] if s else OK)
    assert sorted(changes) == sorted(expected_changes)
