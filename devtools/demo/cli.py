"""`fleetpulse demo`: stack -> simulator -> bridge -> training -> model server -> transformer -> report."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from devtools.demo.run import Demo, DemoParams
from simulator.profiles import PROFILES

PROFILE_NAMES = list(PROFILES)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _s(value) -> str:
    return "n/a" if value is None else f"{value:g} s"


def closing_table(summary: dict) -> Table:
    t = Table(title="FleetPulse demo", show_header=True, header_style="bold")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("goal")
    delay = summary["median_detection_delay_events"]
    p99 = summary.get("p99_latency_ms")
    rows = [
        ("cars / events scored", f"{summary['cars']:,} / {summary['events']:,}", ""),
        ("simulated car-hours", f"{summary['car_hours']:,}", ""),
        ("F1 / precision / recall", f"{summary['f1']:.3f} / {summary['precision']:.3f} / {summary['recall']:.3f}", "F1 >= 0.9 (0.95)"),
        ("median detection delay", "n/a" if delay is None else f"{delay:g} events", "<= 5 events"),
        ("false alerts / 1,000 car-hours", f"{summary['false_alerts_per_1000_car_hours']:.2f}", "< 1"),
        ("events/s through the scorer", f"{(summary.get('events_per_s') or 0):,.0f}", ""),
        ("p99 event -> alert", "n/a" if p99 is None else f"{p99:,.0f} ms", "< 250 ms"),
        ("alerts / cars with a twin", f"{summary['alerts']:,} / {summary['twins']:,}", "every car has a twin"),
        ("twin age p99 / drain after the stream", f"{_s(summary.get('twin_freshness_p99_s'))} / {_s(summary.get('drain_s'))}",
         "<= twin interval + 5 s / < 10 s"),
        ("CPU share of the box (all but the simulator)", "n/a" if summary.get("cpu_share") is None else f"{summary['cpu_share']:.0%}", "< 50%"),
        ("fleets (trained on -> detected on)", f"{summary['parameters'].get('train_profile')} -> {summary['parameters'].get('profile')}", ""),
        ("model", str(summary.get("model_uri")), ""),
        ("wall time", f"{summary.get('wall_time_s')} s", ""),
    ]
    for mode, m in summary["per_failure_mode"].items():
        rows.append((f"  {mode}", f"F1 {m['f1']:.3f} (P {m['precision']:.2f} R {m['recall']:.2f}, {m['cars']} cars)", ""))
    for r in rows:
        t.add_row(*r)
    return t


def lifecycle_tables(life: dict) -> list[Table]:
    """Each model's figures on the cars the update reached and the others; then what happened, when."""
    t = Table(title="Model lifecycle: an over-the-air firmware update", show_header=True, header_style="bold")
    for col in ("model", "false alerts / 1,000 car-h, updated cars", "other cars", "recall", "goal"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, period in life.get("periods", {}).items():
        recall = period["all"]["recall"]
        t.add_row(name, f"{period['updated']['false_alerts_per_1000_car_hours']:,.2f}",
                  f"{period['not_updated']['false_alerts_per_1000_car_hours']:,.2f}", "n/a" if recall is None else f"{recall:.3f}",
                  "" if period["version"] == life["v1"] else "< 1, >= 0.95")  # fmt: skip
    when = Table(show_header=True, header_style="bold")
    when.add_column("s", justify="right")
    when.add_column("what")
    for name, at in sorted(life.get("markers_s", {}).items(), key=lambda kv: kv[1]):
        when.add_row(f"{at:.1f}", name)
    for r in life.get("retrain", []):
        when.add_row("", f"retrain: {r.get('outcome')}: {r.get('detail', '')}")
    for d in life.get("decisions", []):
        when.add_row("", f"decider: {d.get('action')} v{d.get('version')}: {d.get('reason', '')}")
    return [t, when]


@click.command()
@click.option("--cars", default=2000, show_default=True, type=click.IntRange(1, 200_000))
@click.option("--rate", default=5.0, show_default=True, type=click.FloatRange(0.01, 100), help="Events per second per car.")
@click.option("--duration", default=50.0, show_default=True, type=click.FloatRange(5), help="Seconds of the detection stretch.")
@click.option("--train-duration", default=30.0, show_default=True, type=click.FloatRange(5), help="Seconds of the training stretch.")
@click.option("--sample-interval", default=10.0, show_default=True, type=click.FloatRange(0.1), help="Simulated seconds per event.")
@click.option("--failures", default=0.05, show_default=True, type=click.FloatRange(0, 1), help="Fraction of cars that develop a failure.")
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--qos", default="1", show_default=True, type=click.Choice(["0", "1"]),
              help="MQTT QoS the cars publish at: 1 (acknowledged, the production setting) or 0.")
@click.option("--train-profile", default="default", show_default=True, type=click.Choice(PROFILE_NAMES),
              help="Fleet profile the model trains on (simulator/profiles.py).")
@click.option("--profile", default="default", show_default=True, type=click.Choice(PROFILE_NAMES),
              help="Fleet profile detection is measured on; differ from --train-profile to see a model on a fleet unlike its training fleet.")
@click.option("--model", default="autoencoder", show_default=True, type=click.Choice(["autoencoder", "lstm"]))
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(1, 500))
@click.option("--min-f1", default=0.8, show_default=True, type=click.FloatRange(0, 1), help="The pipeline refuses to publish below this.")
@click.option("--out", "out_dir", default="reports/demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep-stack", is_flag=True, help="Leave the local stack running afterwards.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout at the end.")
@click.option("--lifecycle", is_flag=True,
              help="The model lifecycle instead: an OTA firmware rollout, drift, a retrain, the candidate in shadow, the promotion "
                   "decision (reports/lifecycle/; --duration defaults to 240).")
def demo(cars, rate, duration, train_duration, sample_interval, failures, seed, train_profile, profile, model, epochs, min_f1, out_dir, keep_stack,
         as_json, lifecycle, qos) -> None:
    """Run the whole story on the local stack and write reports/demo/summary.json and report.html.

    The model trains on a first stretch of the stream; detection is measured on a later stretch it
    never saw, against the simulator's ground truth. `--cars 100000 --rate 0.1 --duration 300` is the
    original 100,000-car scenario.

    With --lifecycle: v1 trains on a fleet on one firmware; during the detection stretch an
    over-the-air update reaches 60% of the cars; the transformer's drift watch requests a retrain,
    `fleetpulse models retrain` publishes v2 as the candidate, the transformer shadows it and
    `fleetpulse models decide` promotes or rejects it. The report shows both models' false alerts on
    updated cars and recall, over time, with the markers.
    """
    from click.core import ParameterSource

    ctx = click.get_current_context()
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    given = {name: value for name, value in dict(
        cars=cars, rate=rate, duration=duration, train_duration=train_duration, sample_interval=sample_interval, failures=failures,
        seed=seed, qos=int(qos), train_profile=train_profile, profile=profile, model=model, epochs=epochs, min_f1=min_f1, out_dir=out_dir, keep_stack=keep_stack,
    ).items() if not lifecycle or ctx.get_parameter_source(name) != ParameterSource.DEFAULT or name in ("keep_stack", "min_f1")}  # fmt: skip
    try:
        if lifecycle:
            from devtools.demo.lifecycle import LifecycleDemo, LifecycleParams

            summary = LifecycleDemo(LifecycleParams(**given), console).run()
        else:
            summary = Demo(DemoParams(**given), console).run()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process the demo started was stopped[/]")
        raise SystemExit(130) from None
    console.print(closing_table(summary))
    if "lifecycle" in summary:
        for table in lifecycle_tables(summary["lifecycle"]):
            console.print(table)
    out_dir = Path(given.get("out_dir", "reports/lifecycle"))
    console.print(f"report: {out_dir / 'report.html'}  summary: {out_dir / 'summary.json'}")
    if as_json:
        click.echo(json.dumps(summary))
