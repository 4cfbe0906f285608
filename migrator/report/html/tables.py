"""The HTML report's sections below the charts: why files were not stored, what the PACS
confirmed at the job's last `migrator verify` (and the files it lacks), the detail tables
(statuses, SOP classes, transfer syntaxes, workers, configuration) and the files not stored.

Tables are sortable and the file list has a filter (the page's script); the CSV report has
every row where a table stops at ``MAX_PROBLEM_ROWS``.
"""

from __future__ import annotations

import json
from typing import Any

from migrator import status as st
from migrator.report.html.formatting import esc, local_time, num, pct
from migrator.report.masking import mask_secrets
from migrator.report.model import IN_FLIGHT, ClassCount, ReportData, count_rows, uid_name
from migrator.report.verification import MISSING_AT_PACS, Verification
from migrator.units import human_bytes

#: Rows of the "files not stored" table; the CSV report has all of them.
MAX_PROBLEM_ROWS = 1000


def failures_section(data: ReportData) -> str:
    groups = data.failure_groups()
    if not groups:
        return ""
    rows = []
    for g in groups:
        states = ", ".join(f"{num(n)} {s.replace('_', ' ')}" for s, n in sorted(g.states.items()))
        reasons = "".join(
            f"<li>{num(n)} × {esc(r)}</li>"
            for r, n in g.reasons.most_common(8)
            # The sender's reason for a status is "<code> <meaning>": said in the row already.
            if r not in (g.meaning, f"{g.code} {g.meaning}")
        )
        more = len(g.reasons) - 8
        if more > 0:
            reasons += f"<li>… {more} other reasons (see the CSV report)</li>"
        rows.append(
            f'<tr data-status="{esc(g.code)}"><td class="mono">{esc(g.code)}</td>'
            f"<td>{esc(g.meaning)}<ul class=reasons>{reasons}</ul></td>"
            f'<td class="n" data-v="{g.count}">{num(g.count)}</td><td>{esc(states)}</td></tr>'
        )
    return (
        '<section><h2>Why files were not stored</h2><div class="card">'
        '<table class="sortable" id="failure-groups"><thead><tr><th>Status</th>'
        '<th>Meaning and reasons</th><th class="n">Files</th><th>State</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def verification_section(data: ReportData) -> str:
    v = data.verification
    if v is None:
        if not data.has_ledger:
            return ""
        return (
            '<section id="verification"><h2>Verified against the PACS</h2><div class="card">'
            f"<p>Not verified — run <code>migrator verify {esc(data.job)}</code> to ask the PACS "
            "which stored files it holds (a success status alone does not prove it).</p>"
            "</div></section>"
        )
    rows = [
        ("When", local_time(v.checked_at)),
        ("PACS", v.destination),
        ("Method", v.method),
        ("Stored per ledger", f"{num(v.stored)} files ({num(v.instances)} distinct instances)"),
        ("Confirmed by PACS", f"{num(v.confirmed)} ({pct(v.confirmed, v.stored)})"),
        ("Missing at PACS", num(v.missing)),
        ("Unconfirmed", num(v.unconfirmed)),
        (
            "Studies",
            f"{num(v.studies)}, {num(v.studies_mismatched)} with a different count, "
            f"{num(v.studies_listed)} compared instance by instance",
        ),
    ]
    if v.commitment:
        rows.append(("Committed (storage commitment)", num(v.committed)))
    if v.in_flight:
        rows.append(("Not checked (in flight)", num(v.in_flight)))
    summary = "".join(
        f'<tr><th scope="row">{esc(k)}</th><td>{esc(val)}</td></tr>' for k, val in rows
    )
    outdated = (
        f'<p class="state-failed">The ledger now says {num(v.stored_now or 0)} files are stored: '
        f"run <code>migrator verify {esc(data.job)}</code> again.</p>"
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
        f'<tr class="state-{esc(f.state)}"><td class="uri mono">{esc(f.uri)}</td>'
        f'<td class="mono">{esc(f.sop_instance_uid or "-")}</td>'
        f"<td>{'missing' if f.state == MISSING_AT_PACS else 'unconfirmed'}</td>"
        f"<td>{esc(f.reason)}</td></tr>"
        for f in shown
    )
    more = len(files) - len(shown) + v.omitted
    note = (
        f'<p class="note">{num(more)} more files: see {esc(v.where_the_rest_are())}.</p>'
        if more > 0
        else ""
    )
    return (
        f"<h3>Files the PACS lacks ({num(v.missing + v.unconfirmed)})</h3>"
        '<table class="sortable" id="pacs-missing"><thead><tr><th>Source</th>'
        "<th>SOP Instance UID</th><th>At the PACS</th><th>Reason</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{note}"
    )


def _card(title: str, table: str) -> str:
    return f'<div class="card"><h2>{esc(title)}</h2>{table}</div>'


def status_table(data: ReportData) -> str:
    rows = "".join(
        f'<tr><td class="mono">{st.fmt(code)}</td><td>{esc(sc.meaning)}</td>'
        f'<td>{esc(sc.category)}</td><td class="n" data-v="{sc.count}">{num(sc.count)}</td></tr>'
        for code, sc in sorted(data.statuses.items())
    )
    if not rows:
        rows = '<tr><td colspan="4">No DIMSE response was received.</td></tr>'
    return _card(
        "DICOM statuses received (last response per file)",
        '<table class="sortable" id="statuses"><thead><tr><th>Status</th><th>Meaning</th>'
        f'<th>Category</th><th class="n">Files</th></tr></thead><tbody>{rows}</tbody></table>',
    )


def uid_table(title: str, table_id: str, table: dict[str, ClassCount]) -> str:
    rows = []
    for c in count_rows(table):
        s = c.states
        rows.append(
            f"<tr><td>{esc(uid_name(c.uid))}<br><code>{esc(c.uid or '-')}</code></td>"
            f'<td class="n" data-v="{c.total}">{num(c.total)}</td>'
            f'<td class="n" data-v="{s["stored"]}">{num(s["stored"])}</td>'
            f'<td class="n" data-v="{s["failed"]}">{num(s["failed"])}</td>'
            f'<td class="n" data-v="{s["skipped"] + s[IN_FLIGHT]}">'
            f"{num(s['skipped'] + s[IN_FLIGHT])}</td>"
            f'<td class="n" data-v="{c.bytes_stored}">{esc(human_bytes(c.bytes_stored))}</td></tr>'
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


def worker_table(data: ReportData) -> str:
    rows = []
    for w in sorted(data.workers.values(), key=lambda w: (-w.states["stored"], w.name)):
        s = w.states
        rows.append(
            f'<tr><td class="mono">{esc(w.name)}</td>'
            f'<td class="n" data-v="{s["stored"]}">{num(s["stored"])}</td>'
            f'<td class="n" data-v="{s["failed"]}">{num(s["failed"])}</td>'
            f'<td class="n" data-v="{s["skipped"]}">{num(s["skipped"])}</td>'
            f'<td class="n" data-v="{w.bytes_stored}">{esc(human_bytes(w.bytes_stored))}</td>'
            f'<td class="n">{pct(s["stored"], data.stored)}</td></tr>'
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


def config_table(data: ReportData) -> str:
    rows = "".join(
        f'<tr><td class="mono">{esc(k)}</td><td class="mono">{esc(_plain(v))}</td></tr>'
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


def problems_section(data: ReportData) -> str:
    if not data.problems:
        return ""
    shown = data.problems[:MAX_PROBLEM_ROWS]
    rows = "".join(
        f'<tr class="state-{esc(p.state)}"><td class="uri mono">{esc(p.uri)}</td>'
        f'<td class="mono">{esc(p.sop_instance_uid or "-")}</td><td>{esc(p.state)}</td>'
        f'<td class="mono">{esc(p.status_text or "-")}</td><td>{esc(p.reason)}</td>'
        f'<td class="n" data-v="{p.attempts}">{p.attempts}</td></tr>'
        for p in shown
    )
    more = (
        f'<p class="note">{num(len(data.problems) - len(shown))} more files are in the CSV '
        "report (`migrator report JOB --format csv`).</p>"
        if len(data.problems) > len(shown)
        else ""
    )
    return (
        f'<section><h2>Files not stored ({num(len(data.problems))})</h2><div class="card">'
        '<input type="search" id="problem-filter" class="no-print" '
        'placeholder="Filter by path, UID, status or reason">'
        '<table class="sortable" id="problems"><thead><tr><th>Source</th>'
        "<th>SOP Instance UID</th><th>State</th><th>Status</th><th>Reason</th>"
        f'<th class="n">Attempts</th></tr></thead><tbody>{rows}</tbody></table>{more}'
        "</div></section>"
    )


#: Rows of the per-study table; `migrator report JOB --format csv --by study` has them all.
MAX_STUDY_ROWS = 2000


def studies_section(data: ReportData) -> str:
    """Which studies are complete: one row per study (incomplete ones first), with its
    Accession Number and modality when the plan has them; no patient data."""
    if not data.has_ledger:
        return ""
    rows_all = data.study_rows()
    shown = rows_all[:MAX_STUDY_ROWS]
    rows = []
    for r in shown:
        s = r.states
        mark = "✓" if r.complete else "✗"
        rows.append(
            f'<tr class="{"complete" if r.complete else "incomplete"}" '
            f'data-complete="{int(r.complete)}"><td class="mono">{esc(r.study_uid)}</td>'
            f"<td>{esc(r.accession or '-')}</td><td>{esc(r.modality or '-')}</td>"
            f'<td class="n" data-v="{r.planned}">{num(r.planned)}</td>'
            f'<td class="n" data-v="{s["stored"]}">{num(s["stored"])}</td>'
            f'<td class="n" data-v="{s["failed"]}">{num(s["failed"])}</td>'
            f'<td class="n" data-v="{s["skipped"]}">{num(s["skipped"])}</td>'
            f'<td class="n" data-v="{s[IN_FLIGHT]}">{num(s[IN_FLIGHT])}</td>'
            f'<td class="{"state-stored" if r.complete else "state-failed"}">{mark}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="9">No study: no DICOM file was planned.</td></tr>')
    notes = []
    if len(rows_all) > len(shown):
        notes.append(
            f"{num(len(rows_all) - len(shown))} more studies (all complete) are in "
            f"`migrator report {esc(data.job)} --format csv --by study`."
        )
    if data.no_study:
        notes.append(
            f"{num(data.no_study)} files have no Study Instance UID in the plan (not DICOM, "
            "refused at planning, or planned from a manifest and not read yet): not counted "
            "here."
        )
    notes.append(
        "Complete: every instance has an outcome and none failed (a skipped duplicate of a "
        "stored instance counts as done). Accession and modality as the planner read them."
    )
    note = "".join(f'<p class="note">{n}</p>' for n in notes)
    incomplete = len(rows_all) - data.studies_complete
    return (
        f'<section id="studies"><h2>Studies ({num(len(rows_all))}: '
        f"{num(data.studies_complete)} complete, {num(incomplete)} incomplete)</h2>"
        '<div class="card"><input type="search" id="study-filter" class="no-print" '
        'placeholder="Filter by Study UID, accession or modality">'
        '<table class="sortable" id="studies-table"><thead><tr><th>Study Instance UID</th>'
        '<th>Accession</th><th>Modality</th><th class="n">Planned</th><th class="n">Stored</th>'
        '<th class="n">Failed</th><th class="n">Skipped</th><th class="n">In flight</th>'
        f"<th>Complete</th></tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"
        "</div></section>"
    )


def completeness_section(data: ReportData) -> str:
    """The last reconciliation with the source: per study, instances at the source, stored
    per the ledger and at the destination (differing studies first); nothing when the job
    was never reconciled. UIDs and accessions only."""
    c = data.completeness
    if c is None:
        return ""
    rows = []
    for r in c.rows[:MAX_STUDY_ROWS]:
        mark = "✓" if r.complete else "✗"
        rows.append(
            f'<tr class="{"complete" if r.complete else "incomplete"}">'
            f'<td class="mono">{esc(r.study_uid)}</td><td>{esc(r.accession or "-")}</td>'
            f'<td class="n" data-v="{r.at_source}">{num(r.at_source)}</td>'
            f'<td class="n" data-v="{r.stored}">{num(r.stored)}</td>'
            f'<td class="n" data-v="{r.at_destination}">{num(r.at_destination)}</td>'
            f'<td class="{"state-stored" if r.complete else "state-failed"}">{mark}</td></tr>'
        )
    notes = [
        f"Reconciled with {esc(c.source)} at {esc(local_time(c.checked_at))}: "
        f"{num(c.missing)} instances at the source missing at the destination, "
        f"{num(c.extra)} at the destination not at the source."
    ]
    if c.missing:
        notes.append(f"`migrator retry {esc(data.job)} --missing` sends the missing ones again.")
    if len(c.rows) > MAX_STUDY_ROWS:
        notes.append(
            f"{num(len(c.rows) - MAX_STUDY_ROWS)} more studies are in "
            f"`migrator report {esc(data.job)} --format csv --by study`."
        )
    note = "".join(f'<p class="note">{n}</p>' for n in notes)
    return (
        f'<section id="completeness"><h2>Completeness against the source '
        f"({num(len(c.rows))} studies: {num(c.differing)} differing)</h2>"
        '<div class="card"><table class="sortable" id="completeness-table"><thead><tr>'
        '<th>Study Instance UID</th><th>Accession</th><th class="n">At source</th>'
        '<th class="n">Stored</th><th class="n">At destination</th><th>Complete</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>{note}</div></section>"
    )


def windows_table(data: ReportData) -> str:
    """A scheduled job: the time it spent in each window, and what it stored then."""
    if not data.windows:
        return ""
    rows = "".join(
        f"<tr><td>{esc(w['window'])}</td><td>{esc(w['limits'])}</td>"
        f"<td>{num(round(w['seconds']))} s</td><td>{num(w['files'])}</td>"
        f"<td>{w['files_per_s']:g}</td></tr>"
        for w in data.windows
    )
    return _card(
        "Schedule (time in each window)",
        '<table id="schedule"><thead><tr><th>Window</th><th>Limits</th><th>Time</th>'
        f"<th>Files stored</th><th>Files/s</th></tr></thead><tbody>{rows}</tbody></table>",
    )


def classes_table(data: ReportData) -> str:
    """Files named by a priority list or `urgent` against the rest, and when each finished."""
    if not data.priority_classes:
        return ""
    rows = "".join(
        f'<tr><td>{esc(c["class"])}</td><td class="n">{num(c["planned"])}</td>'
        f'<td class="n">{num(c["stored"])}</td><td class="n">{num(c["failed"])}</td>'
        f'<td class="n">{num(c["skipped"])}</td><td class="n">{num(c["in_flight"])}</td>'
        f"<td>{esc(_finished(c))}</td></tr>"
        for c in data.priority_classes
    )
    return _card(
        "Priority classes",
        '<table id="priority-classes"><thead><tr><th>Class</th><th class="n">Planned</th>'
        '<th class="n">Stored</th><th class="n">Failed</th><th class="n">Skipped</th>'
        f'<th class="n">In flight</th><th>Finished</th></tr></thead><tbody>{rows}</tbody></table>',
    )


def _finished(c: dict[str, Any]) -> str:
    if c["finished"] is None:
        return "not yet"
    return f"{local_time(c['finished'])} (+{c['finished_after_s']:g} s)"


def history_table(data: ReportData) -> str:
    """The job's sending sessions and the changes made to it, in order."""
    if not data.history:
        return ""
    rows = []
    for h in data.history:
        kind = h.get("kind")
        if kind == "session":
            what = f"{h.get('command', 'run')}"
            when = local_time(h.get("started"))
            seconds = float(h.get("ended") or 0) - float(h.get("started") or 0)
            detail = f"{seconds:.1f} s sending to {h.get('destination', '-')}"
            if h.get("interrupted"):
                detail += ", interrupted"
            elif not h.get("complete"):
                detail += ", stopped with files in flight"
        elif kind == "destination":
            what, when = "destination changed", local_time(h.get("at"))
            detail = f"{h.get('from')} → {h.get('to')} (migrator retry)"
        elif kind == "limit":
            what, when = "rate limit", local_time(h.get("at"))
            files, nbytes = h.get("files_per_s"), h.get("bytes_per_s")
            detail = (
                f"{'no file limit' if not files else f'{files:g} files/s'}, "
                f"{'no byte limit' if not nbytes else f'{nbytes / 1e6:g} MB/s'} (migrator limit)"
            )
        elif kind == "missing":
            what, when = "missing sent again", local_time(h.get("at"))
            detail = (
                f"{h.get('stored', 0)} stored per the ledger but not at the destination, "
                f"{h.get('failed', 0)} failed, {h.get('new', 0)} new at the source "
                "(migrator retry --missing)"
            )
        else:
            what, when, detail = str(kind), local_time(h.get("at")), json.dumps(h)
        rows.append(f"<tr><td>{esc(when)}</td><td>{esc(what)}</td><td>{esc(detail)}</td></tr>")
    return _card(
        "History (sessions and changes)",
        '<table id="history"><thead><tr><th>When</th><th>What</th><th>Detail</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>",
    )
