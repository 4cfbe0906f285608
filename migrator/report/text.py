"""The summary people read in a terminal: radx-style totals, then why files were not stored.

Failures are grouped by DICOM status with the status's meaning (``0xA700 Out of
resources``), because the status says what to do next (wait and retry, fix the data, ask
the PACS admin); files without a status are grouped by cause (not DICOM, unreadable, lost
association). The first line alone is what ``-q`` prints.

A job's report ends its totals with what the PACS confirmed at the last `migrator verify`
(or says that it was not verified), and lists the first files the PACS lacks.
"""

from __future__ import annotations

from migrator import status as st
from migrator.report.completeness import Completeness
from migrator.report.model import IN_FLIGHT, PLANNER, ReasonGroup, ReportData
from migrator.report.verification import MISSING_AT_PACS, Verification
from migrator.units import human_bytes, local_time

#: Distinct reasons shown under one status group
MAX_REASONS = 5


def headline(data: ReportData) -> str:
    if data.planned == 0:
        return "⚠ No input files found"
    if data.in_flight and data.live:
        return f"… In progress: {data.settled}/{data.planned} files have an outcome"
    if data.in_flight:
        # Never ✓ for a job that is not done: N files were planned and have no outcome yet.
        return (
            f"⚠ Incomplete: {data.in_flight} of {data.planned} files still in flight "
            "(no outcome yet)"
        )
    if data.failed == 0 and data.in_flight == 0 and not data.fatal:
        return "✓ All files stored successfully!"
    return f"⚠ Storage completed with {data.failed} failures"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(data: ReportData, *, max_failures: int = 50) -> str:
    lines: list[str] = []
    if data.fatal:
        lines.append(f"✗ {data.fatal}")
    lines.append(headline(data))
    lines.append("")
    rows: list[tuple[str, str]] = []
    if data.job:
        rows.append(("Job:", data.job + (" (running)" if data.live else "")))
    rows += [
        ("Server:", data.server),
        ("Total Files:", str(data.planned)),
        ("Successful:", str(data.stored)),
        ("Failed:", str(data.failed)),
        ("Skipped:", str(data.skipped)),
    ]
    if data.in_flight:
        rows.append(("In flight:", str(data.in_flight)))
    rows.append(("Warnings:", str(data.warnings)))
    if data.transcoded:
        rows.append(("Re-encoded:", f"{data.transcoded} (PACS refused their transfer syntax)"))
    if data.found_after_loss:
        rows.append(
            ("Found stored:", f"{data.found_after_loss} (sent by a lost worker, not sent again)")
        )
    rows += [
        ("Data:", human_bytes(data.bytes_stored)),
        ("Duration:", f"{data.duration:.2f}s"),
        ("Throughput:", f"{data.files_per_s:.1f} files/s, {data.mb_per_s:.1f} MB/s"),
    ]
    if data.timeline.peak_files_per_s:
        rows.append(
            (
                "Peak:",
                f"{data.timeline.peak_files_per_s} files/s, "
                f"{data.timeline.peak_bytes_per_s / 1e6:.1f} MB/s",
            )
        )
    lat = data.latency
    if lat.count:
        rows.append(
            (
                "Latency:",
                f"C-STORE p50 {_ms(lat.percentile(50))}, p90 {_ms(lat.percentile(90))}, "
                f"p99 {_ms(lat.percentile(99))}, max {_ms(lat.maximum)}",
            )
        )
    if data.job:
        named = [w for w in data.workers.values() if w.name != PLANNER]
        rows.append(("Workers:", str(len(named))))
    if data.studies:
        incomplete = len(data.studies) - data.studies_complete
        rows.append(
            (
                "Studies:",
                f"{len(data.studies)}: {data.studies_complete} complete, {incomplete} incomplete",
            )
        )
    for w in data.windows or []:
        rows.append(
            (
                "Window:",
                f"{w['window']} ({w['limits']}): {w['seconds']:g} s, {w['files']} files, "
                f"{w['files_per_s']:g} files/s",
            )
        )
    for c in data.priority_classes or []:
        done = (
            f"finished {c['finished_after_s']:g} s after the start"
            if c["finished"] is not None
            else "not finished"
        )
        rows.append(
            (
                "Priority:",
                f"{c['class']}: {c['planned']} files: {c['stored']} stored, {c['failed']} "
                f"failed, {c['skipped']} skipped, {c['in_flight']} in flight; {done}",
            )
        )
    sessions = [h for h in data.history if h.get("kind") == "session"]
    if len(sessions) > 1:
        rows.append(("Sessions:", ", ".join(_session(h) for h in sessions)))
    mark = "✓" if data.invariant_holds else ("⚠" if data.in_flight else "✗")
    formula = (
        f"{mark} planned {data.planned} = stored {data.stored} + failed {data.failed}"
        f" + skipped {data.skipped}"
    )
    if data.in_flight:
        formula += f" + in flight {data.in_flight}"
    rows.append(("Invariant:", formula))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)} {v}" for k, v in rows]
    if data.verification is not None:
        lines += ["", *verification_lines(data.verification, max_files=max_failures)]
    elif data.has_ledger:
        lines += ["", f"  Verified against the PACS: {not_verified(data.job)}"]

    if data.completeness is not None:
        lines += ["", *completeness_lines(data.completeness, data.job, max_rows=max_failures)]

    bad = [r for r in data.study_rows() if not r.complete]
    if bad:
        lines += ["", "  Incomplete studies (Study Instance UID, accession, stored/planned):"]
        for r in bad[:max_failures]:
            lines.append(
                f"    ✗ {r.study_uid}  {r.accession or '-'}  {r.states['stored']}/{r.planned}"
                + (f", {r.states['failed']} failed" if r.states["failed"] else "")
                + (f", {r.states[IN_FLIGHT]} in flight" if r.states[IN_FLIGHT] else "")
            )
        if len(bad) > max_failures:
            more = len(bad) - max_failures
            lines.append(f"    … and {more} more (`migrator report --format csv --by study`)")
    groups = data.failure_groups()
    if groups:
        lines += ["", "  Not stored, by status (DICOM meaning):"]
        for group in groups:
            lines += _group_lines(group)
    # Files still in flight are counted above, not listed one by one.
    problems = [p for p in data.problems if p.state != IN_FLIGHT]
    if problems:
        lines.append("")
        for p in problems[:max_failures]:
            sign = {"failed": "✗", IN_FLIGHT: "…"}.get(p.state, "-")
            lines.append(f"  {sign} {p.uri}: {p.state}: {p.reason}")
        if len(problems) > max_failures:
            more = len(problems) - max_failures
            lines.append(f"  … and {more} more (see --report, or `migrator report --format csv`)")
    for uri, status, reason in data.warned[:max_failures]:
        lines.append(f"  ⚠ {uri}: stored with warning {reason or st.fmt(status)}")
    return "\n".join(lines)


def _session(h: dict[str, object]) -> str:
    seconds = float(str(h.get("ended") or 0)) - float(str(h.get("started") or 0))
    return f"{h.get('command', 'run')} {seconds:.1f} s"


def _group_lines(group: ReasonGroup) -> list[str]:
    states = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(group.states.items()))
    head = f"    {group.code:<6}  {group.meaning}"
    lines = [f"{head}  [{states}]"]
    # The sender's reason for a status is "0xA900 <meaning>", maybe with the PACS's comment:
    # list reasons only when they say more than the status line above.
    plain = f"{group.code} {group.meaning}"
    reasons = [(r, n) for r, n in group.reasons.most_common() if r != plain]
    for reason, n in reasons[:MAX_REASONS]:
        lines.append(f"      {n:>8}  {reason}")
    if len(reasons) > MAX_REASONS:
        rest = sum(n for _, n in reasons[MAX_REASONS:])
        lines.append(f"      {rest:>8}  … {len(reasons) - MAX_REASONS} other reasons")
    return lines


def not_verified(job: str | None) -> str:
    return f"not verified — run `migrator verify {job or 'JOB'}`"


def verification_lines(v: Verification, *, max_files: int = 50) -> list[str]:
    """The "Verified against the PACS" block: counts, then the first files the PACS lacks."""
    when = local_time(v.checked_at)
    lines = [f"  Verified against the PACS ({v.method}, {when}, {v.destination}):"]
    pct = f" ({100 * v.confirmed / v.stored:.1f}%)" if v.stored else ""
    rows = [
        ("Stored per ledger:", f"{v.stored} files ({v.instances} distinct instances)"),
        ("Confirmed by PACS:", f"{v.confirmed}{pct}"),
        ("Missing at PACS:", str(v.missing)),
        ("Unconfirmed:", str(v.unconfirmed)),
    ]
    if v.commitment:
        rows.append(("Committed:", f"{v.committed} instances (storage commitment)"))
    if v.studies_mismatched:
        rows.append(("Studies:", f"{v.studies_mismatched} of {v.studies} with a different count"))
    if v.in_flight:
        rows.append(("Not checked:", f"{v.in_flight} files were in flight"))
    width = max(len(k) for k, _ in rows)
    lines += [f"    {k.ljust(width)} {val}" for k, val in rows]
    if v.outdated:
        lines.append(
            f"    ⚠ the ledger now says {v.stored_now} stored: run `migrator verify` again"
        )
    files = v.files
    for f in files[:max_files]:
        sign = "✗" if f.state == MISSING_AT_PACS else "?"
        label = "missing at PACS" if f.state == MISSING_AT_PACS else "not confirmed by PACS"
        lines.append(f"  {sign} {f.uri}: {label}: {f.sop_instance_uid or '-'} ({f.reason})")
    more = max(0, len(files) - max_files) + v.omitted
    if more > 0:
        lines.append(f"  … and {more} more: see {v.where_the_rest_are()}")
    return lines


def completeness_lines(c: Completeness, job: str | None, *, max_rows: int = 50) -> list[str]:
    """The last reconciliation with the source: its totals, then the per-study table
    (differing studies first), at most ``max_rows`` rows."""
    lines = [
        f"  Reconciled with the source {c.source} ({local_time(c.checked_at)}): "
        f"{len(c.rows)} studies, {c.differing} differing; {c.missing} instances missing at "
        f"the destination, {c.extra} extra",
        "  Study Instance UID, accession: at source / stored / at destination",
    ]
    for r in c.rows[:max_rows]:
        mark = "✓" if r.complete else "✗"
        lines.append(
            f"    {mark} {r.study_uid}  {r.accession or '-'}  "
            f"{r.at_source} / {r.stored} / {r.at_destination}"
        )
    if len(c.rows) > max_rows:
        more = len(c.rows) - max_rows
        lines.append(f"    … and {more} more (`migrator report --format csv --by study`)")
    if c.missing:
        lines.append(f"    `migrator retry {job or 'JOB'} --missing` sends the missing ones again")
    return lines
