"""`migrator report` after a real migration with deliberate failures, in every format.

One migration for the module: `migrator run` through real Celery worker processes and a
real redis-server into a counting SCP that answers 0xA900 and 0x0122 for chosen instances,
with non-DICOM and truncated files in the source. Then `migrator report` in text, JSON, CSV
and HTML: the formats must agree with each other and with what the receiver got, and the
HTML page is opened in headless Chromium without network (console errors, chart elements
and their data points, a screenshot and a PDF kept as test artifacts).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator import synth
from migrator.ledger import Ledger
from tests.browser import Dom as _Dom
from tests.browser import Proxy as _Proxy
from tests.browser import chromium as _chromium
from tests.enginehelpers import assert_invariant, common_args, finish, only_job, start_run
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import redis_peer
from tests.storehelpers import load_report, run_migrator, sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(180)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"  # the tiny synthetic default
MR = "1.2.840.10008.5.1.4.1.1.4"
CHARTS = {"throughput-files", "throughput-mb", "progress", "outcomes", "failures", "workers"}
CHARTS |= {"latency"}


@dataclass
class Migration:
    tmp: Path
    job: str
    url: str
    code: int
    out: str
    #: SOP Instance UID -> C-STOREs the receiver accepted
    received: Counter[str]
    #: source path -> SOP Instance UID, for every DICOM file planned
    uids: dict[str, str]
    #: SOP Instance UID -> status the receiver answered instead of success
    refused: dict[str, int]
    not_dicom: set[str]
    truncated: str
    counts: dict[str, int]
    patient_ids: set[str]
    #: source path -> Study Instance UID, for every DICOM file planned
    studies: dict[str, str] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    run_report: Path | None = None


def _report(m: Migration, fmt: str, *extra: str) -> str:
    """`migrator report JOB --format FMT` as users run it; stdout, or the --output file."""
    proc = run_migrator("report", m.job, "--redis-url", m.url, "--format", fmt, *extra)
    assert proc.returncode == 0, proc.stderr
    if "--output" in extra:
        return Path(extra[extra.index("--output") + 1]).read_text(encoding="utf-8")
    return proc.stdout


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migration]:
    tmp = tmp_path_factory.mktemp("report")
    src = tmp / "archive"
    sc = synth.write_corpus(src / "sc", count=50, size="tiny", seed=501)
    mr = synth.write_corpus(
        src / "mr", count=12, size="tiny", seed=502, kind="MR", transfer_syntax=IMPLICIT_LE
    )
    (src / "notes.txt").write_text("not DICOM")
    (src / "mr" / "cover.pdf").write_bytes(b"%PDF-1.4 not DICOM either\n" * 20)
    # A DICOM file cut inside its header: it fails at planning, without a DICOM status.
    spare = synth.write_corpus(tmp / "spare", count=1, size="tiny", seed=503)[0]
    truncated = src / "sc" / "truncated.dcm"
    truncated.write_bytes(spare.read_bytes()[:200])
    uids = {str(p): sop_uid(p) for p in (*sc, *mr)}
    ordered = sorted(uids.values())
    refused = {u: 0xA900 for u in ordered[:4]} | {u: 0x0122 for u in ordered[4:6]}
    headers = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in sc + mr}
    patient_ids = {str(ds.PatientID) for ds in headers.values()}
    studies = {path: str(ds.StudyInstanceUID) for path, ds in headers.items()}

    with redis_peer(tmp / "redis") as redis, counting_scp() as scp:
        scp.fail_uids = dict(refused)
        run_report = tmp / "run.html"
        with LocalWorkers(redis.url, 2, loglevel="INFO", logfile=str(tmp / "workers.log")):
            code, out = finish(
                start_run(
                    src,
                    *common_args(("127.0.0.1", scp.port), "COUNTING"),
                    "--redis-url",
                    redis.url,
                    "--batch-files",
                    "10",
                    # Slow enough for a timeline of a few seconds (several chart points).
                    "--rate-limit",
                    "25",
                    "--burst",
                    "5",
                    "--report",
                    run_report,
                ),
                timeout=120,
            )
        ledger = only_job(redis.client())
        m = Migration(
            tmp=tmp,
            job=ledger.job_id,
            url=redis.url,
            code=code,
            out=out,
            received=Counter(scp.stores),
            uids=uids,
            refused=refused,
            not_dicom={str(src / "notes.txt"), str(src / "mr" / "cover.pdf")},
            truncated=str(truncated),
            counts=assert_invariant(ledger),
            patient_ids=patient_ids,
            studies=studies,
            run_report=run_report,
        )
        # The reports are made after the workers stopped: only Redis is needed.
        m.reports["text"] = _report(m, "text")
        m.reports["json"] = _report(m, "json")
        m.reports["csv"] = _report(m, "csv", "--output", str(tmp / "not-stored.csv"))
        m.reports["studies"] = _report(m, "csv", "--by", "study")
        m.reports["html"] = _report(m, "html", "--output", str(tmp / "report.html"))
        m.reports["masked"] = json.dumps(
            _masked_settings(ledger, f"redis://migrator:hunter2@127.0.0.1:{redis.port}/0")
        )
        yield m


def _masked_settings(ledger: Ledger, url: str) -> dict[str, Any]:
    """The report's settings of a job whose broker was recorded with a password in it."""
    from migrator import engine
    from migrator.report import from_ledger
    from migrator.settings import Settings

    config = Settings.from_dict(ledger.config())
    masked = engine.open_job(ledger.client, f"{ledger.job_id}-masked", config, {"broker": url})
    settings: dict[str, Any] = from_ledger(masked, keep_files=False).settings
    return settings


def _expected_not_stored(m: Migration) -> dict[str, str]:
    """source path -> state, for every file that must not have been stored."""
    failed = {path: "failed" for path, uid in m.uids.items() if uid in m.refused}
    failed[m.truncated] = "failed"
    return failed | {path: "skipped" for path in m.not_dicom}


def test_run_ends_with_the_expected_outcomes(migration: Migration) -> None:
    m = migration
    assert m.code == 1, m.out  # some files failed: exit 1
    assert m.counts["planned"] == 62 + 2 + 1
    assert (m.counts["stored"], m.counts["failed"], m.counts["skipped"]) == (56, 7, 2)
    expected = {uid for uid in m.uids.values() if uid not in m.refused}
    assert set(m.received) == expected
    assert all(n == 1 for n in m.received.values()), "a file was stored twice"


def test_json_agrees_with_the_receiver_and_the_ledger(migration: Migration) -> None:
    m = migration
    data = load_report_text(m.reports["json"])
    totals = data["totals"]
    assert totals == {
        "planned": 65,
        "stored": 56,
        "failed": 7,
        "skipped": 2,
        "in_flight": 0,
        "warnings": 0,
        "transcoded": 0,
        "found_after_loss": 0,
        "bytes_stored": totals["bytes_stored"],
    }
    assert data["invariant_holds"] is True and data["invariant"]["holds"] is True
    assert data["invariant"]["ledger_agrees"] is True
    assert data["job"] == m.job and data["live"] is False and data["exit_status"] == 1

    stored = {f["sop_instance_uid"] for f in data["files"] if f["state"] == "stored"}
    assert stored == set(m.received)
    sizes = {str(p): Path(p).stat().st_size for p in m.uids}
    stored_paths = [f["uri"] for f in data["files"] if f["state"] == "stored"]
    assert totals["bytes_stored"] == sum(sizes[p] for p in stored_paths)

    # The last status each file got: successes and the receiver's refusals.
    assert data["statuses"] == {"0x0000": 56, "0x0122": 2, "0xA900": 4}
    details = {d["status"]: d for d in data["status_details"]}
    assert details["0xA900"]["meaning"] == "Data set does not match SOP class"
    assert details["0xA900"]["category"] == "permanent"
    assert details["0x0122"]["meaning"] == "SOP class not supported"

    groups = {(g["code"], tuple(sorted(g["states"].items()))): g for g in data["failures"]}
    assert groups[("0xA900", (("failed", 4),))]["count"] == 4
    assert groups[("0x0122", (("failed", 2),))]["count"] == 2
    assert groups[("-", (("skipped", 2),))]["meaning"] == "Not sent (refused before sending)"
    [truncated_group] = [
        g for g in data["failures"] if g["code"] == "-" and "failed" in g["states"]
    ]
    assert truncated_group["count"] == 1
    assert sum(g["count"] for g in data["failures"]) == 9

    # Per SOP class and per transfer syntax, as planned and as sent.
    classes = {c["uid"]: c for c in data["sop_classes"]}
    refused_mr = sum(1 for p, u in m.uids.items() if u in m.refused and "/mr/" in p)
    assert classes[SC]["total"] == 50 and classes[MR]["total"] == 12
    assert classes[MR]["stored"] == 12 - refused_mr
    assert classes[MR]["name"] == "MR Image Storage"
    assert classes[""]["total"] == 3  # the two non-DICOM files and the truncated one
    assert sum(c["total"] for c in data["sop_classes"]) == 65
    original = {t["uid"]: t["total"] for t in data["transfer_syntaxes"]["original"]}
    assert original == {EXPLICIT_LE: 50, IMPLICIT_LE: 12, "": 3}
    # Bytes stored per syntax as planned (was 0 B on every row): they add up to the total.
    original_bytes = {t["uid"]: t["bytes_stored"] for t in data["transfer_syntaxes"]["original"]}
    assert sum(original_bytes.values()) == totals["bytes_stored"]
    assert original_bytes[EXPLICIT_LE] > 0 and original_bytes[IMPLICIT_LE] > 0
    sent = {t["uid"]: t["stored"] for t in data["transfer_syntaxes"]["sent"]}
    assert sum(sent.values()) == 56

    # Workers and the timeline cover exactly the stored files; latency every response.
    assert sum(w["stored"] for w in data["workers"]) == 56
    assert abs(sum(w["share"] for w in data["workers"]) - 1) < 0.01
    assert data["latency"]["count"] == 56 + 6
    assert 0 < data["latency"]["p50_s"] <= data["latency"]["p99_s"] <= data["latency"]["max_s"]
    assert sum(b["count"] for b in data["latency"]["histogram"]) == 56 + 6
    points = data["timeline"]["points"]
    assert len(points) >= 2, points  # 56 files at 25/s: a few seconds
    assert sum(p[2] for p in points) == 56
    assert sum(p[3] for p in points) == totals["bytes_stored"]
    assert sum(p[4] for p in points) == 65
    # The limit holds starts to 25/s + a burst of 5; a second counts the answers that came in
    # it, so its files were let go within that second, the slowest answer before it and
    # the time to read a file before its send (0.2 s here: a stress run stored 32 in one
    # second once, its answers taking up to a few hundred ms).
    peak_bound = 5 + 25 * (1 + data["latency"]["max_s"] + 0.2)
    assert data["throughput"]["peak_files_per_s"] <= peak_bound, data["latency"]
    assert data["durations"]["wall_s"] > 0 and data["durations"]["sending_s"] >= 2
    # Times with their UTC offset.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", data["started_at"])


def _expected_studies(m: Migration) -> dict[str, tuple[int, int, int]]:
    """Study Instance UID -> (planned, stored, failed), from the corpus and the refusals."""
    out: dict[str, list[int]] = {}
    for path, study in m.studies.items():
        row = out.setdefault(study, [0, 0, 0])
        row[0] += 1
        row[2 if m.uids[path] in m.refused else 1] += 1
    return {k: (a, b, c) for k, (a, b, c) in out.items()}


def test_every_format_says_which_studies_are_incomplete(migration: Migration) -> None:
    m = migration
    expected = _expected_studies(m)
    data = json.loads(m.reports["json"])["studies"]
    assert data["total"] == len(expected) == 2
    assert data["files_without_study_uid"] == 3  # two non-DICOM files, one truncated
    rows = {r["study_instance_uid"]: r for r in data["rows"]}
    assert {k: (r["planned"], r["stored"], r["failed"]) for k, r in rows.items()} == expected
    for uid, (_, _, failed) in expected.items():
        assert rows[uid]["complete"] is (failed == 0)
        assert rows[uid]["modality"] in ("OT", "MR")  # read by the planner
    by_study = list(csv.DictReader(io.StringIO(m.reports["studies"])))
    assert [r["study_instance_uid"] for r in by_study] == [
        r["study_instance_uid"] for r in data["rows"]
    ]
    assert {r["study_instance_uid"]: r["complete"] for r in by_study} == {
        k: "yes" if f == 0 else "no" for k, (_, _, f) in expected.items()
    }
    text = m.reports["text"]
    incomplete = [k for k, (_, _, f) in expected.items() if f]
    assert f"{len(expected) - len(incomplete)} complete, {len(incomplete)} incomplete" in text
    assert all(f"✗ {k}" in text for k in incomplete)


def load_report_text(text: str) -> dict[str, Any]:
    """tests.storehelpers.load_report's checks, on a report read from standard output."""
    data: dict[str, Any] = json.loads(text)
    totals = data["totals"]
    assert totals["planned"] == totals["stored"] + totals["failed"] + totals["skipped"]
    assert len(data["files"]) == totals["planned"]
    return data


def test_csv_lists_exactly_the_files_not_stored(migration: Migration) -> None:
    m = migration
    rows = list(csv.DictReader(io.StringIO(m.reports["csv"])))
    assert list(rows[0]) == [
        "uri",
        "sop_instance_uid",
        "state",
        "status",
        "reason",
        "attempts",
        "ts_sent",
    ]
    assert {r["uri"]: r["state"] for r in rows} == _expected_not_stored(m)
    assert len(rows) == len(_expected_not_stored(m))  # each file once
    by_uri = {r["uri"]: r for r in rows}
    for path, uid in m.uids.items():
        if uid in m.refused:
            row = by_uri[path]
            assert row["sop_instance_uid"] == uid
            assert row["status"] == f"0x{m.refused[uid]:04X}"
            assert int(row["attempts"]) == 1  # permanent: not retried
            assert row["ts_sent"] in (EXPLICIT_LE, IMPLICIT_LE)
    for path in m.not_dicom:
        assert by_uri[path]["status"] == "" and by_uri[path]["reason"]
    assert "truncated" in by_uri[m.truncated]["reason"].lower()

    # The same rows as the JSON's files that were not stored.
    data = json.loads(m.reports["json"])
    from_json = {
        f["uri"]: (f["state"], f["status"] or "", f["sop_instance_uid"], str(f["attempts"]))
        for f in data["files"]
        if f["state"] != "stored"
    }
    from_csv = {
        r["uri"]: (r["state"], r["status"], r["sop_instance_uid"], r["attempts"]) for r in rows
    }
    assert from_csv == from_json


def _row(text: str, label: str) -> str:
    match = re.search(rf"^  {re.escape(label)}\s+(.*)$", text, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{text}"
    return match.group(1).strip()


def test_text_agrees_with_json_and_groups_failures_by_status(migration: Migration) -> None:
    m = migration
    text = m.reports["text"]
    totals = json.loads(m.reports["json"])["totals"]
    assert text.startswith("⚠ Storage completed with 7 failures")
    assert _row(text, "Job:") == m.job
    assert int(_row(text, "Total Files:")) == totals["planned"] == 65
    assert int(_row(text, "Successful:")) == totals["stored"]
    assert int(_row(text, "Failed:")) == totals["failed"]
    assert int(_row(text, "Skipped:")) == totals["skipped"]
    assert _row(text, "Invariant:") == "✓ planned 65 = stored 56 + failed 7 + skipped 2"
    assert "Latency:" in text and "C-STORE p50" in text
    assert re.search(r"^    0xA900  Data set does not match SOP class  \[4 failed\]$", text, re.M)
    assert re.search(r"^    0x0122  SOP class not supported  \[2 failed\]$", text, re.M)
    assert re.search(
        r"^    -       Not sent \(refused before sending\)  \[2 skipped\]$", text, re.M
    )
    # Every file not stored is listed, with the same state as in the CSV.
    listed = dict(re.findall(r"^  [✗-] (.+?): (failed|skipped): ", text, re.MULTILINE))
    assert listed == _expected_not_stored(m)
    # The run's own summary says the same.
    assert "Successful:  56" in m.out and "Failed:      7" in m.out


def test_reports_hold_no_patient_data_and_mask_secrets(migration: Migration) -> None:
    m = migration
    assert m.run_report is not None
    everything = "\n".join(m.reports.values()) + m.run_report.read_text()
    for pid in m.patient_ids:
        assert pid not in everything
    assert "SYNTH^PATIENT" not in everything
    settings = json.loads(m.reports["masked"])
    assert "hunter2" not in m.reports["masked"]
    assert settings["broker"].startswith("redis://migrator:***@127.0.0.1:")
    assert settings["job"] == f"{m.job}-masked" and settings["called_ae"] == "COUNTING"
    # The run's own job: its broker as the run had it, not the URL the report was read with.
    assert json.loads(m.reports["json"])["settings"]["broker"] == m.url


def test_run_report_format_follows_the_extension(migration: Migration) -> None:
    assert migration.run_report is not None
    page = migration.run_report.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="chart-throughput-files"' in page


# -- HTML in headless Chromium -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(migration: Migration) -> Iterator[tuple[_Dom, str, _Proxy]]:
    page = migration.tmp / "report.html"
    proxy = _Proxy()
    try:
        dom_text, log = _chromium(page, migration.tmp / "chromium", proxy, "--dump-dom")
        dom = _Dom()
        dom.feed(dom_text)
        yield dom, log, proxy
    finally:
        proxy.close()


def test_html_renders_without_console_errors_or_network(
    migration: Migration, rendered: tuple[_Dom, str, _Proxy]
) -> None:
    dom, log, proxy = rendered
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], "\n".join(console)
    assert dom.ready, "the page's script did not run to its end"
    assert proxy.page_requests() == []
    page = (migration.tmp / "report.html").read_text()
    # Nothing that would need a network at view time (the SVG namespace is a name only).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page


def test_html_charts_carry_the_report_data(
    migration: Migration, rendered: tuple[_Dom, str, _Proxy]
) -> None:
    dom = rendered[0]
    data = json.loads(migration.reports["json"])
    n = len(data["timeline"]["points"])
    assert set(dom.charts) == CHARTS
    for name in ("throughput-files", "throughput-mb"):
        bars = dom.of(name, "rect", "bar")
        assert int(dom.charts[name]["data-points"]) == len(bars) == n
        assert all(float(b["data-value"]) >= 0 for b in bars)
    files_per_s = [float(b["data-value"]) for b in dom.of("throughput-files", "rect", "bar")]
    widths = [p[1] for p in data["timeline"]["points"]]
    assert round(sum(v * w for v, w in zip(files_per_s, widths, strict=True))) == 56

    [stored_line] = [
        ln for ln in dom.of("progress", "polyline", "line") if ln["data-series"] == "stored"
    ]
    assert int(stored_line["data-count"]) == n
    assert len(stored_line["points"].split()) == n + 1  # from 0 at the start
    hits = dom.of("progress", "rect", "hit")
    assert len(hits) == n and float(hits[-1]["data-stored"]) == 56
    assert float(hits[-1]["data-settled"]) == 65

    segments = {
        s["data-state"]: float(s["data-value"]) for s in dom.of("outcomes", "rect", "segment")
    }
    assert segments == {"stored": 56, "failed": 7, "skipped": 2}

    rows = dom.of("failures", "g", "row")
    assert len(rows) == len(data["failures"])
    by_status = Counter()
    for r in rows:
        by_status[r["data-status"]] += float(r["data-value"])
    assert by_status == {"0xA900": 4, "0x0122": 2, "-": 3}

    workers = dom.of("workers", "g", "row")
    assert sum(float(w["data-value"]) for w in workers) == 56
    assert {w["data-worker"] for w in workers} == {
        w["worker"] for w in data["workers"] if w["stored"]
    }

    latency = dom.of("latency", "rect", "bar")
    assert latency and sum(float(b["data-value"]) for b in latency) == data["latency"]["count"]
    # A log count axis (a bar of 1 next to one of 50 stays visible): heights grow with
    # log(1 + count), not with the count.
    heights = {
        float(b["data-value"]): float(b["height"]) for b in latency if b["data-value"] != "0"
    }
    if len(heights) >= 2:
        (a, ha), (b, hb) = sorted(heights.items())[0], sorted(heights.items())[-1]
        assert hb / ha == pytest.approx(math.log10(1 + b) / math.log10(1 + a), rel=0.05)
    assert "C-STORE latency distribution (log scale)" in migration.reports["html"]
    # p50, p90 and p99 marked, each in the bar of the bin that holds it.
    markers = {
        m["data-marker"]: float(m["data-position"]) for m in dom.of("latency", "line", "marker")
    }
    assert set(markers) == {"p50", "p90", "p99"}
    assert 0 <= markers["p50"] <= markers["p90"] <= markers["p99"] <= len(latency)
    bounds = [_upper_bound(b["data-bin"]) for b in latency]
    for p in ("p50", "p90", "p99"):
        seconds = data["latency"][f"{p}_s"]
        i = min(len(bounds) - 1, int(markers[p]))
        assert seconds < bounds[i] and (i == 0 or seconds >= bounds[i - 1]), (p, seconds, i)

    # The rate limit (--rate-limit 25) drawn on the files/s chart, over the whole timeline.
    limits = dom.of("throughput-files", "line", "limit")
    assert limits and {float(x["data-limit"]) for x in limits} == {25.0}
    assert not dom.of("throughput-mb", "line", "limit")  # no MB/s limit was set
    # MB/s and files/s smoothed over a window, one value per bucket.
    for name in ("throughput-files", "throughput-mb"):
        [line] = dom.of(name, "polyline", "smoothed")
        assert int(line["data-count"]) == n

    # The per-study table: one row per study, complete or not.
    expected = _expected_studies(migration)
    rows = dom.rows["studies-table"]
    assert len(rows) == len(expected)
    assert sorted(r["data-complete"] for r in rows) == sorted(
        "1" if f == 0 else "0" for _, _, f in expected.values()
    )


def _upper_bound(label: str) -> float:
    """A latency bin's upper bound in seconds from its label: "<5ms", "<0.2s", "≥10s"."""
    if label.startswith("≥"):
        return math.inf
    value = label.lstrip("<")
    return float(value[:-2]) / 1000 if value.endswith("ms") else float(value[:-1])


def test_html_screenshot_and_print(migration: Migration) -> None:
    page = migration.tmp / "report.html"
    shot = migration.tmp / "report-screenshot.png"
    pdf = migration.tmp / "report-print.pdf"
    proxy = _Proxy()
    try:
        _chromium(
            page,
            migration.tmp / "chromium-shot",
            proxy,
            f"--screenshot={shot}",
            "--window-size=1400,2000",
            "--hide-scrollbars",
        )
        _chromium(
            page,
            migration.tmp / "chromium-pdf",
            proxy,
            f"--print-to-pdf={pdf}",
            "--no-pdf-header-footer",
        )
    finally:
        proxy.close()
    print(f"\nHTML report: {page}\nscreenshot: {shot}\nprinted: {pdf}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 2000)
    assert len(png) > 50_000, "the screenshot looks blank"
    printed = pdf.read_bytes()
    assert printed.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", printed))
    assert 1 <= pages <= 8, pages


# -- store --report ------------------------------------------------------------------------------


def test_store_report_format_follows_the_extension(tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "in", count=12, size="tiny", seed=511)
    (tmp_path / "in" / "readme.txt").write_text("not DICOM")
    bad = sop_uid(files[3])
    with counting_scp() as scp:
        scp.fail_uids = {bad: 0xA900}
        args = [
            "store",
            *common_args(("127.0.0.1", scp.port), "COUNTING"),
            "--dir",
            tmp_path / "in",
        ]
        as_csv = run_migrator(*args, "--report", tmp_path / "r.csv")
        as_json = run_migrator(*args, "--report", tmp_path / "r.report")  # unknown: JSON
        as_html = run_migrator(*args, "--report", tmp_path / "r.html")
    for proc in (as_csv, as_json, as_html):
        assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {(Path(r["uri"]).name, r["state"], r["status"]) for r in rows} == {
        (files[3].name, "failed", "0xA900"),
        ("readme.txt", "skipped", ""),
    }
    data = load_report(tmp_path / "r.report")
    assert (data["totals"]["stored"], data["totals"]["failed"]) == (11, 1)
    page = (tmp_path / "r.html").read_text()
    assert 'data-chart="outcomes"' in page and 'id="report-data"' in page
