"""Alert hysteresis: the rule that turns a car's per-event anomaly flags into an alert state.

An alert is raised after ``raise_after`` consecutive anomalous events and cleared after
``clear_after`` consecutive normal ones. Evaluation reports metrics with it beside the per-row
figures; the serving transformer applies the same rule (inference/hysteresis.py keeps its own copy,
since deployables do not import each other). Plain Python on purpose: it runs per car, in order.
"""

from __future__ import annotations

import numpy as np

RAISE_AFTER = 2
CLEAR_AFTER = 3


def alert_states(flags: np.ndarray, raise_after: int = RAISE_AFTER, clear_after: int = CLEAR_AFTER, alerting: bool = False) -> np.ndarray:
    """Per-event alert state for one car's flags in stream order (``alerting`` = state before the first)."""
    out = np.empty(len(flags), dtype=bool)
    run_hot = run_cold = 0
    for i, hot in enumerate(flags.tolist()):
        if hot:
            run_hot, run_cold = run_hot + 1, 0
            if run_hot >= raise_after:
                alerting = True
        else:
            run_hot, run_cold = 0, run_cold + 1
            if run_cold >= clear_after:
                alerting = False
        out[i] = alerting
    return out
