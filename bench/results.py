"""What the bench measured, and how it is printed: per-corpus tables, goals, JSON.

Units: MB of data = 10⁶ bytes; RSS MB = MiB (``ru_maxrss`` KiB ÷ 1024, as
tests/test_bad_inputs.py checks its 150 MB); CPU s = user + system of the sender's process
tree (bench/measure.py).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.corpora import Corpus, FileSet
from bench.senders import DCMTK, PEERS, Sender, is_migrator

#: Goals of issue 8: files/s against the best peer on small files, MB/s against DCMTK on big
#: ones, and the peak RSS of a sending process while sending a 1 GB file.
FILES_GOAL = {"tiny": 1.0, "small": 1.0}
MB_GOAL = {"medium": 0.8, "large": 0.8}
RSS_GOAL_MB = 150.0


@dataclass
class Run:
    seconds: float
    rc: int | None
    files_sent: int | None
    cpu_user_s: float
    cpu_sys_s: float
    maxrss_kb: int
    orphans: int = 0
    left_running: int = 0
    phases: dict[str, float] | None = None  # migrator run only

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


@dataclass
class Outcome:
    sender: Sender
    fileset: FileSet
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    @property
    def median_s(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def files_per_s(self) -> float:
        return self.fileset.files / self.median_s

    @property
    def mb_per_s(self) -> float:
        return self.fileset.bytes / 1e6 / self.median_s

    @property
    def cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    @property
    def cpu_ms_per_file(self) -> float:
        return 1000 * self.cpu_s / self.fileset.files

    @property
    def peak_rss_mb(self) -> float:
        return max(r.maxrss_kb for r in self.runs) / 1024

    def median_phases(self) -> dict[str, float] | None:
        phases = [r.phases for r in self.runs if r.phases]
        if not phases:
            return None
        return {k: statistics.median(p[k] for p in phases) for k in phases[0]}


def best(outcomes: list[Outcome], names: tuple[str, ...], key: str) -> Outcome | None:
    """The successful outcome among ``names`` with the highest ``key`` (files_per_s, mb_per_s)."""
    pool = [o for o in outcomes if o.sender.name in names and o.ok]
    return max(pool, key=lambda o: float(getattr(o, key)), default=None)


def x_best_peer(o: Outcome, outcomes: list[Outcome]) -> float | None:
    ref = best(outcomes, PEERS, "files_per_s")
    return o.files_per_s / ref.files_per_s if ref and o.ok else None


def x_dcmtk_mb(o: Outcome, outcomes: list[Outcome]) -> float | None:
    ref = best(outcomes, DCMTK, "mb_per_s")
    return o.mb_per_s / ref.mb_per_s if ref and o.ok else None


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def corpus_title(c: Corpus, outcomes: list[Outcome], probe: bool) -> str:
    if probe:
        title = "start-up probe: 1 file (process start + one association; read seconds)"
    else:
        title = f"{c.name}: {c.full.files} files, {c.full.bytes / 1e6:,.1f} MB"
    refs = []
    peer = best(outcomes, PEERS, "files_per_s")
    if peer:
        refs.append(f"best peer {peer.sender.label} {fmt_rate(peer.files_per_s)} files/s")
    dcmtk = best(outcomes, DCMTK, "mb_per_s")
    if dcmtk and c.size in MB_GOAL and not probe:
        refs.append(f"DCMTK {dcmtk.sender.label.removeprefix('DCMTK ')} {dcmtk.mb_per_s:,.1f} MB/s")
    if any(o.sender.uses_subset and o.fileset.files < c.full.files for o in outcomes):
        subset = next(o.fileset.files for o in outcomes if o.sender.uses_subset)
        refs.append(f"pynetdicom CLI: first {subset} files")
    return f"### {title}" + (f" ({'; '.join(refs)})" if refs else "")


def table(c: Corpus, outcomes: list[Outcome], skipped: dict[str, str], probe: bool) -> str:
    mb_col = c.size in MB_GOAL and not probe
    head = "| sender | files | MB | s (median) | s (min–max) | files/s | MB/s | CPU s "
    head += "| CPU ms/file | peak RSS MB | × best peer |" + (" × DCMTK MB/s |" if mb_col else "")
    cols = 11 + mb_col
    rows = [corpus_title(c, outcomes, probe), "", head, "|---|" + "---:|" * (cols - 1)]
    for o in outcomes:
        fs = o.fileset
        mb = f"{fs.bytes / 1e6:,.1f}"
        if not o.ok:
            reason = (o.error or "no run").splitlines()[0]
            rows.append(
                f"| {o.sender.label} | {fs.files} | {mb} | FAILED: {reason} |" + " |" * (cols - 4)
            )
            continue
        secs = [r.seconds for r in o.runs]
        row = (
            f"| {o.sender.label} | {fs.files} | {mb} | {o.median_s:.3f} "
            f"| {min(secs):.3f}–{max(secs):.3f} | {fmt_rate(o.files_per_s)} "
            f"| {o.mb_per_s:,.1f} | {o.cpu_s:.2f} | {o.cpu_ms_per_file:.2f} "
            f"| {o.peak_rss_mb:.0f} | {fmt_ratio(x_best_peer(o, outcomes))} |"
        )
        if mb_col:
            row += f" {fmt_ratio(x_dcmtk_mb(o, outcomes))} |"
        rows.append(row)
    for name, why in skipped.items():
        rows.append(f"| {name} | skipped: {why} |" + " |" * (cols - 2))
    return "\n".join(rows)


def phases_table(corpora: list[Corpus], run_outcomes: dict[str, Outcome]) -> str:
    rows = [
        "### migrator run: where the time goes (medians; from its report's job stamps)",
        "",
        "| corpus | files | wall s | start-up s | job s | stop s | job files/s | job MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in corpora:
        o = run_outcomes.get(c.name)
        m = o.median_phases() if o and o.ok else None
        if o is None or m is None:
            rows.append(f"| {c.name} | {c.full.files} | FAILED |" + " |" * 5)
            continue
        job = max(m["job_s"], 1e-9)
        rows.append(
            f"| {c.name} | {c.full.files} | {o.median_s:.3f} | {m['startup_s']:.3f} "
            f"| {m['job_s']:.3f} | {m['stop_s']:.3f} | {fmt_rate(c.full.files / job)} "
            f"| {c.full.bytes / 1e6 / job:,.1f} |"
        )
    return "\n".join(rows)


def rss_table(big: FileSet, outcomes: list[Outcome]) -> str:
    rows = [
        f"### RSS probe: 1 file of {big.bytes / 1e9:.2f} GB, sent once by each "
        f"(target: peak RSS ≤ {RSS_GOAL_MB:.0f} MB per sending process)",
        "",
        "| sender | s | MB/s | CPU s | peak RSS MB (largest process) |",
        "|---|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        if not o.ok:
            reason = (o.error or "no run").splitlines()[0]
            rows.append(f"| {o.sender.label} | FAILED: {reason} | | | |")
            continue
        rows.append(
            f"| {o.sender.label} | {o.median_s:.2f} | {o.mb_per_s:,.0f} | {o.cpu_s:.2f} "
            f"| {o.peak_rss_mb:.0f} |"
        )
    return "\n".join(rows)


def goals(
    corpora: list[Corpus], results: dict[str, list[Outcome]], rss: list[Outcome]
) -> list[dict[str, Any]]:
    """One line per goal, migrator sender and corpus: the measured ratio (or MB) and whether
    it meets the target."""
    out: list[dict[str, Any]] = []
    for c in corpora:
        if c.full.files == 1:  # the start-up probe: no throughput in it
            continue
        if c.size in FILES_GOAL:
            target, what, fn = FILES_GOAL[c.size], "files/s ÷ best peer's", x_best_peer
        elif c.size in MB_GOAL:
            target, what, fn = MB_GOAL[c.size], "MB/s ÷ DCMTK's", x_dcmtk_mb
        else:
            continue
        for o in results[c.name]:
            if not is_migrator(o.sender.name):
                continue
            value = fn(o, results[c.name]) if o.ok else None
            out.append(
                {
                    "goal": f"{what} ≥ {target:.1f}",
                    "sender": o.sender.name,
                    "label": o.sender.label,
                    "corpus": c.name,
                    "value": value,
                    "target": target,
                    "met": None if value is None else value >= target,
                }
            )
    for o in rss:
        if not is_migrator(o.sender.name):
            continue
        value = o.peak_rss_mb if o.ok else None
        out.append(
            {
                "goal": f"peak RSS MB sending a 1 GB file ≤ {RSS_GOAL_MB:.0f}",
                "sender": o.sender.name,
                "label": o.sender.label,
                "corpus": "rss-probe",
                "value": value,
                "target": RSS_GOAL_MB,
                "met": None if value is None else value <= RSS_GOAL_MB,
            }
        )
    return out


def goals_table(lines: list[dict[str, Any]]) -> str:
    rows = [
        "### goals (issue 8), from this run",
        "",
        "| goal | sender | corpus | measured | result |",
        "|---|---|---|---:|---|",
    ]
    for g in lines:
        value = "FAILED" if g["value"] is None else f"{g['value']:.2f}"
        if g["corpus"] == "rss-probe" and g["value"] is not None:
            value = f"{g['value']:.0f} MB"
        result = "–" if g["met"] is None else ("met" if g["met"] else "NOT met")
        rows.append(f"| {g['goal']} | {g['label']} | {g['corpus']} | {value} | {result} |")
    return "\n".join(rows)


def outcome_json(o: Outcome, outcomes: list[Outcome]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "sender": o.sender.name,
        "label": o.sender.label,
        "argv_template": o.sender.template,
        "status": "ok" if o.ok else "failed",
        "error": o.error,
        "files": o.fileset.files,
        "bytes": o.fileset.bytes,
        "count_method": o.sender.count_method,
        "runs": [
            {
                "seconds": r.seconds,
                "rc": r.rc,
                "files_sent": r.files_sent,
                "cpu_s": r.cpu_s,
                "cpu_user_s": r.cpu_user_s,
                "cpu_sys_s": r.cpu_sys_s,
                "peak_rss_mb": r.maxrss_kb / 1024,
                "orphans_reaped": r.orphans,
                "left_running": r.left_running,
                **({"phases": r.phases} if r.phases else {}),
            }
            for r in o.runs
        ],
    }
    if o.ok:
        d.update(
            median_s=o.median_s,
            files_per_s=o.files_per_s,
            mb_per_s=o.mb_per_s,
            cpu_s=o.cpu_s,
            cpu_ms_per_file=o.cpu_ms_per_file,
            peak_rss_mb=o.peak_rss_mb,
            x_best_peer=x_best_peer(o, outcomes),
            x_dcmtk_mb_per_s=x_dcmtk_mb(o, outcomes),
            phases_median=o.median_phases(),
        )
    return d
