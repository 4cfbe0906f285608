"""The HTML report's page: its head, header, KPI cards, and the parts in their order.

The report's JSON summary (without the per-file lists) is embedded too, for programs. A job's
report has a KPI card for what the PACS confirmed at the job's last `migrator verify`, or
says that the job was not verified.
"""

from __future__ import annotations

import json

from migrator.report import svg
from migrator.report.html.assets import CSS, JS
from migrator.report.html.charts import all_charts
from migrator.report.html.formatting import esc, local_time, num, pct
from migrator.report.html.tables import (
    classes_table,
    completeness_section,
    config_table,
    failures_section,
    history_table,
    problems_section,
    status_table,
    studies_section,
    uid_table,
    verification_section,
    windows_table,
    worker_table,
)
from migrator.report.jsonfmt import to_dict, verification_dict
from migrator.report.model import IN_FLIGHT, ReportData
from migrator.report.text import headline
from migrator.units import human_bytes


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return svg.fmt_elapsed(seconds)


def _kpi(label: str, value: str, detail: str = "", cls: str = "") -> str:
    d = f'<div class="d">{esc(detail)}</div>' if detail else ""
    return (
        f'<div class="kpi {cls}" data-kpi="{esc(label.lower())}"><div class="l">{esc(label)}</div>'
        f'<div class="v">{esc(value)}</div>{d}</div>'
    )


def render(data: ReportData) -> str:
    title = f"Migration report — {data.job or data.server}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the page, even if some content slipped through escaping.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(data),
        _kpis(data),
        '<section><h2>Charts</h2><div class="charts">',
        *all_charts(data),
        "</div></section>",
        failures_section(data),
        studies_section(data),
        completeness_section(data),
        verification_section(data),
        '<section><h2>Details</h2><div class="tables">',
        status_table(data),
        uid_table("SOP classes", "sop-classes", data.sop_classes),
        uid_table("Transfer syntaxes as planned", "ts-original", data.ts_original),
        uid_table("Transfer syntaxes sent (stored files)", "ts-sent", data.ts_sent),
        worker_table(data),
        config_table(data),
        history_table(data),
        windows_table(data),
        classes_table(data),
        "</div></section>",
        problems_section(data),
        f"<footer>Generated {esc(local_time(data.generated))} by pacs-migrator. Counts come from "
        f"{'the job ledger' if data.job else 'the store run'}; the CSV report lists every file "
        "not stored.</footer>",
        "</main>",
        _embedded_json(data),
        f"<script>{JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _header(data: ReportData) -> str:
    if data.in_flight and not data.fatal:
        badge = "live"
    elif data.failed or data.fatal or data.in_flight or not data.planned:
        badge = "warn"
    else:
        badge = "ok"
    fatal = f'<p class="state-failed">✗ {esc(data.fatal)}</p>' if data.fatal else ""
    job = f"Job <code>{esc(data.job)}</code> → " if data.job else ""
    running = " (still running when this report was made)" if data.live else ""
    sessions = sum(1 for h in data.history if h.get("kind") == "session")
    spent = (
        f"; {_duration(data.duration)} spent sending over {sessions} sessions"
        if sessions > 1
        else ""
    )
    return (
        f"<header><h1>Migration report</h1>"
        f'<div class="sub">{job}{esc(data.server)}</div>'
        f'<div class="sub">Started {esc(local_time(data.started))}, '
        f"{'last update' if data.live else 'finished'} "
        f"{esc(local_time(data.finished))}{running}{esc(spent)}</div>"
        f'<div class="badge {badge}" id="headline">{esc(headline(data))}</div>{fatal}</header>'
    )


def _kpis(data: ReportData) -> str:
    mark = "✓ holds" if data.invariant_holds else "✗ does not hold"
    formula = f"{num(data.stored)} + {num(data.failed)} + {num(data.skipped)}"
    if data.in_flight:
        formula += f" + {num(data.in_flight)} in flight"
    cards = [
        _kpi("Planned", num(data.planned)),
        _kpi("Stored", num(data.stored), pct(data.stored, data.planned), "stored"),
        _kpi("Failed", num(data.failed), pct(data.failed, data.planned), "failed"),
        _kpi("Skipped", num(data.skipped), pct(data.skipped, data.planned), "skipped"),
    ]
    if data.in_flight:
        cards.append(_kpi("In flight", num(data.in_flight), "", IN_FLIGHT))
    cards += [
        _kpi("Data stored", human_bytes(data.bytes_stored)),
        _kpi("Duration", _duration(data.duration)),
        _kpi(
            "Files / s",
            f"{data.files_per_s:.1f}",
            f"{data.mb_per_s:.1f} MB/s"
            + (f"; peak {data.timeline.peak_files_per_s} files/s" if data.timeline.points else ""),
        ),
        _kpi("Warnings", num(data.warnings), f"{num(data.transcoded)} re-encoded"),
        _kpi("Invariant", mark, f"{num(data.planned)} = {formula}"),
    ]
    if data.has_ledger:
        cards.append(_verification_kpi(data))
    return f'<div class="kpis">{"".join(cards)}</div>'


def _verification_kpi(data: ReportData) -> str:
    v = data.verification
    if v is None:
        detail = f"run `migrator verify {data.job}`"
        return _kpi("Confirmed by PACS", "not verified", detail, "unverified")
    detail = f"of {num(v.stored)} stored; {num(v.missing)} missing"
    if v.unconfirmed:
        detail += f", {num(v.unconfirmed)} unconfirmed"
    return _kpi(
        "Confirmed by PACS",
        num(v.confirmed),
        detail,
        "stored" if v.all_confirmed else "failed",
    )


def _embedded_json(data: ReportData) -> str:
    summary = to_dict(data)
    summary.pop("files", None)
    summary["verification"] = verification_dict(data.verification, files=False)
    # "</" would end the script element early; "<\/" is the same string to a JSON parser.
    text = json.dumps(summary, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="report-data">{text}</script>'
