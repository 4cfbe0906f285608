"""The report a migration lead opens: one self-contained HTML file with charts and tables.

Self-contained means it can be mailed, archived with the job and opened years later on a
machine without network: styles, the SVG charts (drawn in Python, :mod:`svg`) and the small
script (table sorting and a filter) are inline; nothing is fetched. The page is laid out
for a laptop screen and has print styles (two charts per row, no interactive parts).
The report's JSON summary (without the per-file lists) is embedded too, for programs.

A job's report says what the PACS confirmed at the job's last `migrator verify` (a KPI card
and a section listing the files it lacks), or that the job was not verified.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from migrator import status as st
from migrator.report import svg
from migrator.report.jsonfmt import to_dict, verification_dict
from migrator.report.latency import LATENCY_BINS
from migrator.report.masking import mask_secrets
from migrator.report.model import (
    IN_FLIGHT,
    PLANNER,
    ClassCount,
    ReportData,
    count_rows,
    uid_name,
)
from migrator.report.text import headline
from migrator.report.verification import MISSING_AT_PACS, Verification
from migrator.units import human_bytes

#: Rows of the "files not stored" table; the CSV report has all of them.
MAX_PROBLEM_ROWS = 1000
#: Bars of the reason and worker charts; the rest are summed in one "other" bar.
MAX_BARS = 20

COLORS = {
    "stored": "#2e7d32",
    "warning": "#d99a00",
    "failed": "#c62828",
    "skipped": "#8a8f98",
    IN_FLIGHT: "#1565c0",
    "files": "#1565c0",
    "mb": "#6a1b9a",
    "settled": "#8a8f98",
    "latency": "#00838f",
}

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dee7;--bg:#f4f6f9;--card:#fff}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1320px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:0 0 8px}
.sub{color:var(--muted)}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;font-weight:600;margin-top:8px}
.badge.ok{background:#e3f1e4;color:#1b5e20}.badge.warn{background:#fdecea;color:#8e1b1b}
.badge.live{background:#e3edf9;color:#0d47a1}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(128px,1fr));gap:10px;margin:16px 0}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.kpi .v{font-size:21px;font-weight:650;font-variant-numeric:tabular-nums}
.kpi .l{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.kpi .d{color:var(--muted);font-size:12px}
.kpi.stored .v{color:#2e7d32}.kpi.failed .v{color:#c62828}.kpi.in_flight .v{color:#1565c0}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px}
figure.chart{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:12px 14px}
figure.chart.wide{grid-column:1/-1}
figcaption{font-weight:600;margin-bottom:6px}
.note{color:var(--muted);font-size:12px;margin-top:4px}
.empty{color:var(--muted);font-style:italic;margin:40px 0;text-align:center}
svg.plot{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#5b6475}
svg text.in-bar{fill:#fff;font-weight:600}
svg text.value{fill:#1d2330}
svg .grid{stroke:#e6e9ef}svg .axis,svg .tick{stroke:#9aa3b2}
svg .reference{stroke:#1d2330;stroke-dasharray:2 3}
svg .hit{fill:transparent}svg .hit:hover{fill:rgba(21,101,192,.08)}
svg .bar:hover,svg .segment:hover,svg .row:hover .bar{opacity:.8}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:var(--muted);margin-top:6px}
.key i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
section{margin-top:24px}
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;
overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600}
table.sortable th{cursor:pointer}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.n{white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.uri{word-break:break-all}
.state-failed{color:#c62828;font-weight:600}.state-skipped{color:#5b6475}
.state-in_flight{color:#1565c0}
.state-missing_at_pacs{color:#c62828;font-weight:600}.state-unconfirmed_at_pacs{color:#d99a00}
.kpi.unverified .v{color:var(--muted);font-size:16px}
#verification-summary{width:auto}#verification-summary th{padding-right:28px}
.card h3{font-size:15px;margin:16px 0 6px}
.reasons{margin:2px 0 0;padding-left:18px;color:var(--muted);font-size:12px}
input[type=search]{font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px;
width:min(420px,100%);margin-bottom:8px}
footer{color:var(--muted);font-size:12px;margin-top:28px}
@media print{
  @page{size:A4;margin:12mm}
  body{background:#fff;font-size:9.5pt}
  main{max-width:none;padding:0}
  .charts,.tables{grid-template-columns:1fr 1fr;gap:8px}
  .kpis{grid-template-columns:repeat(5,1fr)}
  figure.chart,.kpi,.card,tr{break-inside:avoid}
  h2{break-after:avoid}
  .no-print{display:none!important}
  figure.chart,.kpi,.card{border-color:#bbb}
  *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""

# Written by hand, no library: sortable tables, a filter for the file list, and a marker
# that the script ran (checked by the tests in headless Chromium).
_JS = """
(function () {
  "use strict";
  function cellValue(row, i) {
    var cell = row.cells[i];
    if (!cell) { return ""; }
    var v = cell.getAttribute("data-v");
    return v !== null ? v : cell.textContent.trim();
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.tabIndex = 0;
      function sort() {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var numeric = th.classList.contains("n");
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        rows.sort(function (a, b) {
          var x = cellValue(a, i), y = cellValue(b, i);
          if (numeric) { return ((parseFloat(x) || 0) - (parseFloat(y) || 0)) * dir; }
          return x.localeCompare(y) * dir;
        });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
  var filter = document.getElementById("problem-filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      var rows = document.querySelectorAll("#problems tbody tr");
      Array.prototype.forEach.call(rows, function (r) {
        r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def _e(value: object) -> str:
    return escape(str(value))


def _n(value: int) -> str:
    return f"{value:,}"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return svg.fmt_elapsed(seconds)


def _kpi(label: str, value: str, detail: str = "", cls: str = "") -> str:
    d = f'<div class="d">{_e(detail)}</div>' if detail else ""
    return (
        f'<div class="kpi {cls}" data-kpi="{_e(label.lower())}"><div class="l">{_e(label)}</div>'
        f'<div class="v">{_e(value)}</div>{d}</div>'
    )


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render(data: ReportData) -> str:
    title = f"Migration report — {data.job or data.server}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the page, even if some content slipped through escaping.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        _header(data),
        _kpis(data),
        '<section><h2>Charts</h2><div class="charts">',
        *_charts(data),
        "</div></section>",
        _failures_section(data),
        _verification_section(data),
        '<section><h2>Details</h2><div class="tables">',
        _status_table(data),
        _uid_table("SOP classes", "sop-classes", data.sop_classes),
        _uid_table("Transfer syntaxes as planned", "ts-original", data.ts_original),
        _uid_table("Transfer syntaxes sent (stored files)", "ts-sent", data.ts_sent),
        _worker_table(data),
        _config_table(data),
        "</div></section>",
        _problems_section(data),
        f"<footer>Generated {_e(_when(data.generated))} by pacs-migrator. Counts come from "
        f"{'the job ledger' if data.job else 'the store run'}; the CSV report lists every file "
        "not stored.</footer>",
        "</main>",
        _embedded_json(data),
        f"<script>{_JS}</script>",
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
    fatal = f'<p class="state-failed">✗ {_e(data.fatal)}</p>' if data.fatal else ""
    job = f"Job <code>{_e(data.job)}</code> → " if data.job else ""
    running = " (still running when this report was made)" if data.live else ""
    return (
        f"<header><h1>Migration report</h1>"
        f'<div class="sub">{job}{_e(data.server)}</div>'
        f'<div class="sub">Started {_e(_when(data.started))}, '
        f"{'last update' if data.live else 'finished'} {_e(_when(data.finished))}{running}</div>"
        f'<div class="badge {badge}" id="headline">{_e(headline(data))}</div>{fatal}</header>'
    )


def _kpis(data: ReportData) -> str:
    mark = "✓ holds" if data.invariant_holds else "✗ does not hold"
    formula = f"{_n(data.stored)} + {_n(data.failed)} + {_n(data.skipped)}"
    if data.in_flight:
        formula += f" + {_n(data.in_flight)} in flight"
    cards = [
        _kpi("Planned", _n(data.planned)),
        _kpi("Stored", _n(data.stored), _pct(data.stored, data.planned), "stored"),
        _kpi("Failed", _n(data.failed), _pct(data.failed, data.planned), "failed"),
        _kpi("Skipped", _n(data.skipped), _pct(data.skipped, data.planned), "skipped"),
    ]
    if data.in_flight:
        cards.append(_kpi("In flight", _n(data.in_flight), "", IN_FLIGHT))
    cards += [
        _kpi("Data stored", human_bytes(data.bytes_stored)),
        _kpi("Duration", _duration(data.duration)),
        _kpi(
            "Files / s",
            f"{data.files_per_s:.1f}",
            f"{data.mb_per_s:.1f} MB/s"
            + (f"; peak {data.timeline.peak_files_per_s} files/s" if data.timeline.points else ""),
        ),
        _kpi("Warnings", _n(data.warnings), f"{_n(data.transcoded)} re-encoded"),
        _kpi("Invariant", mark, f"{_n(data.planned)} = {formula}"),
    ]
    if data.has_ledger:
        cards.append(_verification_kpi(data))
    return f'<div class="kpis">{"".join(cards)}</div>'


def _verification_kpi(data: ReportData) -> str:
    v = data.verification
    if v is None:
        detail = f"run `migrator verify {data.job}`"
        return _kpi("Confirmed by PACS", "not verified", detail, "unverified")
    detail = f"of {_n(v.stored)} stored; {_n(v.missing)} missing"
    if v.unconfirmed:
        detail += f", {_n(v.unconfirmed)} unconfirmed"
    return _kpi(
        "Confirmed by PACS",
        _n(v.confirmed),
        detail,
        "stored" if v.all_confirmed else "failed",
    )


def _charts(data: ReportData) -> list[str]:
    tl = data.timeline
    pts = tl.points
    offsets = [p.offset for p in pts]
    widths = [p.width for p in pts]
    base = tl.start

    def when(p: Any) -> str:
        t0 = base + p.offset
        span = f"{svg.fmt_elapsed(p.offset)}–{svg.fmt_elapsed(p.offset + p.width)}"
        return f"{_when(t0)} (+{span})"

    bucket_note = (
        f"One bar per {tl.bucket_s} s"
        + (" (the job is long: seconds are grouped)" if tl.bucket_s > 1 else "")
        + f". Peak second: {tl.peak_files_per_s} files, {tl.peak_bytes_per_s / 1e6:.1f} MB."
        if pts
        else ""
    )
    # A `store` run records no per-second timeline (only a job's ledger does).
    no_timeline = (
        "No timeline: nothing was stored yet."
        if data.job
        else "A `store` run keeps no per-second timeline; `migrator run` jobs do."
    )
    charts = [
        _outcome_chart(data),
        svg.time_bars(
            "throughput-files",
            "Throughput: files stored per second",
            offsets=offsets,
            widths=widths,
            values=[p.files_per_s for p in pts],
            color=COLORS["files"],
            unit="files/s",
            tips=[f"{when(p)}: {p.files_per_s:.1f} files/s ({p.files} files)" for p in pts],
            note=bucket_note,
            empty_text=no_timeline,
        ),
        svg.time_bars(
            "throughput-mb",
            "Throughput: MB stored per second",
            offsets=offsets,
            widths=widths,
            values=[p.mb_per_s for p in pts],
            color=COLORS["mb"],
            unit="MB/s",
            tips=[f"{when(p)}: {p.mb_per_s:.2f} MB/s ({human_bytes(p.bytes)})" for p in pts],
            note="MB = 10^6 bytes, as file sizes on the source." if pts else "",
            empty_text=no_timeline,
        ),
        svg.time_lines(
            "progress",
            "Cumulative progress",
            offsets=[p.offset + p.width for p in pts],
            lines=[
                svg.Line("stored", "stored", [p.cum_files for p in pts], COLORS["stored"]),
                svg.Line(
                    "settled",
                    "with an outcome (stored, failed or skipped)",
                    [p.cum_settled for p in pts],
                    COLORS["settled"],
                    dashed=True,
                ),
            ],
            tips=[
                f"{when(p)}: {_n(p.cum_files)} stored, {_n(p.cum_settled)} with an outcome"
                for p in pts
            ],
            span=(pts[-1].offset + pts[-1].width) if pts else 0,
            reference=("planned", float(data.planned)),
            empty_text=no_timeline,
            note="Files refused at planning get their outcome before sending starts."
            if data.skipped
            else "",
        ),
        _latency_chart(data),
        _failure_chart(data),
        _worker_chart(data),
    ]
    return charts


def _outcome_chart(data: ReportData) -> str:
    stored_ok = data.stored - data.warnings
    segments = [
        svg.Bar(
            "stored",
            stored_ok,
            COLORS["stored"],
            f"stored: {_n(stored_ok)}",
            f"stored {_pct(stored_ok, data.planned)}",
            (("state", "stored"),),
        ),
        svg.Bar(
            "stored with warning",
            data.warnings,
            COLORS["warning"],
            f"stored with a warning status: {_n(data.warnings)}",
            "warning",
            (("state", "warning"),),
        ),
        svg.Bar(
            "failed",
            data.failed,
            COLORS["failed"],
            f"failed: {_n(data.failed)}",
            f"failed {_pct(data.failed, data.planned)}",
            (("state", "failed"),),
        ),
        svg.Bar(
            "skipped",
            data.skipped,
            COLORS["skipped"],
            f"skipped: {_n(data.skipped)}",
            "skipped",
            (("state", "skipped"),),
        ),
    ]
    if data.in_flight:
        segments.append(
            svg.Bar(
                "in flight",
                data.in_flight,
                COLORS[IN_FLIGHT],
                f"in flight: {_n(data.in_flight)}",
                "in flight",
                (("state", IN_FLIGHT),),
            )
        )
    return svg.stacked(
        "outcomes", f"Outcome of {_n(data.planned)} planned files", segments, wide=True
    )


def _failure_chart(data: ReportData) -> str:
    bars = []
    groups = data.failure_groups()
    for g in groups[:MAX_BARS]:
        main_state = g.states.most_common(1)[0][0]
        reasons = "; ".join(f"{n}× {r}" for r, n in g.reasons.most_common(3))
        # Without a status the meaning is the same for all ("not sent"): the cause tells
        # the groups apart.
        label = g.meaning if g.status is not None else g.reasons.most_common(1)[0][0]
        bars.append(
            svg.Bar(
                f"{g.code} {label}",
                g.count,
                COLORS.get(main_state, COLORS["failed"]),
                f"{g.code} {g.meaning}: {_n(g.count)} files ({reasons})",
                data=(("status", g.code), ("state", main_state)),
            )
        )
    rest = groups[MAX_BARS:]
    if rest:
        n = sum(g.count for g in rest)
        bars.append(
            svg.Bar(
                f"{len(rest)} other causes",
                n,
                COLORS["skipped"],
                f"{len(rest)} other causes: {_n(n)} files (see the table and the CSV report)",
                data=(("status", "other"), ("state", "other")),
            )
        )
    return svg.hbars(
        "failures",
        "Not stored, by status and reason",
        bars,
        empty_text="Every file was stored.",
        note="Status codes are DICOM C-STORE statuses; '-' = never sent (not DICOM, "
        "unreadable), 'none' = no response (association lost)."
        if bars
        else "",
    )


def _worker_chart(data: ReportData) -> str:
    workers = sorted(data.workers.values(), key=lambda w: (-w.states["stored"], w.name))
    # Files refused at planning were handled by no worker: they are not a worker's share.
    workers = [
        w for w in workers if w.name != PLANNER and (w.states["stored"] or w.states["failed"])
    ]
    bars = [
        svg.Bar(
            w.name,
            w.states["stored"],
            COLORS["files"],
            f"{w.name}: {_n(w.states['stored'])} stored ({human_bytes(w.bytes_stored)}), "
            f"{_n(w.states['failed'])} failed",
            f"{_n(w.states['stored'])} ({_pct(w.states['stored'], data.stored)})",
            (("worker", w.name),),
        )
        for w in workers[:MAX_BARS]
    ]
    rest = workers[MAX_BARS:]
    if rest:
        n = sum(w.states["stored"] for w in rest)
        bars.append(
            svg.Bar(
                f"{len(rest)} other processes",
                n,
                COLORS["settled"],
                f"{len(rest)} other worker processes: {_n(n)} stored (see the Workers table)",
                f"{_n(n)} ({_pct(n, data.stored)})",
                (("worker", "other"),),
            )
        )
    return svg.hbars(
        "workers",
        "Share of stored files per worker process",
        bars,
        empty_text="No file was sent by a worker.",
        note=(
            "Worker = host:pid of the Celery pool process that sent the file."
            if data.job
            else "A `store` run sends from one process (over --concurrency associations)."
        ),
    )


def _latency_chart(data: ReportData) -> str:
    lat = data.latency
    # Short labels (upper bounds) so that 15 bins fit under the chart.
    labels = [f"<{b * 1000:g}ms" if b < 0.1 else f"<{b:g}s" for b in LATENCY_BINS]
    labels.append(f"≥{LATENCY_BINS[-1]:g}s")
    full = lat.bin_labels()
    bins = list(lat.bins)
    # Trim empty bins at both ends (keeping one on each side) so the data fills the chart.
    nonzero = [i for i, n in enumerate(bins) if n]
    lo, hi = (max(0, nonzero[0] - 1), min(len(bins), nonzero[-1] + 2)) if nonzero else (0, 0)

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"

    note = (
        f"{_n(lat.count)} responses; p50 {ms(lat.percentile(50))}, p90 "
        f"{ms(lat.percentile(90))}, p99 {ms(lat.percentile(99))}, max {ms(lat.maximum)}, "
        f"mean {ms(lat.mean)}. Time from the C-STORE request to its response."
        if lat.count
        else ""
    )
    return svg.vbars(
        "latency",
        "C-STORE latency distribution",
        labels[lo:hi],
        [float(n) for n in bins[lo:hi]],
        color=COLORS["latency"],
        tips=[f"{full[i]}: {_n(bins[i])} files" for i in range(lo, hi)],
        note=note,
    )


def _failures_section(data: ReportData) -> str:
    groups = data.failure_groups()
    if not groups:
        return ""
    rows = []
    for g in groups:
        states = ", ".join(f"{_n(n)} {s.replace('_', ' ')}" for s, n in sorted(g.states.items()))
        reasons = "".join(
            f"<li>{_n(n)} × {_e(r)}</li>"
            for r, n in g.reasons.most_common(8)
            # The sender's reason for a status is "<code> <meaning>": said in the row already.
            if r not in (g.meaning, f"{g.code} {g.meaning}")
        )
        more = len(g.reasons) - 8
        if more > 0:
            reasons += f"<li>… {more} other reasons (see the CSV report)</li>"
        rows.append(
            f'<tr data-status="{_e(g.code)}"><td class="mono">{_e(g.code)}</td>'
            f"<td>{_e(g.meaning)}<ul class=reasons>{reasons}</ul></td>"
            f'<td class="n" data-v="{g.count}">{_n(g.count)}</td><td>{_e(states)}</td></tr>'
        )
    return (
        '<section><h2>Why files were not stored</h2><div class="card">'
        '<table class="sortable" id="failure-groups"><thead><tr><th>Status</th>'
        '<th>Meaning and reasons</th><th class="n">Files</th><th>State</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _verification_section(data: ReportData) -> str:
    v = data.verification
    if v is None:
        if not data.has_ledger:
            return ""
        return (
            '<section id="verification"><h2>Verified against the PACS</h2><div class="card">'
            f"<p>Not verified — run <code>migrator verify {_e(data.job)}</code> to ask the PACS "
            "which stored files it holds (a success status alone does not prove it).</p>"
            "</div></section>"
        )
    rows = [
        ("When", _when(v.checked_at)),
        ("PACS", v.destination),
        ("Method", v.method),
        ("Stored per ledger", f"{_n(v.stored)} files ({_n(v.instances)} distinct instances)"),
        ("Confirmed by PACS", f"{_n(v.confirmed)} ({_pct(v.confirmed, v.stored)})"),
        ("Missing at PACS", _n(v.missing)),
        ("Unconfirmed", _n(v.unconfirmed)),
        (
            "Studies",
            f"{_n(v.studies)}, {_n(v.studies_mismatched)} with a different count, "
            f"{_n(v.studies_listed)} compared instance by instance",
        ),
    ]
    if v.commitment:
        rows.append(("Committed (storage commitment)", _n(v.committed)))
    if v.in_flight:
        rows.append(("Not checked (in flight)", _n(v.in_flight)))
    summary = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(val)}</td></tr>' for k, val in rows)
    outdated = (
        f'<p class="state-failed">The ledger now says {_n(v.stored_now or 0)} files are stored: '
        f"run <code>migrator verify {_e(data.job)}</code> again.</p>"
        if v.outdated
        else ""
    )
    return (
        '<section id="verification"><h2>Verified against the PACS</h2><div class="card">'
        f'<table id="verification-summary"><tbody>{summary}</tbody></table>{outdated}'
        f"{_pacs_files_table(v)}</div></section>"
    )


def _pacs_files_table(v: Verification) -> str:
    files = v.files
    if not files:
        return '<p class="note">The PACS holds every stored file it was asked about.</p>'
    shown = files[:MAX_PROBLEM_ROWS]
    rows = "".join(
        f'<tr class="state-{_e(f.state)}"><td class="uri mono">{_e(f.uri)}</td>'
        f'<td class="mono">{_e(f.sop_instance_uid or "-")}</td>'
        f"<td>{'missing' if f.state == MISSING_AT_PACS else 'unconfirmed'}</td>"
        f"<td>{_e(f.reason)}</td></tr>"
        for f in shown
    )
    more = len(files) - len(shown) + v.omitted
    note = (
        f'<p class="note">{_n(more)} more files: see {_e(v.where_the_rest_are())}.</p>'
        if more > 0
        else ""
    )
    return (
        f"<h3>Files the PACS lacks ({_n(v.missing + v.unconfirmed)})</h3>"
        '<table class="sortable" id="pacs-missing"><thead><tr><th>Source</th>'
        "<th>SOP Instance UID</th><th>At the PACS</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{note}"
    )


def _card(title: str, table: str) -> str:
    return f'<div class="card"><h2>{_e(title)}</h2>{table}</div>'


def _status_table(data: ReportData) -> str:
    rows = "".join(
        f'<tr><td class="mono">{st.fmt(code)}</td><td>{_e(sc.meaning)}</td>'
        f'<td>{_e(sc.category)}</td><td class="n" data-v="{sc.count}">{_n(sc.count)}</td></tr>'
        for code, sc in sorted(data.statuses.items())
    )
    if not rows:
        rows = '<tr><td colspan="4">No DIMSE response was received.</td></tr>'
    return _card(
        "DICOM statuses received (last response per file)",
        '<table class="sortable" id="statuses"><thead><tr><th>Status</th><th>Meaning</th>'
        f'<th>Category</th><th class="n">Files</th></tr></thead><tbody>{rows}</tbody></table>',
    )


def _uid_table(title: str, table_id: str, table: dict[str, ClassCount]) -> str:
    rows = []
    for c in count_rows(table):
        s = c.states
        rows.append(
            f"<tr><td>{_e(uid_name(c.uid))}<br><code>{_e(c.uid or '-')}</code></td>"
            f'<td class="n" data-v="{c.total}">{_n(c.total)}</td>'
            f'<td class="n" data-v="{s["stored"]}">{_n(s["stored"])}</td>'
            f'<td class="n" data-v="{s["failed"]}">{_n(s["failed"])}</td>'
            f'<td class="n" data-v="{s["skipped"] + s[IN_FLIGHT]}">'
            f"{_n(s['skipped'] + s[IN_FLIGHT])}</td>"
            f'<td class="n" data-v="{c.bytes_stored}">{_e(human_bytes(c.bytes_stored))}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="6">None.</td></tr>')
    return _card(
        title,
        f'<table class="sortable" id="{table_id}"><thead><tr><th>Name / UID</th>'
        '<th class="n">Files</th><th class="n">Stored</th><th class="n">Failed</th>'
        '<th class="n">Skipped / in flight</th><th class="n">Data stored</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
    )


def _worker_table(data: ReportData) -> str:
    rows = []
    for w in sorted(data.workers.values(), key=lambda w: (-w.states["stored"], w.name)):
        s = w.states
        rows.append(
            f'<tr><td class="mono">{_e(w.name)}</td>'
            f'<td class="n" data-v="{s["stored"]}">{_n(s["stored"])}</td>'
            f'<td class="n" data-v="{s["failed"]}">{_n(s["failed"])}</td>'
            f'<td class="n" data-v="{s["skipped"]}">{_n(s["skipped"])}</td>'
            f'<td class="n" data-v="{w.bytes_stored}">{_e(human_bytes(w.bytes_stored))}</td>'
            f'<td class="n">{_pct(s["stored"], data.stored)}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="6">None.</td></tr>')
    return _card(
        "Workers",
        '<table class="sortable" id="workers"><thead><tr><th>Worker</th>'
        '<th class="n">Stored</th><th class="n">Failed</th><th class="n">Skipped</th>'
        '<th class="n">Data</th><th class="n">Share</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
    )


def _config_table(data: ReportData) -> str:
    rows = "".join(
        f'<tr><td class="mono">{_e(k)}</td><td class="mono">{_e(_plain(v))}</td></tr>'
        for k, v in mask_secrets(data.settings).items()
    )
    if not rows:
        rows = '<tr><td colspan="2">Not recorded.</td></tr>'
    return _card(
        "Configuration (secrets masked)",
        f'<table id="config"><thead><tr><th>Setting</th><th>Value</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>",
    )


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _problems_section(data: ReportData) -> str:
    if not data.problems:
        return ""
    shown = data.problems[:MAX_PROBLEM_ROWS]
    rows = "".join(
        f'<tr class="state-{_e(p.state)}"><td class="uri mono">{_e(p.uri)}</td>'
        f'<td class="mono">{_e(p.sop_instance_uid or "-")}</td><td>{_e(p.state)}</td>'
        f'<td class="mono">{_e(p.status_text or "-")}</td><td>{_e(p.reason)}</td>'
        f'<td class="n" data-v="{p.attempts}">{p.attempts}</td></tr>'
        for p in shown
    )
    more = (
        f'<p class="note">{_n(len(data.problems) - len(shown))} more files are in the CSV '
        "report (`migrator report JOB --format csv`).</p>"
        if len(data.problems) > len(shown)
        else ""
    )
    return (
        f'<section><h2>Files not stored ({_n(len(data.problems))})</h2><div class="card">'
        '<input type="search" id="problem-filter" class="no-print" '
        'placeholder="Filter by path, UID, status or reason">'
        '<table class="sortable" id="problems"><thead><tr><th>Source</th>'
        "<th>SOP Instance UID</th><th>State</th><th>Status</th><th>Reason</th>"
        f'<th class="n">Attempts</th></tr></thead><tbody>{rows}</tbody></table>{more}'
        "</div></section>"
    )


def _embedded_json(data: ReportData) -> str:
    summary = to_dict(data)
    summary.pop("files", None)
    summary["verification"] = verification_dict(data.verification, files=False)
    # "</" would end the script element early; "<\/" is the same string to a JSON parser.
    text = json.dumps(summary, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="report-data">{text}</script>'
