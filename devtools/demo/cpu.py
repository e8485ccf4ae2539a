"""CPU the stream costs: each server's and FleetPulse process's CPU seconds over a stretch, from /proc.

A process counts with everything it started (a launcher's server child, a JVM's threads), so the
figure is the box's CPU the part really used. ``share`` is the whole box's: CPU seconds over wall
seconds times the cores, 0-1.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants now alive."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents.setdefault(st[0], []).append(int(entry))
                cpu[int(entry)] = st[1]
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(parents.get(p, []))
    return total


class CpuMeter:
    """CPU per named process tree between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.t0 = 0.0
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.before = {name: tree_cpu(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        used = {name: round(max(0.0, tree_cpu(pid) - self.before[name]), 1) for name, pid in self.pids.items()}
        cores = os.cpu_count() or 1
        return {"cpu_share": round(sum(used.values()) / (wall * cores), 3) if wall > 0 else None, "wall_s": round(wall, 1),
                "cores": cores, "cpu_s": used}  # fmt: skip
