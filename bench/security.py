"""What security costs (#14): the same runs with it on and off, in one run of this script.

Two private stacks of our own (temp state dirs, free ports, started by the stack's own code), alike but
for ``secure``: plain and anonymous, or Kafka SASL_SSL/SCRAM-SHA-512 with ACLs and Mosquitto TLS with
dynamic-security logins. Runs alternate between them, so load from other work on the shared cores
falls on both. The shared stack is left alone.

- bridge: ``fleetpulse bridge`` at QoS 1, live (publish flat out) and draining a backlog (the bridge's own
  capacity), events/s and the bridge's CPU per event (bench/bridge.py's runs, against either stack);
- simulator: ``fleetpulse simulate`` multiplexed (the gateway identity ``simulator``) and one connection
  per car (each car its own login), events/s and CPU per event;
- connections: N cars, one connection each (per-car login over TLS vs plain anonymous), spread over
  brokers and worker processes (20,000 open files per process on this box); the time from starting the
  simulator (Python, its spawned workers included) until every connection is open, and the CPU the
  simulator and the brokers used by then.

    nice -n 5 .venv/bin/python bench/security.py [--quick] [--cars 100000]

Writes bench/results/security.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose simulator.py would shadow the simulator package

from devtools.benchmarking import write_result  # noqa: E402
from devtools.stack import access, control  # noqa: E402
from devtools.stack.credentials import IdentityStore  # noqa: E402
from devtools.stack.mqtt import MosquittoService  # noqa: E402
from devtools.stack.process import free_port, port_in_use  # noqa: E402
from devtools.stack.rights import ADMIN  # noqa: E402
from devtools.stack.settings import StackSettings  # noqa: E402
from simulator.car_model import car_id  # noqa: E402

FLEETPULSE = str(Path(sys.executable).with_name("fleetpulse"))
RESULTS = ROOT / "bench" / "results" / "security.json"
PARTS = ("bridge", "simulator", "connections")
BROKER_CONNECTIONS = 17_000
"""Car connections per Mosquitto: under its 20,000 open files, with room for its own."""


def _bench(name: str):
    """A sibling bench script as a module (bench/ is no package, and bench/simulator.py's name is the simulator's)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bridge_bench, simulator_bench = _bench("bridge"), _bench("simulator")


# --- the two private stacks -----------------------------------------------------------------------


def _free_range(n: int, start: int) -> int:
    """The first port p >= start with p .. p+n-1 all free (brokers listen on consecutive ports)."""
    p = start
    while any(port_in_use("127.0.0.1", q) for q in range(p, p + n)):
        p += n
    return p


class Stack:
    """A private stack, secured or not, with ``brokers`` Mosquitto processes."""

    def __init__(self, secure: bool, brokers: int, base_port: int):
        mqtt = _free_range(brokers, base_port)
        tls = _free_range(brokers, mqtt + brokers + 100)
        self.secure, self.brokers = secure, brokers
        self.settings = StackSettings(state_dir=Path(tempfile.mkdtemp(prefix=f"fleetpulse-bench-{'secure' if secure else 'plain'}-")),
                                      kafka_port=free_port(), kafka_controller_port=free_port(), mqtt_port=mqtt, mqtt_tls_port=tls,
                                      mongodb_port=free_port(), gcs_port=free_port(), postgresql_port=free_port(), kafka_heap="512m",
                                      secure=secure)

    @property
    def label(self) -> str:
        return "secured" if self.secure else "plain"

    def up(self, cars: int) -> None:
        """Start it; secured, with an identity for each of ``cars`` cars first (each broker loads them all at start)."""
        if self.secure:
            self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            control.provision_cars(self.settings, [car_id(i) for i in range(cars)])
        control.up(self.settings, mqtt_brokers=self.brokers)

    def down(self) -> None:
        control.down(self.settings, wipe=True)

    def mqtt_env(self, identity: str = "simulator") -> dict[str, str]:
        """``FLEETPULSE_SIMULATOR_MQTT_*``: TLS and ``identity``'s login when secured, else plain brokers."""
        return access.mqtt_env("SIMULATOR", self.settings, identity=identity)

    def car_env(self, cars: int) -> dict[str, str]:
        """One connection per car: each car logs in as itself from the provisioning file when secured."""
        found = access.car_credentials_file(self.settings, [car_id(i) for i in range(cars)])
        return {**self.mqtt_env(), **({"FLEETPULSE_SIMULATOR_CAR_CREDENTIALS_FILE": str(found)} if found else {})}

    @property
    def plain_ports(self) -> list[int]:
        """The brokers' plain TCP ports (loopback; secured, they too require a login)."""
        return [MosquittoService(self.settings, i).port for i in range(self.brokers)]

    @property
    def counter_login(self) -> tuple[str, str] | None:
        return (ADMIN, IdentityStore(self.settings.identities_dir).password(ADMIN)) if self.secure else None

    def broker_pids(self) -> list[int]:
        return [pid for i in range(self.brokers) if (pid := MosquittoService(self.settings, i).process.pid()) is not None]


# --- CPU of a process tree ------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (running processes, read from /proc)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# --- runs -----------------------------------------------------------------------------------------


def bridge_runs(stacks: list[Stack], n: int, repeats: int) -> dict:
    """QoS 1 bridge, 1 process, live and backlog, on each stack; best of ``repeats`` (alternating stacks)."""
    out: dict = {}
    for backlog in (False, True):
        mode = "backlog" if backlog else "live"
        tries: dict[str, list[dict]] = {s.label: [] for s in stacks}
        for _ in range(repeats):
            for s in stacks:
                print(f"[{s.label}]", end="", flush=True)
                tries[s.label].append(bridge_bench.throughput("bridge", 1, 1, n, bridge_bench.stack_target(s.settings), backlog))
        for label, runs in tries.items():
            best = max(runs, key=lambda r: r["events_per_s"])
            out[f"{label}_{mode}"] = {**best, "tries_events_per_s": [r["events_per_s"] for r in runs],
                                      "tries_cpu_us_per_event": [r["cpu_us_per_event"] for r in runs]}
    return out


def simulate(stack: Stack, env: dict[str, str], qos: int, *args: str) -> dict:
    """`fleetpulse simulate` against ``stack`` with a counting subscriber; the summary, CPU and delivery."""
    counter = simulator_bench.Counter(stack.plain_ports, 0, stack.counter_login)
    brokers = stack.broker_pids()
    broker_cpu0 = cpu_s(brokers)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [FLEETPULSE, "simulate", "--json", "--quiet", "--truth-topic", "", "--qos", str(qos), *args]
    t0 = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    broker_cpu = cpu_s(brokers) - broker_cpu0
    if proc.returncode != 0:
        counter.wait(0, timeout=1)
        return {"args": list(args), "qos": qos, "error": proc.stderr.strip()[-500:]}
    summary = json.loads(proc.stdout)
    delivered = counter.wait(summary["events_sent"], quiet_s=3.0, timeout=300)
    sim_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "args": list(args), "qos": qos, "secured": stack.secure, "events_sent": summary["events_sent"],
        "events_per_s": summary["events_per_s"], "acked": summary["acked"], "errors": summary["errors"],
        "connections": summary["connections"], "workers": summary["workers"], "delivered": delivered,
        "simulator_cpu_s": round(sim_cpu, 2), "cpu_us_per_event": round(sim_cpu / summary["events_sent"] * 1e6, 2) if summary["events_sent"] else None,
        "broker_cpu_s": round(broker_cpu, 2), "wall_s": round(wall, 2), "rss_mb": summary["rss_mb"],
    }


def connect(stack: Stack, cars: int, timeout_s: float = 1500) -> dict:
    """``cars`` cars, one connection each: seconds from starting `fleetpulse simulate` until every one is
    open, and the CPU the simulator (its workers included) and the brokers had used by then.

    The run is long and sparse (one event per car per 100 s) so that no worker is done, closing its
    connections, before the last has opened its own; it is stopped once all are open. A worker reports
    its connections once all of them are open (the ``--metrics`` gauge, polled every 0.1 s), so the
    milestones are per worker. Keepalive 300 s (the brokers' maximum): a worker pings only once its whole
    pool is open, and with TLS on this box that took longer than 1.5 x 60 s, so the broker dropped its
    first connections and they connected again (measured: the open count fell back by up to ~1,000)."""
    brokers = stack.broker_pids()
    broker_cpu0 = cpu_s(brokers)
    port = free_port()
    argv = [FLEETPULSE, "simulate", "--json", "--quiet", "--truth-topic", "", "--qos", "0", "--metrics", "--cars", str(cars),
            "--connections", str(cars), "--rate", "0.01", "--duration", "3000", "--keepalive", "300"]
    env = {**os.environ, **stack.car_env(cars), "FLEETPULSE_SIMULATOR_METRICS_PORT": str(port)}
    with tempfile.TemporaryFile("w+") as err:  # a pipe nobody reads until the end would fill and block the workers' logging
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        row: dict = {"cars": cars, "secured": stack.secure, "all_open_s": None, "open_after_s": {}}
        try:
            while proc.poll() is None and time.monotonic() - t0 < timeout_s:
                opened = _open_connections(port)
                if opened and opened not in row["open_after_s"]:
                    row["open_after_s"][opened] = round(time.monotonic() - t0, 2)
                if opened >= cars:
                    row.update(all_open_s=round(time.monotonic() - t0, 2), simulator_cpu_to_open_s=round(cpu_s(_tree(proc.pid)), 2),
                               broker_cpu_to_open_s=round(cpu_s(brokers) - broker_cpu0, 2), simulator_workers=len(_tree(proc.pid)) - 1)
                    break
                time.sleep(0.1)
        finally:
            _stop_tree(proc)
        if row["all_open_s"] is None:
            err.seek(0)
            row["error"] = err.read()[-1000:] or f"not all open within {timeout_s:.0f} s"
    return row


def _open_connections(port: int) -> int:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    return int(next((float(line.split()[-1]) for line in text.splitlines() if line.startswith("fleetpulse_simulator_open_connections ")), 0))


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the simulator and its workers (ours), then SIGKILL what is left after 30 s."""
    pids = _tree(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(30)
            if not any(Path(f"/proc/{p}").exists() for p in pids[1:]):
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(2)


# --- main -----------------------------------------------------------------------------------------


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs, 20,000 connections")
    ap.add_argument("--cars", type=int, default=None, help="cars (= connections) of the connection run [100,000; 20,000 quick]")
    ap.add_argument("--only", nargs="*", choices=PARTS, help="run only these parts; the others are kept from the last results")
    opts = ap.parse_args()
    only = set(opts.only or PARTS)
    cars = opts.cars or (20_000 if opts.quick else 100_000)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the brokers inherit it
    n_brokers = max(1, -(-cars // BROKER_CONNECTIONS))
    per_car_fleet = 2_000 if opts.quick else 5_000
    load0 = os.getloadavg()
    # Below the ephemeral range (32768-60999 here): 100,000 outgoing connections take most of it.
    stacks = [Stack(False, n_brokers, 23000), Stack(True, n_brokers, 23500)]
    previous = RESULTS.exists() and opts.only and json.loads(RESULTS.read_text())
    result: dict = {part: previous[part] for part in PARTS if previous and part not in only and part in previous}
    result["conditions"] = {"loadavg_at_start": load0, "open_files_limit": [hard, hard], "nice": os.nice(0), "brokers": n_brokers,
                            "connections_per_broker_max": BROKER_CONNECTIONS, "quick": opts.quick,
                            "note": "2 cores shared with other engineers' work; brokers, Kafka, subscriber and clients on the same cores",
                            "parts_run": sorted(only), **({"kept_parts_conditions": previous["conditions"]} if previous else {})}
    try:
        for s in stacks:
            t = time.monotonic()
            s.up(cars)
            print(f"{s.label} stack up ({n_brokers} brokers) in {time.monotonic() - t:.0f}s", flush=True)

        if "bridge" in only:
            print("bridge, QoS 1:", flush=True)
            result["bridge"] = bridge_runs(stacks, 40_000 if opts.quick else 150_000, 1 if opts.quick else 2)

        secs = "5" if opts.quick else "10"
        sim: dict = {}
        for _ in range((1 if opts.quick else 2) if "simulator" in only else 0):
            for s in stacks:
                # Multiplexed: 4 connections as the gateway; 300,000 ev/s asked for, so events/s is the capacity.
                r = simulate(s, s.mqtt_env(), 1, "--cars", "10000", "--rate", "30", "--duration", secs, "--connections", "4")
                sim.setdefault(f"{s.label}_multiplexed", []).append(r)
                print(f"  simulator multiplexed [{s.label}]: {r.get('events_per_s')} ev/s, {r.get('cpu_us_per_event')} us/event {r.get('error', '')}", flush=True)
                r = simulate(s, s.car_env(per_car_fleet), 1, "--cars", str(per_car_fleet), "--connections", str(per_car_fleet),
                             "--rate", "20", "--duration", secs)
                sim.setdefault(f"{s.label}_per_car", []).append(r)
                print(f"  simulator per car [{s.label}]: {r.get('events_per_s')} ev/s, {r.get('cpu_us_per_event')} us/event {r.get('error', '')}", flush=True)
        if sim:
            result["simulator"] = {k: {**max(v, key=lambda r: r.get("events_per_s") or 0), "tries_events_per_s": [r.get("events_per_s") for r in v]}
                                   for k, v in sim.items()}

        if "connections" in only:
            conn: dict = {}
            for s in stacks:
                conn[f"{s.label}_{cars}"] = r = connect(s, cars)
                print(f"  {cars:,} connections [{s.label}]: all open after {r.get('all_open_s')} s, simulator CPU {r.get('simulator_cpu_to_open_s')} s, "
                      f"brokers {r.get('broker_cpu_to_open_s')} s {r.get('error', '')}", flush=True)
            result["connections"] = conn
    finally:
        for s in stacks:
            s.down()
    result["conditions"]["loadavg_at_end"] = os.getloadavg()

    table = _table(result, cars)
    path = write_result("security", result, table)
    for row in table:
        print(f"{row['metric']:70} {row['value']!s:>10} {row['unit']:6} plain {row['baseline']!s:>10} ratio {row['ratio']}")
    print(f"wrote {path}")


def _table(result: dict, cars: int) -> list[dict]:
    rows = []

    def add(metric: str, secured, plain, unit: str) -> None:
        rows.append({"metric": metric, "value": secured, "unit": unit, "baseline": plain, "ratio": ratio(secured, plain), "target": "secured vs plain"})

    b = result["bridge"]
    for mode, what in (("live", "live publish->Kafka"), ("backlog", "draining a backlog")):
        add(f"bridge QoS 1, 1 process, {what}: TLS+logins", b[f"secured_{mode}"]["events_per_s"], b[f"plain_{mode}"]["events_per_s"], "ev/s")
        add(f"bridge CPU per event, {what}: TLS+logins", b[f"secured_{mode}"]["cpu_us_per_event"], b[f"plain_{mode}"]["cpu_us_per_event"], "us")
    sim = result["simulator"]
    for kind, what in (("multiplexed", "multiplexed, 4 connections as the gateway"), ("per_car", "one connection and login per car")):
        secured, plain = sim[f"secured_{kind}"], sim[f"plain_{kind}"]
        add(f"simulator QoS 1, {what}: TLS+login", secured.get("events_per_s"), plain.get("events_per_s"), "ev/s")
        add(f"simulator CPU per event, {what}: TLS+login", secured.get("cpu_us_per_event"), plain.get("cpu_us_per_event"), "us")
    c = result["connections"]
    secured, plain = c.get(f"secured_{cars}", {}), c.get(f"plain_{cars}", {})
    add(f"{cars:,} cars connected (per-car login over TLS vs anonymous)", secured.get("all_open_s"), plain.get("all_open_s"), "s")
    add(f"simulator CPU until {cars:,} connected", secured.get("simulator_cpu_to_open_s"), plain.get("simulator_cpu_to_open_s"), "s")
    add(f"Mosquitto CPU until {cars:,} connected", secured.get("broker_cpu_to_open_s"), plain.get("broker_cpu_to_open_s"), "s")
    return rows


if __name__ == "__main__":
    main()
