"""`fleetpulse bench`: run every bench/*.py, then print one table of figures and ratios."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from devtools.benchmarking import RESULTS_DIR, machine_info

BENCH_DIR = RESULTS_DIR.parent


def _scripts(names: tuple[str, ...]) -> list[Path]:
    scripts = sorted(p for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))
    if names:
        wanted = {n.removesuffix(".py") for n in names}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            raise click.BadParameter(f"no bench script {', '.join(sorted(unknown))}; have {', '.join(p.stem for p in scripts)}", param_hint="NAMES")
        scripts = [p for p in scripts if p.stem in wanted]
    return scripts


def table_rows() -> list[dict]:
    rows = []
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        for row in data.get("table") or _derived_rows(path.stem, data):
            rows.append({"bench": path.stem, **row})
    return rows


def _derived_rows(name: str, data: dict) -> list[dict]:
    """Table rows for result files that carry figures but no ``table`` (simulator, train)."""
    rows: list[dict] = []
    if name == "simulator":
        naive = data.get("naive_paho_per_car", {}).get("events_per_s")
        for key, label in (("fast_multiplexed_qos0", "simulator QoS 0, one process multiplexed"),
                           ("fast_multiplexed_qos1", "simulator QoS 1, one process multiplexed")):  # fmt: skip
            v = data.get(key, {}).get("events_per_s")
            if v:
                rows.append({"metric": label, "value": round(v), "unit": "ev/s", "baseline": round(naive) if naive else None,
                             "ratio": round(v / naive, 2) if naive else None, "target": ">= 50,000"})  # fmt: skip
        for key, label in (("original_100k_multiplexed", "original 100k cars @0.1/s, multiplexed, 5 min"),
                           ("original_100k_per_car_connections", "original 100k cars @0.1/s, one connection per car, 5 min")):  # fmt: skip
            d = data.get(key)
            if d:
                delivered = d.get("delivered_ratio")
                rows.append({"metric": label, "value": round(d.get("events_per_s", 0)), "unit": "ev/s", "baseline": None,
                             "ratio": None, "target": f"delivered {delivered:.4f}" if delivered is not None else "10,000 ev/s"})  # fmt: skip
    elif name == "train":
        rps = data.get("records_per_s", {})
        if rps.get("tfio_read_decode"):
            base = rps.get("baseline_confluent_fastavro")
            rows.append({"metric": f"TF-IO Kafka read + decode ({data.get('records', 0):,} records)", "value": round(rps["tfio_read_decode"]),
                         "unit": "rec/s", "baseline": round(base) if base else None, "ratio": data.get("ratio_tfio_read_decode_vs_baseline"),
                         "target": ">= 100,000"})  # fmt: skip
        fit = data.get("fit", {})
        if fit:
            rows.append({"metric": f"autoencoder fit over the records ({fit.get('autoencoder_fit')})", "value": fit.get("autoencoder_fit_s"),
                         "unit": "s", "baseline": None, "ratio": None, "target": f"{round(fit.get('autoencoder_fit_rows_per_s', 0)):,} rows/s"})
            rows.append({"metric": "LSTM epoch, scaled to 1M windows", "value": fit.get("lstm_epoch_s_per_1m_rows"), "unit": "s",
                         "baseline": None, "ratio": None, "target": f"{round(fit.get('lstm_epoch_rows_per_s', 0)):,} windows/s"})  # fmt: skip
    return rows


def markdown_table(rows: list[dict]) -> str:
    def fmt(v):
        return f"{v:,}" if isinstance(v, int) else ("" if v is None else str(v))

    lines = ["| bench | metric | value | unit | baseline | ratio | target |", "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['bench']} | {r.get('metric', '')} | {fmt(r.get('value'))} | {r.get('unit', '')} | {fmt(r.get('baseline'))} | "
            f"{fmt(r.get('ratio'))} | {r.get('target', '')} |"
        )
    m = machine_info()
    lines.append("")
    lines.append(f"Measured on {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}.")
    return "\n".join(lines)


def _update_readme(table: str) -> None:
    """Put the table between the bench-table markers of the README, if it has them."""
    readme = BENCH_DIR.parent / "README.md"
    start, end = "<!-- bench-table -->", "<!-- /bench-table -->"
    try:
        text = readme.read_text()
    except FileNotFoundError:
        return
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--quick", is_flag=True, help="Pass --quick to every script (smaller runs).")
@click.option("--table-only", is_flag=True, help="Do not run anything; print the table of the last results.")
def bench(names: tuple[str, ...], quick: bool, table_only: bool) -> None:
    """Run the benchmarks in bench/ (all, or NAMES) and print figures with their baseline ratios."""
    failed = []
    if not table_only:
        for script in _scripts(names):
            click.secho(f"==> bench/{script.name}", bold=True, err=True)
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])])
            click.echo(f"    {'ok' if proc.returncode == 0 else 'FAILED'} in {time.monotonic() - t0:.0f}s", err=True)
            if proc.returncode != 0:
                failed.append(script.stem)
    table = markdown_table(table_rows())
    (RESULTS_DIR / "TABLE.md").write_text(table + "\n")
    _update_readme(table)
    click.echo(table)
    if failed:
        raise click.ClickException(f"bench scripts failed: {', '.join(failed)}")
