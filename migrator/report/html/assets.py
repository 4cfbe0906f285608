"""The HTML report's inline style sheet and script (nothing is fetched: see the package).

The page is laid out for a laptop screen and has print styles (two charts per row, no
interactive parts).
"""

from __future__ import annotations

CSS = """
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

# Written by hand, no library: sortable tables, filters for the file and study lists, and a marker
# that the script ran (checked by the tests in headless Chromium).
JS = """
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
  function filterRows(inputId, rowsSelector) {
    var filter = document.getElementById(inputId);
    if (!filter) { return; }
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      var rows = document.querySelectorAll(rowsSelector);
      Array.prototype.forEach.call(rows, function (r) {
        r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
      });
    });
  }
  filterRows("problem-filter", "#problems tbody tr");
  filterRows("study-filter", "#studies-table tbody tr");
  document.documentElement.setAttribute("data-ready", "1");
})();
"""
