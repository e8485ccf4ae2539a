"""The demo's outputs: ``summary.json`` for tools and ``report.html``, one self-contained page for people."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np

from devtools.demo import svg
from fleetpulse.evaluation import Quality
from fleetpulse.hysteresis import Rule

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#111827;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
.sub{color:#6b7280} table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:right}
th{background:#f9fafb} td:first-child,th:first-child{text-align:left}
.kpis{display:flex;flex-wrap:wrap;gap:.8rem} .kpi{border:1px solid #e5e7eb;border-radius:8px;padding:.6rem .9rem;min-width:140px}
.kpi b{display:block;font-size:1.35rem} .kpi span{color:#6b7280;font-size:.8rem}
.ok{color:#15803d} .bad{color:#b91c1c}
svg.chart{background:#fff;border:1px solid #f3f4f6;margin:.4rem .4rem .4rem 0}
svg .title{font-weight:600;font-size:12px} svg .tick{font-size:10px;fill:#4b5563} svg .axis{font-size:11px;fill:#374151}
svg .grid{stroke:#f3f4f6} svg .hline{stroke:#b91c1c;stroke-dasharray:4 3} svg .vline{stroke:#9333ea;stroke-dasharray:2 2}
.grid2{display:flex;flex-wrap:wrap} code{background:#f3f4f6;padding:0 .25rem;border-radius:3px}
"""

ARCH = [
    ("simulator", "cars, physical model, failures"),
    ("Mosquitto", "MQTT 5, vehicles/sensor/data/<car>"),
    ("bridge", "MQTT -> Kafka, DLQ"),
    ("Kafka", "sensor-data, ground-truth, alerts"),
    ("KFP pipeline", "TF-IO train -> evaluate -> publish"),
    ("GCS", "car-anomaly/<version>/ SavedModel"),
    ("model server", "KServe V2 REST + gRPC"),
    ("transformer", "micro-batches, hysteresis"),
    ("alerts + twins", "Kafka alerts, MongoDB fleetpulse.cars"),
]


def architecture_svg() -> str:
    w, h, bw, bh = 1060, 190, 108, 58
    parts = [f'<svg class="chart" role="img" aria-label="architecture" viewBox="0 0 {w} {h}" width="{w}" height="{h}">']
    gap = (w - 20 - len(ARCH) * bw) / (len(ARCH) - 1)
    for i, (name, note) in enumerate(ARCH):
        x = 10 + i * (bw + gap)
        y = 20 if i % 2 == 0 else 100
        parts.append(f'<rect x="{x:.0f}" y="{y}" width="{bw}" height="{bh}" rx="8" fill="#eff6ff" stroke="#2563eb"/>')
        parts.append(f'<text x="{x + bw / 2:.0f}" y="{y + 22}" text-anchor="middle" class="title">{escape(name)}</text>')
        words, line, lines = note.split(), "", []
        for word in words:
            if len(line) + len(word) > 18:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for j, text in enumerate(lines[:2]):
            parts.append(f'<text x="{x + bw / 2:.0f}" y="{y + 37 + 11 * j}" text-anchor="middle" class="tick">{escape(text)}</text>')
        if i:
            px = 10 + (i - 1) * (bw + gap) + bw
            py = 20 + bh / 2 if (i - 1) % 2 == 0 else 100 + bh / 2
            parts.append(f'<line x1="{px:.0f}" y1="{py:.0f}" x2="{x:.0f}" y2="{y + bh / 2:.0f}" stroke="#6b7280" marker-end="url(#arrow)"/>')
    parts.insert(1, '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>')
    parts.append("</svg>")
    return "".join(parts)


def _per_mode(ev: Quality) -> dict:
    return {mode: {k: round(v, 4) if isinstance(v, float) else v for k, v in q.as_dict().items()} for mode, q in ev.per_mode.items()}


def summary_dict(run: dict, ev: Quality) -> dict:
    lat = np.array(run.get("latencies_ms", []), dtype=float)
    c = ev.counts
    return {
        "cars": run["cars"],
        "events": ev.events,
        "events_published": run.get("events_published"),
        # The detection stretch's events the simulator sent (at QoS 1: that the broker acknowledged)
        # against ``events``, what reached sensor-data: lost = sent - events, when positive.
        "events_sent": run.get("events_sent"),
        "alerts": run["alerts"],
        "twins": run["twins"],
        "f1": round(c.f1, 4),
        "precision": round(c.precision, 4),
        "recall": round(c.recall, 4),
        "median_detection_delay_events": ev.median_detection_delay,
        "false_alerts": ev.false_alerts,
        "false_alerts_per_1000_car_hours": round(ev.false_alerts_per_1000_car_hours, 3),
        "car_hours": round(ev.car_hours, 1),
        "missed_failing_cars": ev.missed,
        "detected_failing_cars": len(ev.delays),
        "healthy_cars_alerted_share": round(ev.healthy_cars_alerted_share, 4),
        "events_per_s": run.get("events_per_s"),
        "p50_latency_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_latency_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "model_uri": run.get("model_uri"),
        "model_version": run.get("model_version"),
        "threshold": run.get("threshold"),
        "training": run.get("training", {}),
        "per_failure_mode": _per_mode(ev),
        # Failures a 3-readings hysteresis could alert on (#15: at 0.1 ev/s a car sends 30 events in
        # 5 minutes, and one that starts failing in its last ones cannot), apart from the rest.
        "failures_by_length": ev.failures_with_at_least(Rule().k_warning),
        "confusion": {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn},
        "stages_s": run.get("stages_s", {}),
        "parameters": run.get("parameters", {}),
        "wall_time_s": run.get("wall_time_s"),
        # What the detection stretch cost (#15): the box's CPU share of every server and FleetPulse
        # process but the simulator, per process; twins' age p99; stream end -> every twin durable.
        "cpu_share": run.get("cpu_share"),
        "cpu": run.get("cpu"),
        "twin_freshness_p99_s": run.get("twin_freshness_p99_s"),  # over 200 sampled cars, every 10 s
        "twin_freshness_missing": run.get("twin_freshness_missing"),  # samples of a car that had no twin yet
        "drain_s": run.get("drain_s"),
        "scored_all_s": run.get("scored_all_s"),
        **({"lifecycle": run["lifecycle"]} if "lifecycle" in run else {}),
    }


def _kpi(label: str, value, good: bool | None = None) -> str:
    cls = "" if good is None else (' class="ok"' if good else ' class="bad"')
    return f'<div class="kpi"><b{cls}>{escape(str(value))}</b><span>{escape(label)}</span></div>'


def render_html(summary: dict, run: dict, ev: Quality) -> str:
    """The report page: headline figures, quality tables, score traces, delays, throughput, stages."""
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>FleetPulse demo report</title><style>{STYLE}</style></head><body>"]
    out.append("<h1>FleetPulse demo report</h1>")
    out.append(
        f'<p class="sub">{summary["cars"]:,} cars, {summary["events"]:,} events scored in the detection stretch ({summary["car_hours"]:,} simulated car-hours); '
        f'model <code>{escape(str(summary.get("model_uri")))}</code>; parameters {escape(json.dumps(summary.get("parameters", {})))}</p>'
    )
    out.append("<h2>Architecture</h2>" + architecture_svg())
    out += _headline(summary)
    out += _lifecycle(summary)
    out += _quality_tables(summary)
    out += _score_traces(summary, run)
    out += _delays(ev)
    out += _throughput(run)
    out.append("<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th></tr>")
    for stage, secs in summary.get("stages_s", {}).items():
        out.append(f"<tr><td>{escape(stage)}</td><td>{secs:.1f}</td></tr>")
    out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _headline(s: dict) -> list[str]:
    delay, p99 = s["median_detection_delay_events"], s.get("p99_latency_ms")
    return [
        "<h2>Headline figures</h2><div class=kpis>",
        _kpi("F1 (goal 0.95)", f"{s['f1']:.3f}", s["f1"] >= 0.9),
        _kpi("precision", f"{s['precision']:.3f}"),
        _kpi("recall", f"{s['recall']:.3f}"),
        _kpi("median detection delay (events)", "n/a" if delay is None else f"{delay:g}", delay is not None and delay <= 5),
        _kpi("false alerts / 1,000 car-hours", f"{s['false_alerts_per_1000_car_hours']:.2f}", s["false_alerts_per_1000_car_hours"] < 1),
        _kpi("events/s through the scorer", f"{(s.get('events_per_s') or 0):,.0f}"),
        _kpi("p99 event -> alert (ms)", "n/a" if p99 is None else f"{p99:,.0f}", p99 is not None and p99 < 250),
        _kpi("alerts", f"{s['alerts']:,}"),
        _kpi("cars with a twin", f"{s['twins']:,} / {s['cars']:,}", s["twins"] == s["cars"]),
        "</div>",
    ]


def _quality_tables(s: dict) -> list[str]:
    c = s["confusion"]
    out = [
        "<h2>Confusion matrix (events)</h2><table><tr><th></th><th>flagged</th><th>not flagged</th></tr>",
        f"<tr><th>failing (ground truth)</th><td>{c['tp']:,}</td><td>{c['fn']:,}</td></tr>",
        f"<tr><th>healthy (ground truth)</th><td>{c['fp']:,}</td><td>{c['tn']:,}</td></tr></table>",
        "<h2>Per failure mode</h2><table><tr><th>mode</th><th>cars</th><th>events</th><th>precision</th><th>recall</th><th>F1</th></tr>",
    ]
    for mode, m in s["per_failure_mode"].items():
        out.append(f"<tr><td>{escape(mode)}</td><td>{m['cars']}</td><td>{m['events']:,}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td><td>{m['f1']:.3f}</td></tr>")
    out.append("</table>")
    return out


def _score_traces(s: dict, run: dict) -> list[str]:
    out = ["<h2>Score over time</h2><p class=sub>Anomaly score per event for a few failing and healthy cars; dashed red line: "
           "the calibrated threshold; purple: failure onset.</p><div class=grid2>"]  # fmt: skip
    for car, trace in run.get("score_traces", {}).items():
        out.append(
            svg.line_chart(
                {car: (trace["seq"], trace["score"])},
                title=f"{car} ({trace['mode']})",
                x_label="event number in the detection stretch",
                y_label="score (log)",
                hlines={"threshold": s["threshold"]} if s.get("threshold") else None,
                vlines={"onset": trace["onset_seq"]} if trace.get("onset_seq") is not None else None,
                width=520,
                log_y=True,
            )
        )
    out.append("</div>")
    return out


def _delays(ev: Quality) -> list[str]:
    if not ev.delays:
        return []
    counts = np.bincount(np.array(ev.delays), minlength=max(ev.delays) + 1)
    return ["<h2>Detection delay</h2>",
            svg.bar_chart([str(i) for i in range(len(counts))], counts.tolist(), title="events from onset to the first alert, per failing car",
                          x_label="events after onset", y_label="cars")]  # fmt: skip


def _throughput(run: dict) -> list[str]:
    timeline = run.get("throughput", [])
    if not timeline:
        return []
    out = ["<h2>Throughput and latency over the run</h2><div class=grid2>",
           svg.line_chart({"scored events/s": ([t for t, _ in timeline], [r for _, r in timeline])}, title="transformer throughput",
                          x_label="seconds into the detection stretch", y_label="events/s", width=520)]  # fmt: skip
    lat_t = run.get("latency_timeline", [])
    if lat_t:
        out.append(svg.line_chart({"event -> alert (ms)": ([t for t, _ in lat_t], [v for _, v in lat_t])}, title="alert latency",
                                  x_label="seconds into the detection stretch", y_label="ms", width=520))  # fmt: skip
    out.append("</div>")
    return out


def write(out_dir: Path, run: dict, ev: Quality) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(run, ev)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.html").write_text(render_html(summary, run, ev))
    return summary


def _lifecycle(s: dict) -> list[str]:
    """`demo --lifecycle`: v1 and v2 side by side, the timeline with its markers, the decision."""
    life = s.get("lifecycle")
    if not life:
        return []
    markers = life.get("markers_s", {})
    out = ["<h2>Model lifecycle: an over-the-air firmware update</h2>",
           f'<p class=sub>Firmware {life["ota"]["firmware"]} rolled out from {life["ota"]["start_s"]:g} s over {life["ota"]["ramp_s"]:g} s '
           f'to {life["ota"]["share"]:.0%} of the fleet; v{life["v1"]} trained before it, v{life["v2"] or "?"} retrained on the drift. '
           "False alerts are counted when raised, under the model that raised them.</p>",
           "<table><tr><th>model</th><th>cars</th><th>false alerts / 1,000 car-h, updated cars</th>"
           "<th>... other cars</th><th>recall (events)</th><th>healthy car-hours</th></tr>"]  # fmt: skip
    for name, period in life.get("periods", {}).items():
        recall = period["all"]["recall"]
        out.append(f"<tr><td>{escape(name)}{' (trained before the rollout)' if period['version'] == life['v1'] else ''}</td><td>{period['all']['cars']:,}</td>"
                   f"<td>{period['updated']['false_alerts_per_1000_car_hours']:,.2f}</td>"
                   f"<td>{period['not_updated']['false_alerts_per_1000_car_hours']:,.2f}</td>"
                   f"<td>{'n/a' if recall is None else f'{recall:.3f}'}</td><td>{period['all']['healthy_car_hours']:,.0f}</td></tr>")  # fmt: skip
    out.append("</table>")
    timeline = life.get("timeline", [])
    if timeline:
        t = [row["t_s"] for row in timeline]
        out.append("<div class=grid2>")
        out.append(svg.line_chart(
            {"updated cars": (t, [row["false_alerts_per_1000_car_hours_updated"] + 0.01 for row in timeline]),
             "other cars": (t, [row["false_alerts_per_1000_car_hours_not_updated"] + 0.01 for row in timeline])},
            title="false alerts per 1,000 car-hours (log, +0.01)", x_label="seconds into the detection stretch", y_label="per 1,000 car-h",
            vlines=markers, hlines={"budget 1": 1.0}, width=1060, log_y=True))  # fmt: skip
        out.append(svg.line_chart(
            {"recall": (t, [row["recall"] if row["recall"] is not None else 0.0 for row in timeline]),
             "updated share": (t, [row["updated_share"] for row in timeline])},
            title="recall on failing events, and the share of events on the new firmware", x_label="seconds into the detection stretch",
            y_label="share", vlines=markers, hlines={"0.95": 0.95}, width=520))  # fmt: skip
        psi = life.get("firmware_psi", [])
        if psi:
            out.append(svg.line_chart({"firmware PSI": ([p[0] for p in psi], [p[1] for p in psi])}, title="firmware drift (transformer gauge)",
                                      x_label="seconds into the detection stretch", y_label="PSI", vlines=markers,
                                      hlines={"threshold": life.get("drift_threshold", 0.25)}, width=520))  # fmt: skip
        out.append("</div>")
    out.append("<table><tr><th>when (s)</th><th>what</th></tr>")
    for name, at in sorted(markers.items(), key=lambda kv: kv[1]):
        out.append(f"<tr><td>{at:.1f}</td><td>{escape(name)}</td></tr>")
    out.append("</table>")
    for r in life.get("retrain", []):
        out.append(f"<p><b>retrain: {escape(str(r.get('outcome')))}</b>: {escape(str(r.get('detail', '')))}</p>")
    for d in life.get("decisions", []):
        out.append(f"<p><b>decider: {escape(d.get('action', ''))} v{d.get('version')}</b> ({'applied' if d.get('applied') else 'not applied'}): "
                   f"{escape(str(d.get('reason', '')))}</p>")  # fmt: skip
    return out
