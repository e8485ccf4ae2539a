"""The fault matrix (#13) at the issue's loads: the serving rows (devtools/faults/serving.py) and the edge
rows (devtools/faults/edge.py), each against the local stack (private servers for the ones a row stops).

Writes bench/results/faults.json: {"rows": [{fault, load, sent, acknowledged, in_kafka, in_twins,
duplicates, lost, recovery_s, ...}, ...]}. A row that fails to run is kept with its error, so the file
always says what ran. ``--quick`` runs the tests' reduced loads; ``--only`` a subset by function name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.benchmarking import write_result  # noqa: E402
from devtools.faults import serving  # noqa: E402
from devtools.faults.serving import Load, Servers  # noqa: E402
from devtools.stack import access  # noqa: E402
from devtools.stack.settings import StackSettings  # noqa: E402
from tests.support.stack import PrivateService, stack_with  # noqa: E402

try:
    from devtools.faults import edge  # noqa: E402
except ImportError:  # the edge rows are another module's; the serving rows run without it
    edge = None


def serving_rows(quick: bool):
    """(name, run) of every serving row; run(workdir) -> row."""
    def load(cars, rate, seconds, bad_share=0.0):
        return Load(cars, rate / 5 if quick else rate, seconds / 3 if quick else seconds, bad_share)

    state = stack_with("kafka", "mongodb", "gcs")
    shared = Servers(access.kafka(), StackSettings(), state["gcs"]["endpoint"])  # as the operator: the rows' topics are their own

    def with_private(name, run):
        def go(workdir: Path) -> dict:
            svc = PrivateService(name, workdir / f"private-{name}").start()
            try:
                return run(svc, workdir)
            finally:
                svc.stop()
        return go

    down_s = 10 if quick else 30
    return [
        ("transformer_kill_row", lambda w: serving.transformer_kill_row(shared, w, load(1000, 5000, 60))),
        ("model_server_kill_row", lambda w: serving.model_server_kill_row(shared, w, load(1000, 5000, 60))),
        ("mongodb_down_row", with_private("mongodb", lambda svc, w: serving.mongodb_down_row(
            replace(shared, mongodb=svc.settings), w, load(1000, 5000, 3 * down_s), svc, down_s))),
        ("gcs_down_row", with_private("gcs", lambda svc, w: serving.gcs_down_row(
            replace(shared, gcs_endpoint=svc.endpoint["endpoint"]), w, load(1000, 1000, 60), svc))),
        ("bad_versions_row", lambda w: serving.bad_versions_row(shared, w, load(1000, 5000, 60))),
        ("group_scaling_row", lambda w: serving.group_scaling_row(shared, w, load(20_000, 5000, 60))),
        ("bad_readings_row", lambda w: serving.bad_readings_row(shared, w, load(1000, 10_000, 60, bad_share=0.01))),
    ]


def edge_rows(quick: bool):
    """(name, run) of every edge row the edge module has, at its own (the issue's) loads unless ``quick``."""
    if edge is None:
        return []
    rows = []
    for name, fn_name, kwargs, quick_kwargs in [
        ("bridge_kill9", "bridge_kill9", {}, {"seconds": 15}),
        ("kafka_down", "kafka_down", {}, {"seconds": 22, "down_s": 15}),
        ("mosquitto_restart", "mosquitto_restart", {}, {"seconds": 15}),
        ("mosquitto_kill9", "mosquitto_kill9", {}, {"seconds": 15}),
        ("mosquitto_kill9_backlog", "mosquitto_kill9", {"backlog_s": 2.0}, {"seconds": 15, "backlog_s": 2.0}),
        ("poison", "poison", {}, {"seconds": 15}),
    ]:
        fn = getattr(edge, fn_name, None)
        if fn is not None:
            rows.append((name, lambda _w, fn=fn, kw=(quick_kwargs if quick else kwargs): fn(**kw)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tests' reduced loads")
    parser.add_argument("--only", nargs="*", default=None, help="row function names to run (default: all)")
    args = parser.parse_args()
    rows = []
    for name, run in serving_rows(args.quick) + edge_rows(args.quick):
        if args.only and name not in args.only:
            continue
        print(f"==> {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"fault-{name}-") as tmp:
            try:
                row = run(Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, the others still run
                traceback.print_exc()
                row = {"fault": name, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        row["seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    table = [{"metric": f"{r['fault']} ({r.get('load', '')})", "value": r.get("lost"), "unit": "events lost", "baseline": None,
              "ratio": None, "target": "0" + (f"; recovered in {r['recovery_s']} s" if r.get("recovery_s") is not None else "")}
             for r in rows]
    path = write_result("faults", {"quick": args.quick, "rows": rows}, table)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
