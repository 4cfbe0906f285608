"""Human and machine renderings of a StoreResult: the radx-style summary and the JSON report."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import Any

from migrator import status as st
from migrator.outcomes import State, StoreResult
from migrator.units import human_bytes


def render_text(result: StoreResult, *, max_failures: int = 50) -> str:
    lines: list[str] = []
    problems = result.failed
    if result.fatal:
        lines.append(f"✗ {result.fatal}")
    if problems == 0 and result.planned and not result.fatal:
        lines.append("✓ All files stored successfully!")
    elif result.planned == 0:
        lines.append("⚠ No input files found")
    else:
        lines.append(f"⚠ Storage completed with {problems} failures")
    lines.append("")
    duration = result.duration
    rate = result.stored / duration if duration > 0 else 0.0
    mb_rate = result.bytes_stored / 1e6 / duration if duration > 0 else 0.0
    rows = [
        ("Server:", result.server),
        ("Total Files:", str(result.planned)),
        ("Successful:", str(result.stored)),
        ("Failed:", str(result.failed)),
        ("Skipped:", str(result.skipped)),
        ("Warnings:", str(result.warnings)),
    ]
    if result.transcoded:
        rows.append(("Re-encoded:", f"{result.transcoded} (PACS refused their transfer syntax)"))
    rows += [
        ("Data:", human_bytes(result.bytes_stored)),
        ("Duration:", f"{duration:.2f}s"),
        ("Throughput:", f"{rate:.1f} files/s, {mb_rate:.1f} MB/s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)} {v}" for k, v in rows]
    not_stored = [o for o in result.outcomes if o.state is not State.STORED]
    if not_stored:
        lines.append("")
        by_reason = Counter(_reason_key(o.status, o.reason) for o in not_stored)
        lines.append("  Not stored, by reason:")
        for reason, n in by_reason.most_common():
            lines.append(f"    {n:>6}  {reason}")
        lines.append("")
        for o in not_stored[:max_failures]:
            mark = "✗" if o.state is State.FAILED else "-"
            lines.append(f"  {mark} {o.uri}: {o.state}: {o.reason}")
        if len(not_stored) > max_failures:
            lines.append(f"  … and {len(not_stored) - max_failures} more (see --report)")
    warned = [o for o in result.outcomes if o.warning]
    for o in warned[:max_failures]:
        lines.append(f"  ⚠ {o.uri}: stored with warning {o.reason}")
    return "\n".join(lines)


def _reason_key(status: int | None, reason: str) -> str:
    if status is not None:
        return f"{st.fmt(status)} {st.meaning(status)}"
    # Strip the per-file part ("path: ...") so identical causes group together.
    return reason.split(": ", 1)[-1] if reason.startswith(("/", "s3://", "mem://")) else reason


def report_dict(result: StoreResult, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    duration = result.duration
    statuses = Counter(st.fmt(o.status) for o in result.outcomes if o.status is not None)
    return {
        "server": result.server,
        "started": result.started,
        "finished": result.finished,
        "duration_s": round(duration, 3),
        "totals": {
            "planned": result.planned,
            "stored": result.stored,
            "failed": result.failed,
            "skipped": result.skipped,
            "warnings": result.warnings,
            "transcoded": result.transcoded,
            "bytes_stored": result.bytes_stored,
        },
        "invariant_holds": result.planned == result.stored + result.failed + result.skipped,
        "throughput": {
            "files_per_s": round(result.stored / duration, 2) if duration else 0.0,
            "mb_per_s": round(result.bytes_stored / 1e6 / duration, 2) if duration else 0.0,
        },
        "statuses": dict(statuses),
        "fatal": result.fatal or None,
        "exit_status": int(result.exit_status),
        "settings": settings or {},
        "files": [o.to_json() for o in result.outcomes],
    }


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write a report so that a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
