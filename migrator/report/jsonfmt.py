"""The machine-readable report: totals, invariant, counts by status / SOP class / syntax,
durations, throughput, workers, latency, timeline, the masked configuration and every file.

The keys of the first report format (``totals``, ``invariant_holds``, ``throughput``,
``statuses``, ``settings``, ``files``...) are kept with the same meaning, so scripts written
against `store --report` keep working; everything else is added next to them.

``studies`` is the per-study table of a job (null for `store`): every study with its
instances by state and whether it is complete; ``history`` the job's sending sessions and
the changes made to it; ``*_at`` the times in ISO 8601 with their UTC offset.
``durations.wall_s`` (and the rates) is the time spent sending, over a job's sessions.

``verification`` is the job's last `migrator verify` (null when it was never verified, and
for `store` reports): its counts, and the files the PACS lacks or did not confirm (at most
``verification.MAX_FILES`` of each, with ``*_omitted`` counting the rest).

``completeness`` is the job's last reconciliation with its old PACS (`verify` of a
``dimse://`` job; null when never reconciled): per study its accession and the instances at
the source, stored and at the destination (report/completeness.py).
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

from migrator import status as st
from migrator.report.masking import mask_secrets
from migrator.report.model import IN_FLIGHT, ClassCount, ReportData, count_rows, uid_name
from migrator.report.verification import PacsFile, Verification
from migrator.units import iso_time

#: Bumped when a key changes meaning (adding keys does not bump it).
REPORT_VERSION = 2


def _r(x: float, digits: int = 3) -> float:
    return round(x, digits)


def _states(counts: ClassCount) -> dict[str, Any]:
    s = counts.states
    return {
        "total": counts.total,
        "stored": s["stored"],
        "failed": s["failed"],
        "skipped": s["skipped"],
        IN_FLIGHT: s[IN_FLIGHT],
        "bytes_stored": counts.bytes_stored,
    }


def _uid_rows(table: dict[str, ClassCount]) -> list[dict[str, Any]]:
    return [{"uid": c.uid, "name": uid_name(c.uid), **_states(c)} for c in count_rows(table)]


def _pacs_file(f: PacsFile) -> dict[str, Any]:
    return {
        "file_id": f.file_id,
        "uri": f.uri,
        "sop_instance_uid": f.sop_instance_uid,
        "study_uid": f.study_uid,
        "state": f.state,
        "reason": f.reason,
    }


def verification_dict(v: Verification | None, *, files: bool = True) -> dict[str, Any] | None:
    """The last `verify` as JSON-ready data; ``files`` False leaves the file lists out."""
    if v is None:
        return None
    out: dict[str, Any] = {
        "checked_at": _r(v.checked_at),
        "destination": v.destination,
        "method": v.method,
        "stored": v.stored,
        "instances": v.instances,
        "studies": v.studies,
        "studies_mismatched": v.studies_mismatched,
        "studies_listed": v.studies_listed,
        "confirmed": v.confirmed,
        "missing": v.missing,
        "unconfirmed": v.unconfirmed,
        "committed": v.committed,
        "in_flight": v.in_flight,
        "all_confirmed": v.all_confirmed,
        "stored_now": v.stored_now,
        "outdated": v.outdated,
    }
    if files:
        out["missing_files"] = [_pacs_file(f) for f in v.missing_files]
        out["missing_files_omitted"] = v.missing_omitted
        out["unconfirmed_files"] = [_pacs_file(f) for f in v.unconfirmed_files]
        out["unconfirmed_files_omitted"] = v.unconfirmed_omitted
    return out


def studies_dict(data: ReportData) -> dict[str, Any] | None:
    """The per-study table (job reports; None for `store`, whose outcomes have no study)."""
    if not data.has_ledger:
        return None
    rows = data.study_rows()
    return {
        "total": len(rows),
        "complete": data.studies_complete,
        "incomplete": len(rows) - data.studies_complete,
        "files_without_study_uid": data.no_study,
        "rows": [
            {
                "study_instance_uid": r.study_uid,
                "accession_number": r.accession or None,
                "modality": r.modality or None,
                "planned": r.planned,
                "stored": r.states["stored"],
                "failed": r.states["failed"],
                "skipped": r.states["skipped"],
                IN_FLIGHT: r.states[IN_FLIGHT],
                "complete": r.complete,
            }
            for r in rows
        ],
    }


def to_dict(data: ReportData) -> dict[str, Any]:
    """The report as JSON-ready data; ``files`` only when the data kept them."""
    tl = data.timeline
    lat = data.latency
    sending = tl.sending_s
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "job": data.job,
        "server": data.server,
        "generated": _r(data.generated),
        "started": data.started,
        "finished": data.finished,
        "live": data.live,
        "duration_s": _r(data.duration),
        "totals": {
            "planned": data.planned,
            "stored": data.stored,
            "failed": data.failed,
            "skipped": data.skipped,
            IN_FLIGHT: data.in_flight,
            "warnings": data.warnings,
            "transcoded": data.transcoded,
            "found_after_loss": data.found_after_loss,
            "bytes_stored": data.bytes_stored,
        },
        "invariant_holds": data.invariant_holds,
        "invariant": {
            "rule": "planned = stored + failed + skipped (+ in_flight while the job runs)",
            "planned": data.planned,
            "settled": data.settled,
            IN_FLIGHT: data.in_flight,
            "holds": data.invariant_holds,
            "ledger_counts": data.ledger_counts,
            "ledger_agrees": None
            if data.ledger_counts is None
            else all(
                data.ledger_counts.get(k) == v
                for k, v in (
                    ("planned", data.planned),
                    ("stored", data.stored),
                    ("failed", data.failed),
                    ("skipped", data.skipped),
                    ("bytes_stored", data.bytes_stored),
                )
            ),
        },
        "started_at": iso_time(data.started),
        "finished_at": iso_time(data.finished),
        "generated_at": iso_time(data.generated),
        "durations": {
            "created": data.created,
            "started": data.started,
            "finished": data.finished,
            "wall_s": _r(data.duration),
            "first_to_last_s": _r(max(0.0, data.finished - data.started)),
            "sending_s": sending,
            "timeline_start": tl.start or None,
        },
        "throughput": {
            "files_per_s": round(data.files_per_s, 2),
            "mb_per_s": round(data.mb_per_s, 2),
            "sending_files_per_s": round(data.stored / sending, 2) if sending else 0.0,
            "sending_mb_per_s": round(data.bytes_stored / 1e6 / sending, 2) if sending else 0.0,
            "peak_files_per_s": tl.peak_files_per_s,
            "peak_mb_per_s": round(tl.peak_bytes_per_s / 1e6, 3),
        },
        "statuses": {st.fmt(code): sc.count for code, sc in sorted(data.statuses.items())},
        "status_details": [
            {
                "status": st.fmt(code),
                "meaning": sc.meaning,
                "category": sc.category,
                "count": sc.count,
                "states": dict(sorted(sc.states.items())),
            }
            for code, sc in sorted(data.statuses.items())
        ],
        "failures": [
            {
                "status": None if g.status is None else st.fmt(g.status),
                "code": g.code,
                "meaning": g.meaning,
                "sent": g.sent,
                "count": g.count,
                "states": dict(sorted(g.states.items())),
                "reasons": [{"reason": r, "count": n} for r, n in g.reasons.most_common()],
            }
            for g in data.failure_groups()
        ],
        "sop_classes": _uid_rows(data.sop_classes),
        "transfer_syntaxes": {
            "original": _uid_rows(data.ts_original),
            "sent": _uid_rows(data.ts_sent),
        },
        "workers": [
            {
                "worker": w.name,
                "stored": w.states["stored"],
                "failed": w.states["failed"],
                "skipped": w.states["skipped"],
                "bytes_stored": w.bytes_stored,
                "share": round(w.states["stored"] / data.stored, 4) if data.stored else 0.0,
            }
            for w in sorted(data.workers.values(), key=lambda w: (-w.states["stored"], w.name))
        ],
        "latency": {
            "count": lat.count,
            "mean_s": round(lat.mean, 6),
            "p50_s": round(lat.percentile(50), 6),
            "p90_s": round(lat.percentile(90), 6),
            "p99_s": round(lat.percentile(99), 6),
            "max_s": round(lat.maximum, 6),
            "histogram": [
                {"bin": label, "count": n}
                for label, n in zip(lat.bin_labels(), lat.bins, strict=True)
            ],
        },
        "timeline": {
            "start": tl.start or None,
            "bucket_s": tl.bucket_s,
            "columns": ["offset_s", "width_s", "files", "bytes", "settled", "failed"],
            "points": [
                [p.offset, p.width, p.files, p.bytes, p.settled, p.failed] for p in tl.points
            ],
        },
        "verification": verification_dict(data.verification),
        "studies": studies_dict(data),
        "completeness": data.completeness.to_json() if data.completeness else None,
        "history": data.history,
        "schedule": data.windows,
        "priority_classes": data.priority_classes,
        "fatal": data.fatal or None,
        "exit_status": int(data.exit_status),
        # Masked when the data was built, and again here for data built by other code.
        "settings": mask_secrets(data.settings),
    }
    if data.files is not None:
        report["files"] = data.files
    return report


def render(data: ReportData) -> str:
    """``json.dumps(to_dict(data), indent=2)``, with its per-file part in half the time.

    The ``files`` list is most of a job's report (20,000 files: 0.27 s of pure-Python encoding,
    since ``indent`` turns off json's C encoder) and it comes last: the rest is dumped as is,
    and the files, flat rows of scalars, by :func:`_flat_rows` (C encoder), to the same text.
    """
    report = to_dict(data)
    files = report.pop("files", None)
    head = json.dumps(report, indent=2)
    if files is None:
        return head + "\n"
    rows = _flat_rows(files)
    if rows is None:
        report["files"] = files
        return json.dumps(report, indent=2) + "\n"
    # One join: each concatenation of the ~10 MB of 20,000 files copies them again.
    return "".join((head[: -len("\n}")], ',\n  "files": ', *rows, "\n}\n"))


#: Between two fields of a row, as ``indent=2`` writes them at this depth. Never inside a
#: value: an ensure_ascii encoder writes no raw control character (a newline in a string is
#: ``\\n``), in keys and values alike.
_FIELD_SEP = ",\n      "
#: json's C encoder (it is used only without ``indent``), writing that between items.
_ROWS = json.JSONEncoder(separators=(_FIELD_SEP, ": "))
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat_rows(rows: list[Any]) -> tuple[str, ...] | None:
    """``rows`` (non-empty dicts of scalars) as ``json.dumps(indent=2)`` writes them under a
    top-level key (in pieces, to be joined), or None when a row is not flat (the caller then
    dumps it all).

    Encoded by the C encoder with the fields' separator between all items; then only the
    separators between two rows change: ``}<sep>{`` stands nowhere else (a scalar value never
    ends with ``}``, a key starts with a quote).
    """
    if not rows:
        return ("[]",)
    # Checked in C loops (map, set), not in a Python loop over 300,000 values (~40 ms). Keys
    # need no check: both encoders turn a number, bool or None key into the same string.
    if set(map(type, rows)) != {dict} or not all(rows):
        return None
    if not set(map(type, chain.from_iterable(map(dict.values, rows)))) <= _SCALARS:
        return None
    flat = _ROWS.encode(rows)  # [{"k": v<sep>"k": v}<sep>{...}]
    body = flat.replace("}" + _FIELD_SEP + "{", "\n    },\n    {\n      ")
    return ("[\n    {\n      ", body[2:-2], "\n    }\n  ]")
