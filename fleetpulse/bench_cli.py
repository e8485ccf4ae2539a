"""`fleetpulse bench`: run every bench/*.py, then print one table of figures and ratios."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from fleetpulse.benchmarking import RESULTS_DIR, machine_info

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
        for row in data.get("table", []):
            rows.append({"bench": path.stem, **row})
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
    click.echo(table)
    if failed:
        raise click.ClickException(f"bench scripts failed: {', '.join(failed)}")
