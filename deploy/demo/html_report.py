"""The demo's HTML report: the verdict, the figures and the plots, in one self-contained file that opens offline.

Plots (inline SVG, `deploy/demo/svg.py`): ops written / acknowledged / projected, backlogs, devices online,
push→projected lag, conflicts and retries over time — each with the incidents shaded — and the conflict
hotspots per entity and field.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from deploy.demo.svg import Band, Series, bar_chart, line_chart

__all__ = ["render_html", "write_html_report"]

INCIDENT_COLORS = {
    "kafka-degraded": "#f59e0b",
    "kafka-cut": "#dc2626",
    "projector-kill": "#7c3aed",
    "gateway-kill": "#db2777",
    "schema-rollout": "#0891b2",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1000px; color: #111827; background: #f9fafb; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 30px; }
.verdict { display: inline-block; padding: 4px 12px; border-radius: 6px; color: #fff; font-weight: 700; }
.ok { background: #16a34a; } .bad { background: #dc2626; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px 12px; }
.card .v { font-size: 22px; font-weight: 700; } .card .k { font-size: 12px; color: #6b7280; }
figure.chart { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px; margin: 14px 0; }
figure.chart svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #4b5563; margin: 4px 6px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
th, td { border: 1px solid #e5e7eb; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
pre { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 10px; white-space: pre-wrap; }
.muted { color: #6b7280; font-size: 13px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _short(label: str, width: int = 34) -> str:
    """A bar label that fits its column."""
    return label if len(label) <= width else f"{label[: width - 1]}…"


def _bands(report: dict[str, Any]) -> list[Band]:
    bands = []
    for incident in report.get("incidents", []):
        start = incident.get("started_at_s")
        if start is None:
            continue
        end = incident.get("ended_at_s") or start
        kind = incident["kind"]
        bands.append(Band(float(start), float(end), kind, INCIDENT_COLORS.get(kind, "#f97316")))
    return bands


def _card(value: Any, key: str) -> str:
    return f"<div class='card'><div class='v'>{_e(value)}</div><div class='k'>{_e(key)}</div></div>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure class='chart'>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _charts(report: dict[str, Any]) -> list[str]:
    timeline = report.get("timeline", [])
    bands = _bands(report)

    def points(key: str) -> list[tuple[float, float]]:
        return [(float(s["t"]), float(s[key])) for s in timeline]

    lag = report.get("lag", [])
    x_end = max((float(s["t"]) for s in timeline), default=None)
    hot = report.get("hotspots", [])
    top_entities = [
        (_short(f"{e['tenant_id']} · {e['entity_type']} {e['entity_id']}"), float(e["conflicts"]))
        for e in report.get("contended_entities", [])
    ]
    return [
        _figure(
            line_chart(
                "Ops written, acknowledged and projected",
                [
                    Series("written", points("written"), "#9ca3af", dashed=True),
                    Series("acknowledged", points("acknowledged"), "#2563eb"),
                    Series("projected", points("projected"), "#16a34a"),
                ],
                bands=bands,
                x_end=x_end,
                y_label="ops (cumulative)",
                chart_id="plot-ops",
            ),
            "Written: committed on a device (online or not). Acknowledged: the gateway answered after Kafka's ack. "
            "Projected: applied in PostgreSQL. Shaded: incidents.",
        ),
        _figure(
            line_chart(
                "Backlog over time",
                [
                    Series("device queues (not yet acknowledged)", points("device_backlog"), "#ea580c"),
                    Series("projector (acknowledged, not projected)", points("projector_backlog"), "#7c3aed"),
                ],
                bands=bands,
                x_end=x_end,
                y_label="ops",
                chart_id="plot-backlog",
            ),
            "Device queues grow while devices are offline or Kafka is cut and drain when they reconnect; the "
            "projector's backlog rises while it is down and falls as it catches up.",
        ),
        _figure(
            line_chart(
                "Lag: push → projected latency, by second of acceptance",
                [
                    Series("median", [(float(b["t"]), float(b["p50_ms"])) for b in lag], "#0891b2"),
                    Series("max", [(float(b["t"]), float(b["max_ms"])) for b in lag], "#be123c", dashed=True),
                ],
                bands=bands,
                x_end=x_end,
                y_label="milliseconds",
                chart_id="plot-lag",
            ),
            "From the gateway's keel-accepted-at-ms header to the projector's commit (applied_ops.applied_at).",
        ),
        _figure(
            line_chart(
                "Devices online, conflicts resolved, retries",
                [
                    Series("devices online", points("online"), "#16a34a"),
                    Series("conflicts resolved", points("conflicts"), "#7c3aed"),
                    Series("device retries", points("retries"), "#ea580c", dashed=True),
                ],
                bands=bands,
                x_end=x_end,
                y_label="count",
                chart_id="plot-devices",
            ),
            "Retries: device requests that failed transiently (503, timeouts, refused connections) and were retried "
            "with backoff.",
        ),
        _figure(
            bar_chart(
                "Conflict hotspots: decisions per entity and field",
                [(h["label"], float(h["conflicts"])) for h in hot],
                chart_id="plot-hotspots",
                empty_text="no conflicts in this run",
            ),
            "Each decision: one field of one entity written concurrently by two devices; the later write (HLC) won.",
        ),
        _figure(
            bar_chart(
                "Most contended entities",
                top_entities,
                color="#db2777",
                chart_id="plot-entities",
                empty_text="no conflicts in this run",
            ),
            "The entities with the most conflict decisions.",
        ),
    ]


def _incidents_table(report: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(i['kind'])}</td><td>{_e(i['started_at_s'])} → {_e(i['ended_at_s'])}</td>"
        f"<td>{'ok' if i['ok'] else 'FAILED'}</td><td>{_e(i['description'])}<br><span class='muted'>"
        f"{_e(i['detail'])}</span></td></tr>"
        for i in report.get("incidents", [])
    )
    if not rows:
        return "<p class='muted'>No incidents (chaos none).</p>"
    return f"<table><tr><th>incident</th><th>seconds</th><th>outcome</th><th>what happened</th></tr>{rows}</table>"


def _tenants_table(report: dict[str, Any]) -> str:
    rows = []
    for tenant, detail in report.get("per_tenant", {}).items():
        digests = "<br>".join(f"{_e(k)} <code>{_e(str(v)[:16])}</code>" for k, v in detail["digests"].items())
        rows.append(
            f"<tr><td>{_e(tenant)}</td><td>{detail['devices_matching']}/{detail['devices']}</td><td>{digests}</td></tr>"
        )
    return (
        "<table><tr><th>tenant</th><th>devices equal to the projection</th><th>projection digests "
        f"(entity.version)</th></tr>{''.join(rows)}</table>"
    )


def _catch_up(report: dict[str, Any]) -> str:
    catch = report.get("catch_up", {})
    lines = []
    for key, title in (("longest_offline", "Longest offline"), ("slowest", "Slowest catch-up")):
        found = catch.get(key)
        if found:
            took = "did not catch up" if found["catch_up_s"] is None else f"caught up in {found['catch_up_s']} s"
            lines.append(
                f"<li>{title}: <b>{_e(found['device_id'])}</b>, away {found['offline_s']} s with "
                f"{found['pending_at_reconnect']} ops queued; {took}.</li>"
            )
    return f"<ul>{''.join(lines)}</ul>" if lines else "<p class='muted'>No device went offline.</p>"


def _stuck(report: dict[str, Any]) -> str:
    stuck = report.get("drain_stuck", [])
    if not stuck:
        return ""
    items = "".join(
        f"<li><b>{_e(s['device_id'])}</b>: {_e(s['pending'])} ops queued; last error: {_e(s['last_error'])}</li>"
        for s in stuck
    )
    return f"<p>Devices that did not drain in the final phase:</p><ul>{items}</ul>"


def render_html(report: dict[str, Any]) -> str:
    """The report page."""
    converged = bool(report.get("converged"))
    verdict = (
        "<span class='verdict ok'>CONVERGED</span>" if converged else "<span class='verdict bad'>NOT CONVERGED</span>"
    )
    checker = report.get("checker", {})
    findings = "".join(
        f"<li><b>{_e(f['kind'])}</b> {_e(f['subject'])}: {_e(f['detail'])}</li>" for f in checker.get("findings", [])
    )
    cards = "".join(
        [
            _card(report.get("lost"), "acknowledged ops lost"),
            _card(report.get("duplicated"), "ops applied twice"),
            _card(f"{report.get('acked_ops')} / {report.get('projected_ops')}", "ops acknowledged / projected"),
            _card(report.get("conflicts"), "conflicts resolved"),
            _card(f"{report.get('p50_ms', 0):.0f} ms", "push→projected p50"),
            _card(f"{report.get('p99_ms', 0):.0f} ms", "push→projected p99"),
            _card(f"{report.get('max_catch_up_s', 0):.1f} s", "longest catch-up"),
            _card(f"{report.get('devices')} / {report.get('tenants')}", "devices / tenants"),
        ]
    )
    examples = "".join(f"<pre>{_e(text)}</pre>" for text in report.get("example_decisions", []))
    names = report.get("names", {})
    body = [
        f"<h1>Keel demo {verdict}</h1>",
        (
            f"<p class='muted'>run {_e(report.get('run_id'))}, started {_e(report.get('started_at'))}; seed "
            f"{_e(report.get('seed'))}, chaos {_e(report.get('chaos'))}, {_e(report.get('duration_s'))} s; "
            f"{_e(report.get('wall_s', '?'))} s wall time.</p>"
        ),
        f"<div class='cards'>{cards}</div>",
        (
            "<p>Converged means: every device's digest of every entity type equals the digest of the PostgreSQL "
            "projection for its tenant in the device's schema version, the projection equals a clean replay of the "
            "Kafka log, every acknowledged op was applied exactly once, and no device's seqs have gaps.</p>"
        ),
        "<h2>Over time</h2>",
        *_charts(report),
        "<h2>Incidents</h2>",
        _incidents_table(report),
        "<h2>Catch-up</h2>",
        _catch_up(report),
        "<h2>Three conflict decisions, in words</h2>",
        examples or "<p class='muted'>No conflicts in this run.</p>",
        "<h2>Convergence per tenant</h2>",
        _tenants_table(report),
        "<h2>Checker</h2>",
        (
            f"<pre>{_e(checker.get('acknowledged'))} acknowledged, {_e(checker.get('applied'))} applied, "
            f"{_e(checker.get('log_records'))} log records, {_e(checker.get('digests_compared'))} digest comparisons; "
            f"lost {_e(checker.get('lost'))}, duplicated {_e(checker.get('duplicated'))}, seq gaps "
            f"{_e(checker.get('seq_gaps'))}, inversions {_e(checker.get('seq_inversions'))}, diverged "
            f"{_e(checker.get('diverged'))}</pre>"
        ),
        f"<ul>{findings}</ul>" if findings else "<p class='muted'>No findings.</p>",
        _stuck(report),
        "<h2>Run</h2>",
        (
            f"<p class='muted'>topics <code>{_e(names.get('topic_prefix'))}.*</code>, PostgreSQL schema "
            f"<code>{_e(names.get('pg_schema'))}</code>, consumer group "
            f"<code>{_e(names.get('consumer_group'))}</code>, "
            f"logs <code>{_e(names.get('logs'))}</code>. Inspect with "
            f"<code>KEEL_PG_SCHEMA={_e(names.get('pg_schema'))} keel conflicts list</code>.</p>"
        ),
    ]
    title = f"Keel demo — {'converged' if converged else 'NOT converged'}"
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_html_report(report: dict[str, Any], path: Path) -> Path:
    """Write the page; its path."""
    path.write_text(render_html(report), encoding="utf-8")
    return path
