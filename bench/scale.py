"""Fleet scale on this box (#15): the original 100,000-car scenario and the live rate in production
configuration, each a whole `fleetpulse demo` on a private stack, with its baseline in the same run.

Scenarios (every one QoS 1 from the cars and security on unless it says otherwise):
- ``original``: 100,000 cars x 0.1 ev/s for 300 s, twins in FerretDB over SQLite (the stack's default);
- ``original-postgresql``: the same with FerretDB over the stack's own PostgreSQL: the twin store's
  baseline (``--quick`` leaves it out);
- ``original-untuned``: the same on SQLite as FerretDB and Go leave it (an fsync per commit, GOGC 100):
  the baseline of the stack's FerretDB settings (StackSettings.mongodb_sqlite_synchronous, mongodb_gogc;
  ``--quick`` leaves it out);
- ``live``: 10,000 cars x 5 ev/s for 60 s: the production configuration's sustained rate;
- ``live-plain``: the same at QoS 0 with security off, where 50,000 ev/s was first reached: its baseline.

Each scenario's stack is its own (a temp state dir, free ports), started by the demo and wiped after,
so twins start empty and no other run's data is on its servers. Detection at 0.1 ev/s trains on 3
events per car, so the 100,000-car runs pass ``--min-f1 0`` (the gate would refuse that model; the
figures here are about cost, and recall is reported with failures_by_length).

    nice -n 5 .venv/bin/python bench/scale.py [--quick] [--only original,live]

``--only`` keeps the other scenarios' results already in bench/results/scale.json (each says when it ran).

Writes bench/results/scale.json: per scenario the demo's figures (cpu_share with the per-process CPU
seconds, twin_freshness_p99_s, drain_s, p50/p99 event -> alert, the transformer's ev/s, twins of cars,
events sent against events on Kafka) and table rows against the issue's targets, with the baseline and
the ratio where a scenario has one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose simulator.py would shadow the simulator package

from devtools.benchmarking import RESULTS_DIR, write_result  # noqa: E402
from devtools.stack.process import free_port  # noqa: E402
from inference.transformer.settings import ScoreSettings  # noqa: E402

FP = str(Path(sys.executable).with_name("fleetpulse"))
TWIN_INTERVAL_S = ScoreSettings.model_fields["twin_interval_s"].default  # what the demos' transformer runs with
ORIGINAL = ["--cars", "100000", "--rate", "0.1", "--duration", "300", "--min-f1", "0"]
LIVE = ["--cars", "10000", "--rate", "5", "--duration", "60"]


@dataclass(frozen=True)
class Scenario:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    baselines: tuple[str, ...] = ()  # the scenarios this one is compared with

    def describe(self) -> str:
        return " ".join(self.args) + "".join(f" {k}={v}" for k, v in self.env.items())


SCENARIOS = [
    Scenario("original", ORIGINAL, baselines=("original-postgresql", "original-untuned")),
    Scenario("original-postgresql", ORIGINAL, {"FLEETPULSE_STACK_MONGODB_BACKEND": "postgresql"}),
    Scenario("original-untuned", ORIGINAL, {"FLEETPULSE_STACK_MONGODB_SQLITE_SYNCHRONOUS": "FULL", "FLEETPULSE_STACK_MONGODB_GOGC": "100"}),
    Scenario("live", LIVE, baselines=("live-plain",)),
    Scenario("live-plain", [*LIVE, "--qos", "0"], {"FLEETPULSE_STACK_SECURE": "false"}),
]


def private_stack_env(state_dir: Path) -> dict[str, str]:
    ports = {name: str(free_port()) for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "MQTT_PORT", "MQTT_TLS_PORT",
                                                  "MONGODB_PORT", "GCS_PORT", "POSTGRESQL_PORT")}  # fmt: skip
    return {"FLEETPULSE_STACK_STATE_DIR": str(state_dir), **{f"FLEETPULSE_STACK_{k}": v for k, v in ports.items()}}


BENCH_RUN = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())  # when this invocation started: which results share a run


def run(scenario: Scenario, out_root: Path) -> dict:
    """The scenario's demo on a private stack; its summary.json with the wall time and the command."""
    state = Path(tempfile.mkdtemp(prefix=f"fleetpulse-scale-{scenario.name}-"))
    env = {**os.environ, **private_stack_env(state), **scenario.env}
    out = out_root / scenario.name
    cmd = [FP, "demo", *scenario.args, "--out", str(out)]
    print(f"scale: {scenario.name}: {scenario.describe()}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        with (out_root / f"{scenario.name}.log").open("w") as log:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    finally:
        subprocess.run([FP, "stack", "down", "--wipe"], env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(f"scale: {scenario.name} failed ({proc.returncode}); log {out_root / f'{scenario.name}.log'}", file=sys.stderr)
        return {"failed": proc.returncode, "wall_s": round(wall, 1), "command": scenario.describe()}
    summary = json.loads((out / "summary.json").read_text())
    print(f"scale: {scenario.name} in {wall:.0f} s: cpu_share {summary.get('cpu_share')}, twin age p99 "
          f"{summary.get('twin_freshness_p99_s')} s, drain {summary.get('drain_s')} s, {summary.get('events_per_s')} ev/s, "
          f"p99 {summary.get('p99_latency_ms')} ms", file=sys.stderr, flush=True)  # fmt: skip
    return {**figures(summary), "wall_s": round(wall, 1), "command": scenario.describe(),
            "ran": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bench_run": BENCH_RUN}


def figures(s: dict) -> dict:
    sent, on_kafka = s.get("events_sent"), s.get("events")
    return {
        "cars": s["cars"], "twins": s["twins"], "events_sent": sent, "events_on_kafka": on_kafka,
        "lost": None if sent is None else max(0, sent - on_kafka),
        "events_per_s": s.get("events_per_s"), "p50_latency_ms": s.get("p50_latency_ms"), "p99_latency_ms": s.get("p99_latency_ms"),
        "cpu_share": s.get("cpu_share"), "cpu": s.get("cpu"), "twin_freshness_p99_s": s.get("twin_freshness_p99_s"),
        "drain_s": s.get("drain_s"), "scored_all_s": s.get("scored_all_s"), "twin_interval_s": TWIN_INTERVAL_S,
        "f1": s.get("f1"), "recall": s.get("recall"), "precision": s.get("precision"),
        "failures_by_length": s.get("failures_by_length"),
    }  # fmt: skip


METRICS = {
    # figure: (unit, {scenario: target})
    "cpu_share": ("share of the box", {"original": "< 0.5"}),
    "twin_freshness_p99_s": ("s", {"original": f"<= {TWIN_INTERVAL_S + 5:g} (twin interval + 5 s)"}),
    "drain_s": ("s", {"original": "< 10"}),
    "p99_latency_ms": ("ms", {"original": "< 250", "live": "< 250"}),
    "events_per_s": ("ev/s", {"live": ">= 50,000"}),
    "lost": ("events", {"original": "0", "live": "0"}),
}


TWIN_STORE = "twin store (FerretDB, and PostgreSQL under it)"


def by_process(cpu: dict) -> dict[str, float]:
    """CPU seconds per process, FerretDB and the PostgreSQL it may run on as one: the twin store."""
    out = dict(cpu.get("cpu_s") or {})
    if "mongodb" in out:
        out[TWIN_STORE] = out.pop("mongodb") + out.pop("postgresql", 0.0)
    return out


def table(results: dict) -> list[dict]:
    """Rows for the scenarios compared with a baseline, the baseline's figure beside each; the box's CPU
    per process (every server and FleetPulse process but the simulator) after them."""
    rows = []
    # Each compared scenario against every baseline that ran (its own figures alone if none did).
    pairs = [(s, b) for s in SCENARIOS if s.name in results and s.baselines
             for b in ([b for b in s.baselines if b in results] or [None])]
    for scenario, baseline in pairs:
        r, base = results[scenario.name], results.get(baseline, {})
        if "failed" in r:
            rows.append({"metric": f"{scenario.name}: the demo failed", "value": r["failed"], "unit": "exit code", "baseline": None,
                         "ratio": None, "target": None})  # fmt: skip
            continue
        has_base = bool(base) and "failed" not in base
        for metric, (unit, targets) in METRICS.items():
            value = r.get(metric)
            if value is None:
                continue
            b = base.get(metric) if has_base else None
            rows.append({"metric": f"{scenario.name}: {metric}" + (f" [vs {baseline}]" if has_base else ""),
                         "value": round(value, 3) if isinstance(value, float) else value, "unit": unit,
                         "baseline": round(b, 3) if isinstance(b, float) else b, "ratio": round(value / b, 2) if b else None,
                         "target": targets.get(scenario.name),
                         **({} if not has_base or base.get("bench_run") == r.get("bench_run") else
                            {"note": f"baseline from an earlier run ({base.get('ran', 'ran before')})"})})  # fmt: skip
        if baseline == next((b for b in scenario.baselines if b in results), None):  # once per scenario
            rows.append({"metric": f"{scenario.name}: twins / cars", "value": r["twins"], "unit": "twins", "baseline": None, "ratio": None,
                         "target": f"{r['cars']:,}"})  # fmt: skip
        cpu, base_cpu = r.get("cpu") or {}, (base.get("cpu") or {}) if has_base else {}
        for proc, seconds in sorted(by_process(cpu).items(), key=lambda kv: -kv[1]):
            share = seconds / (cpu["wall_s"] * cpu["cores"])
            b = by_process(base_cpu).get(proc)
            b_share = b / (base_cpu["wall_s"] * base_cpu["cores"]) if b is not None else None
            rows.append({"metric": f"{scenario.name}: CPU share, {proc}" + (f" [vs {baseline}]" if has_base else ""),
                         "value": round(share, 3), "unit": "share of the box",
                         "baseline": None if b_share is None else round(b_share, 3),
                         "ratio": round(share / b_share, 2) if b_share else None, "target": None})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="leave out original-postgresql and original-untuned (the twin store's baselines, 10 min each)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--table-only", action="store_true", help="rebuild the table of bench/results/scale.json from its scenarios")
    a = ap.parse_args()
    if a.table_only:  # the runs' own machine facts and date stay
        path = RESULTS_DIR / "scale.json"
        data = json.loads(path.read_text())
        data["table"] = table(data["scenarios"])
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
        return
    wanted = [s for s in SCENARIOS if (not a.only or s.name in a.only.split(","))
              and not (a.quick and s.name in ("original-postgresql", "original-untuned"))]
    out_root = ROOT / "reports" / "scale"
    out_root.mkdir(parents=True, exist_ok=True)
    previous = RESULTS_DIR / "scale.json"
    kept = json.loads(previous.read_text())["scenarios"] if a.only and previous.exists() else {}
    results = {**kept, **{s.name: run(s, out_root) for s in wanted}}
    path = write_result("scale", {"scenarios": results}, table(results))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
