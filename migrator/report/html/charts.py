"""The HTML report's charts: outcomes, throughput, progress, latency, failures, workers.

Drawn in Python as inline SVG (:mod:`migrator.report.svg`), so the page needs no script
library and prints as it shows.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from migrator.report import svg
from migrator.report.html.formatting import local_time, num, pct
from migrator.report.latency import LATENCY_BINS
from migrator.report.model import IN_FLIGHT, PLANNER, ReportData
from migrator.units import human_bytes

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


def all_charts(data: ReportData) -> list[str]:
    tl = data.timeline
    pts = tl.points
    offsets = [p.offset for p in pts]
    widths = [p.width for p in pts]
    base = tl.start

    def when(p: Any) -> str:
        t0 = base + p.offset
        span = f"{svg.fmt_elapsed(p.offset)}–{svg.fmt_elapsed(p.offset + p.width)}"
        return f"{local_time(t0)} (+{span})"

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
    files_limit, bytes_limit = limit_steps(data)
    window = smoothing_window(tl.bucket_s, len(pts))
    smooth = f"average over {window * tl.bucket_s} s" if window else ""
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
            limit=files_limit,
            smoothed=moving_average([p.files for p in pts], widths, window),
            smooth_label=smooth,
            bands=window_bands(data),
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
            note=(
                "MB = 10^6 bytes, as file sizes on the source. A large file counts in the "
                f"second its answer came: the line ({smooth}) shows the sustained rate."
                if pts
                else ""
            ),
            empty_text=no_timeline,
            limit=[(o, v / 1e6 if v else None) for o, v in bytes_limit],
            smoothed=[v / 1e6 for v in moving_average([p.bytes for p in pts], widths, window)],
            smooth_label=smooth,
        ),
        svg.time_lines(
            "progress",
            "Cumulative progress and failures",
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
                # Failures over time: when the PACS started refusing, and whether it stopped.
                svg.Line("failed", "failed", [p.cum_failed for p in pts], COLORS["failed"]),
            ],
            tips=[
                f"{when(p)}: {num(p.cum_files)} stored, {num(p.cum_settled)} with an outcome, "
                f"{num(p.cum_failed)} failed"
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


def window_bands(data: ReportData) -> list[svg.Band]:
    """A scheduled job's windows as spans of the timeline (the Schedule table's data):
    each labelled with the window and its limits, in time order."""
    start = float(data.timeline.start or data.started)
    bands = [
        svg.Band(
            lo - start,
            hi - start,
            f"{w['window']} ({w['limits']})" if w["limits"] else str(w["window"]),
            paused=str(w["limits"]).startswith("paused"),
        )
        for w in data.windows or []
        for lo, hi in w.get("spans", [])
    ]
    return sorted(bands, key=lambda b: b.start)


def limit_steps(
    data: ReportData,
) -> tuple[list[tuple[float, float | None]], list[tuple[float, float | None]]]:
    """The job's rate limits over time, (offset from the timeline's start, value) steps for
    files/s and bytes/s: its settings, then each `migrator limit` (the job's history).
    Empty when it never had one."""
    start = float(data.timeline.start or data.started)
    files: list[tuple[float, float | None]] = [(0.0, _positive(data.settings.get("rate_limit")))]
    nbytes: list[tuple[float, float | None]] = [
        (0.0, _positive(data.settings.get("rate_limit_bytes")))
    ]
    for entry in data.history:
        if entry.get("kind") != "limit":
            continue
        at = float(entry.get("at") or start) - start
        files.append((at, _positive(entry.get("files_per_s"))))
        nbytes.append((at, _positive(entry.get("bytes_per_s"))))
    return (
        files if any(v for _, v in files) else [],
        nbytes if any(v for _, v in nbytes) else [],
    )


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value > 0 else None


def smoothing_window(bucket_s: int, points: int) -> int:
    """Buckets averaged for the throughput lines: ~5 s (at least 3 buckets); none for a
    single bucket (nothing to smooth). A job of 2-3 s still gets its line: how long a job
    lasts depends on the machine, and the chart should not change kind with it."""
    if points < 2:
        return 0
    return max(3, math.ceil(5 / max(1, bucket_s)))


def moving_average(amounts: list[int], widths: list[int], window: int) -> list[float]:
    """Per bucket, the amount per second over the ``window`` buckets centred on it (fewer
    at the ends): a large file answered in one second is spread over its neighbours."""
    if not window:
        return []
    half = window // 2
    out = []
    for i in range(len(amounts)):
        lo, hi = max(0, i - half), min(len(amounts), i + half + 1)
        out.append(sum(amounts[lo:hi]) / max(1, sum(widths[lo:hi])))
    return out


def _outcome_chart(data: ReportData) -> str:
    stored_ok = data.stored - data.warnings
    segments = [
        svg.Bar(
            "stored",
            stored_ok,
            COLORS["stored"],
            f"stored: {num(stored_ok)}",
            f"stored {pct(stored_ok, data.planned)}",
            (("state", "stored"),),
        ),
        svg.Bar(
            "stored with warning",
            data.warnings,
            COLORS["warning"],
            f"stored with a warning status: {num(data.warnings)}",
            "warning",
            (("state", "warning"),),
        ),
        svg.Bar(
            "failed",
            data.failed,
            COLORS["failed"],
            f"failed: {num(data.failed)}",
            f"failed {pct(data.failed, data.planned)}",
            (("state", "failed"),),
        ),
        svg.Bar(
            "skipped",
            data.skipped,
            COLORS["skipped"],
            f"skipped: {num(data.skipped)}",
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
                f"in flight: {num(data.in_flight)}",
                "in flight",
                (("state", IN_FLIGHT),),
            )
        )
    return svg.stacked(
        "outcomes", f"Outcome of {num(data.planned)} planned files", segments, wide=True
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
                f"{g.code} {g.meaning}: {num(g.count)} files ({reasons})",
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
                f"{len(rest)} other causes: {num(n)} files (see the table and the CSV report)",
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
            f"{w.name}: {num(w.states['stored'])} stored ({human_bytes(w.bytes_stored)}), "
            f"{num(w.states['failed'])} failed",
            f"{num(w.states['stored'])} ({pct(w.states['stored'], data.stored)})",
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
                f"{len(rest)} other worker processes: {num(n)} stored (see the Workers table)",
                f"{num(n)} ({pct(n, data.stored)})",
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
        f"{num(lat.count)} responses; p50 {ms(lat.percentile(50))}, p90 "
        f"{ms(lat.percentile(90))}, p99 {ms(lat.percentile(99))}, max {ms(lat.maximum)}, "
        f"mean {ms(lat.mean)}. Time from the C-STORE request to its response."
        if lat.count
        else ""
    )
    markers = []
    if lat.count:
        for p in (50, 90, 99):
            value = lat.percentile(p)
            markers.append((f"p{p}", bin_position(value) - lo, f"p{p}: {ms(value)}"))
    return svg.vbars(
        "latency",
        "C-STORE latency distribution (log scale)",
        labels[lo:hi],
        [float(n) for n in bins[lo:hi]],
        color=COLORS["latency"],
        tips=[f"{full[i]}: {num(bins[i])} files" for i in range(lo, hi)],
        note=note,
        log=True,
        markers=markers,
    )


def bin_position(seconds: float) -> float:
    """Where a latency falls on the histogram, in bins from the first one's left edge: its
    bin's index plus its place inside the bin on a log scale (bins grow 2-2.5× each)."""
    i = bisect.bisect_right(LATENCY_BINS, seconds)
    low = LATENCY_BINS[i - 1] if i > 0 else LATENCY_BINS[0] / 2
    high = LATENCY_BINS[i] if i < len(LATENCY_BINS) else LATENCY_BINS[-1] * 2
    if seconds <= low:
        return float(i)
    inside = math.log(min(seconds, high) / low) / math.log(high / low)
    return i + min(1.0, inside)
