"""`fleetpulse simulate`: a fleet of cars publishing cardata-v1 over MQTT, ground truth to Kafka."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import click

from fleetpulse.clients import require_mqtt
from fleetpulse.errors import SettingsError
from fleetpulse.ground_truth import FAILURE_MODES
from fleetpulse.settings import load_settings
from fleetpulse.topics import GROUND_TRUTH
from simulator.csv_source import DEFAULT_CSV
from simulator.ota import Rollout
from simulator.profiles import PROFILES
from simulator.runner import RunConfig, Sink, auto_workers, make_plan, missing_car_credentials, run_in_process, run_processes
from simulator.sensor_layer import SensorLayer
from simulator.settings import SimulatorSettings
from simulator.truth_writer import TruthWriter

POSITIVE = click.FloatRange(min=0, min_open=True)


class Progress(Sink):
    """Writes truth as it comes and a live progress line on stderr."""

    def __init__(self, truth: TruthWriter | None, cars: int, quiet: bool, metrics=None):
        self.writer, self.cars, self.quiet, self.metrics = truth, cars, quiet, metrics
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last_print = 0.0
        self._last = (self.t0, 0)
        self.rate = 0.0

    def truth(self, records) -> None:
        if self.writer is not None:
            self.writer.write(records)

    def stats(self, snapshot: dict) -> None:
        self.merged([snapshot])

    def merged(self, snapshots: list[dict]) -> None:
        now = time.monotonic()
        sent = sum(s["events_sent"] for s in snapshots)
        errors = sum(s["dropped"] + s["unacked"] for s in snapshots)
        t_prev, sent_prev = self._last
        if now - t_prev >= 1.0:
            self.rate = (sent - sent_prev) / (now - t_prev)
            self._last = (now, sent)
        if self.metrics is not None:
            self.metrics.update(snapshots)
        if self.quiet or now - self._last_print < (0.5 if self.tty else 5.0):
            return
        self._last_print = now
        conns = sum(s["open_connections"] for s in snapshots)
        line = (
            f"sent {sent:,} events  {self.rate:,.0f} ev/s  cars {self.cars:,}  connections {conns:,}  "
            f"errors {errors:,}  {now - self.t0:,.0f}s"
        )
        last_error = next((s["last_error"] for s in snapshots if s["last_error"]), "")
        if last_error and errors:
            line += f"  last: {last_error[:80]}"
        click.echo(("\r" + line + "\x1b[K") if self.tty else line, err=True, nl=not self.tty)


class Metrics:
    """Prometheus gauges of the run's totals on /metrics (``--metrics``)."""

    def __init__(self, port: int):
        from prometheus_client import Gauge, start_http_server

        start_http_server(port)
        self.sent = Gauge("fleetpulse_simulator_events_sent", "Events published")
        self.errors = Gauge("fleetpulse_simulator_errors", "Events dropped (QoS 0) or unacked (QoS 1)")
        self.connections = Gauge("fleetpulse_simulator_open_connections", "Open MQTT connections")
        self.not_routed = Gauge("fleetpulse_simulator_not_routed", "QoS 1 PUBACKs that said not delivered (no subscriber, refused); each published again")

    def update(self, snapshots: list[dict]) -> None:
        self.sent.set(sum(s["events_sent"] for s in snapshots))
        self.errors.set(sum(s["dropped"] + s["unacked"] for s in snapshots))
        self.connections.set(sum(s["open_connections"] for s in snapshots))
        self.not_routed.set(sum(s["not_routed"] for s in snapshots))


def summarise(cfg: RunConfig, results: list[dict], plan, wall_s: float, truth_records: int) -> dict:
    sent = sum(r["events_sent"] for r in results)
    elapsed = max((r["elapsed_s"] for r in results), default=0.0) or wall_s
    failing = plan.failing_counts() if plan is not None else {m: 0 for m in FAILURE_MODES}
    return {
        "cars": cfg.cars,
        "events_sent": sent,
        "events_per_s": round(sent / elapsed, 1) if elapsed else 0.0,
        "duration_s": round(elapsed, 3),
        "car_hours": round(sent * cfg.sample_interval / 3600, 2),
        "failing_cars": failing,
        "failing_started": sum(r["failing_started"] for r in results),
        "errors": sum(r["dropped"] + r["unacked"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "unacked": sum(r["unacked"] for r in results),
        "acked": sum(r["acked"] for r in results),
        "not_routed": sum(r["not_routed"] for r in results),
        "resent": sum(r["resent"] for r in results),
        "reconnects": sum(r["reconnects"] for r in results),
        "connections": sum(r["connections"] for r in results),
        "workers": cfg.workers,
        "qos": cfg.qos,
        "source": cfg.source,
        "profile": cfg.profile,
        "sensors": asdict(cfg.sensors),
        "ota": asdict(cfg.ota) if cfg.ota is not None else None,
        "rate": cfg.rate,
        "sample_interval_s": cfg.sample_interval,
        "seed": cfg.seed,
        "truth_records": truth_records,
        "rss_mb": round(sum(r["rss_mb"] for r in results), 1),
        "wall_s": round(wall_s, 3),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cars", default=100, show_default=True, type=click.IntRange(min=1), help="Cars in the fleet.")
@click.option("--rate", default=0.1, show_default=True, type=POSITIVE, help="Messages per second per car (original: 0.1).")
@click.option("--duration", default=60.0, show_default=True, type=POSITIVE, help="Seconds to run.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same cars, values and ground truth.")
@click.option("--failures", default=0.05, show_default=True, type=click.FloatRange(0, 1), help="Fraction of cars that develop one failure.")
@click.option("--connections", default=4, show_default=True, type=click.IntRange(min=1), help="MQTT connections; = --cars gives one per car (client id = car id).")
@click.option("--qos", default="1", show_default=True, type=click.Choice(["0", "1"]),
              help="MQTT QoS: 1 keeps each event until a PUBACK says a subscriber has it, 0 is best effort.")
@click.option("--source", default="model", show_default=True, type=click.Choice(["model", "csv"]), help="Car model, or replay of the original CSV.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help=f"CSV to replay [default: {DEFAULT_CSV}]")
@click.option("--sample-interval", default=10.0, show_default=True, type=POSITIVE, help="Simulated seconds per event (time compression).")
@click.option("--ramp", "ramp_s", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Simulated seconds a failure takes to reach full severity.")
@click.option("--profile", default="default", show_default=True, type=click.Choice(list(PROFILES)), help="Fleet profile: what healthy driving, climate and batteries look like (simulator/profiles.py).")
@click.option("--sensor-noise", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Gaussian sensor noise, in multiples of a typical sensor's (simulator/sensor_layer.py).")
@click.option("--quantise", is_flag=True, help="Report readings in sensor steps (integer C and km/h, 1% charge, ...).")
@click.option("--stuck-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Chance per car and reading that one sensor repeats its last report.")
@click.option("--ota-firmware", type=click.IntRange(min=1), default=None,
              help="Roll out this control_unit_firmware over the air (a healthy change; ground truth unchanged).")
@click.option("--ota-start-s", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds into the run (at --rate) the rollout starts.")
@click.option("--ota-ramp-s", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds over which the updated share grows linearly to --ota-share.")
@click.option("--ota-share", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Share of the fleet updated once the ramp is over.")
@click.option("--truth-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write ground truth as JSON Lines here.")
@click.option("--truth-topic", default=GROUND_TRUTH, show_default=True, help="Kafka topic for ground truth ('' = none).")
@click.option("--mqtt-brokers", help="host:port[,host:port...]; cars spread over them [env FLEETPULSE_SIMULATOR_MQTT_BROKERS].")
@click.option("--kafka-bootstrap-servers", help="Kafka for ground truth [env FLEETPULSE_SIMULATOR_KAFKA_BOOTSTRAP_SERVERS].")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Publishing processes (0 = one per 15,000 connections).")
@click.option("--keepalive", default=60, show_default=True, type=click.IntRange(5, 3600), help="MQTT keepalive seconds.")
@click.option("--metrics", is_flag=True, help="Serve Prometheus /metrics on FLEETPULSE_SIMULATOR_METRICS_PORT.")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def simulate(cars, rate, duration, seed, failures, connections, qos, source, csv_path, sample_interval, ramp_s, profile, sensor_noise,
             quantise, stuck_rate, ota_firmware, ota_start_s, ota_ramp_s, ota_share, truth_file, truth_topic, mqtt_brokers,
             kafka_bootstrap_servers, workers, keepalive, metrics, quiet, as_json):
    """Publish one cardata-v1 record per car every 1/RATE s on vehicles/sensor/data/<car-id>.

    A fraction of cars (--failures) develops one failure mode at a random onset; ground truth goes to
    Kafka (--truth-topic) and --truth-file, never into the MQTT payload. --ota-firmware rolls a new
    firmware out to a growing share of the fleet, a healthy change that ground truth does not mark.

    Identities and TLS come from the environment, never from flags: with --connections = --cars each
    car logs in as itself from FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE (`fleetpulse stack provision`
    writes it); otherwise the connections log in as the fleet gateway, FLEETPULSE_SIMULATOR_MQTT_USERNAME
    with _MQTT_PASSWORD_FILE (or _MQTT_PASSWORD). FLEETPULSE_SIMULATOR_MQTT_TLS and _MQTT_CA_FILE turn
    on TLS; ground truth goes to Kafka as FLEETPULSE_SIMULATOR_KAFKA_USERNAME (..._KAFKA_* as the bridge's).
    """
    settings = load_settings(SimulatorSettings, mqtt_brokers=mqtt_brokers, kafka_bootstrap_servers=kafka_bootstrap_servers)
    sensors = SensorLayer(sensor_noise, quantise, stuck_rate)
    if source == "csv":
        csv_path = csv_path or DEFAULT_CSV
        if not csv_path.is_file():
            raise click.BadParameter(f"{csv_path} does not exist", param_hint="--csv")
        if profile != "default" or sensors.active:
            raise click.BadParameter("a CSV replay has its own cars and sensors", param_hint="--profile/--sensor-noise/--quantise/--stuck-rate")
    ota = _rollout(ota_firmware, ota_start_s, ota_ramp_s, ota_share, rate, source)
    connections = min(connections, cars)
    mqtt = settings.mqtt
    mqtt.ssl_context()  # an unreadable CA file is one line here, not a traceback in every worker
    cfg = RunConfig(
        cars=cars, rate=rate, duration=duration, seed=seed, failures=failures, connections=connections, qos=int(qos),
        source=source, csv_path=str(csv_path) if csv_path else None, sample_interval=sample_interval, ramp_s=ramp_s,
        profile=profile, sensors=sensors, ota=ota, brokers=mqtt.endpoints, keepalive=keepalive, workers=workers or auto_workers(cars, connections),
        tls=mqtt.tls, ca_file=mqtt.ca_file, gateway=(mqtt.username, mqtt.password) if mqtt.username else None,
        car_credentials_file=str(settings.car_credentials_file) if settings.car_credentials_file else None,
    )
    if (missing := missing_car_credentials(cfg)) is not None:
        raise SettingsError(f"FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE {cfg.car_credentials_file} has no password for car {missing}; "
                            f"provision the fleet first (fleetpulse stack provision --cars {cars})")
    require_mqtt(mqtt)
    writer = None
    if source == "model" and (truth_topic or truth_file):
        writer = TruthWriter(settings.kafka, truth_topic, truth_file)
    progress = Progress(writer, cars, quiet, Metrics(settings.metrics_port) if metrics else None)
    t0 = time.monotonic()
    try:
        if cfg.workers == 1:
            results = run_in_process(cfg, progress)
        else:
            results = run_processes(cfg, progress, progress.merged)
    finally:
        if writer is not None:
            writer.close()
    if not quiet and progress.tty:
        click.echo("", err=True)
    summary = summarise(cfg, results, make_plan(cfg), time.monotonic() - t0, writer.count if writer else 0)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(_human(summary))


def _rollout(firmware: int | None, start_s: float, ramp_s: float, share: float, rate: float, source: str) -> Rollout | None:
    """The rollout in events of a car: its times are the run's schedule, so a rerun updates the same events."""
    if firmware is None:
        return None
    if source == "csv":
        raise click.BadParameter("a CSV replay has its own firmware values", param_hint="--ota-firmware")
    try:
        return Rollout(firmware, round(start_s * rate), round(ramp_s * rate), share)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ota-firmware") from None


def _human(s: dict) -> str:
    failing = ", ".join(f"{m} {n}" for m, n in s["failing_cars"].items() if n) or "none"
    return (
        f"simulated {s['cars']:,} cars: {s['events_sent']:,} events in {s['duration_s']:.1f}s "
        f"({s['events_per_s']:,.0f} ev/s, {s['car_hours']:,.1f} car-hours) over {s['connections']:,} connections at QoS {s['qos']}; "
        f"errors {s['errors']:,}, not routed (published again) {s['not_routed']:,}, reconnects {s['reconnects']}, rss {s['rss_mb']:.0f} MB; failing cars: {failing}; "
        f"truth records {s['truth_records']:,}"
        + (f"; OTA firmware {s['ota']['firmware']} from event {s['ota']['start_seq']}" if s["ota"] else "")
    )
