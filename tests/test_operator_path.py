"""The migration lead's day on the embedded default, as the run's own messages suggest it:
`run` with some failing files → `status` → `report` in every format → `verify` → fix the
PACS → `retry` → `report` says everything is stored and every study complete. Never a
`--redis-url`: every command finds the job in the state directory. Reading the job, and
running the same command again, leave a finished job's figures as they were.

Real Orthanc (refusing a private SOP class until it is reconfigured), real redis-server and
Celery worker processes started by the commands themselves. Both HTML reports (with failures,
then clean) are opened in headless Chromium: the per-study table, the log-scale latency
histogram and the rate-limit line are read back from the rendered page, and screenshots kept
in the test's directory (and named in its JUnit properties).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID, generate_uid

from migrator import synth
from migrator.netutil import free_port
from tests.browser import render, screenshot
from tests.enginehelpers import start_run, wait_until
from tests.peers import orthanc as orthanc_peers
from tests.peers.counting_scp import counting_scp
from tests.peers.orthanc import OrthancPeer
from tests.storehelpers import run_migrator, sop_uid

pytestmark = pytest.mark.timeout(300)

PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.9999.77.1")
SECRET_FREE = "--redis-url"


class Operator:
    """Runs `migrator` commands against one state directory and keeps what they said."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.outputs: list[str] = []

    def __call__(
        self, *args: str | Path, code: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        assert SECRET_FREE not in argv
        proc = run_migrator(*argv, "--state-dir", self.state, env={"MIGRATOR_REDIS_URL": ""})
        out = proc.stdout + proc.stderr
        self.outputs.append(f"$ migrator {' '.join(argv)}\n{out}")
        assert "Traceback" not in out, out
        if code is not None:
            assert proc.returncode == code, (argv, out)
        return proc


def _private_copies(src: list[Path], out: Path) -> list[Path]:
    """Copies of some files as instances of a private SOP class (new SOP Instance UIDs, same
    studies): a stock Orthanc refuses their presentation context."""
    out.mkdir()
    made = []
    for path in src:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        made.append(out / f"private-{path.name}")
        ds.save_as(made[-1], enforce_file_format=True)
    return made


def _figures(report: dict[str, Any]) -> tuple[Any, ...]:
    return (
        report["started"],
        report["finished"],
        report["duration_s"],
        report["throughput"]["files_per_s"],
        report["throughput"]["mb_per_s"],
    )


def _reconfigure(pacs: OrthancPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS admin's fix: the private SOP class accepted, Orthanc restarted with its
    ports, name and storage."""
    pacs.stop()
    pacs._options["unknown_sop_class_accepted"] = True
    ports = iter([pacs.dicom_port, pacs.http_port])
    with monkeypatch.context() as m:
        m.setattr(orthanc_peers, "free_port_all_interfaces", lambda: next(ports))
        m.setattr(orthanc_peers, "port_free_on_all_interfaces", lambda port: True)
        pacs.start()


def test_the_operators_path_on_the_embedded_default(
    tmp_path: Path,
    orthanc_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    src = tmp_path / "archive"
    files = synth.write_corpus(
        src / "ct", count=40, size="tiny", seed=2101, studies=4, accessions=True
    )
    private = _private_copies(files[:2] + files[-1:], src / "other")
    # C-FIND allowed from any AE: `verify` asks the PACS what it holds.
    pacs: OrthancPeer = orthanc_factory(extra={"DicomAlwaysAllowFind": True})
    migrator = Operator(tmp_path / "state")
    dest = ["--host", "127.0.0.1", "--port", str(pacs.dicom_port), "--called-ae", "ORTHANC"]
    # A rate limit, for the report's throughput chart to draw it.
    run = ["run", src, *dest, "--workers", "1", "--batch-files", "10", "--rate-limit", "20"]

    # run: 3 files refused by the PACS; both reports written, and where they went said.
    proc = migrator(
        *run, "--report", tmp_path / "run.html", "--report", tmp_path / "run.json", code=1
    )
    assert "report (html): " + str(tmp_path / "run.html") in proc.stderr
    assert "report (json): " + str(tmp_path / "run.json") in proc.stderr
    first = json.loads((tmp_path / "run.json").read_text())
    assert (first["totals"]["stored"], first["totals"]["failed"]) == (40, 3)
    job = first["job"]

    # status: the job started last, with its own figures.
    proc = migrator("status", code=1)
    assert f"{job}: finished " in proc.stdout and "40 stored, 3 failed" in proc.stdout

    # report, every format: which studies are incomplete?
    text = migrator("report", code=0).stdout
    bad_studies = {
        str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in private
    }
    assert f"{4 - len(bad_studies)} complete, {len(bad_studies)} incomplete" in text
    data = json.loads(migrator("report", job, "--format", "json", code=0).stdout)
    rows = {r["study_instance_uid"]: r for r in data["studies"]["rows"]}
    assert {u for u, r in rows.items() if not r["complete"]} == bad_studies
    assert all(r["accession_number"] and r["modality"] for r in rows.values())
    by_study = list(
        csv.DictReader(io.StringIO(migrator("report", "--format", "csv", "--by", "study").stdout))
    )
    assert {r["study_instance_uid"] for r in by_study if r["complete"] == "no"} == bad_studies
    not_stored = list(csv.DictReader(io.StringIO(migrator("report", "--format", "csv").stdout)))
    assert {r["uri"] for r in not_stored} == {str(p) for p in private}
    migrator("report", "-o", tmp_path / "before.html", code=0)

    # verify: the PACS holds the 40 files stored.
    proc = migrator("verify", code=0)
    assert "✓ all 40 stored files confirmed by the PACS" in proc.stdout

    # The same run again: nothing asked, nothing retried, the figures unchanged.
    proc = migrator(*run, code=1)
    assert "nothing to send" in proc.stderr and "migrator retry" in proc.stderr
    again = json.loads(migrator("report", "--format", "json").stdout)
    assert _figures(again) == _figures(data)
    assert pacs.count_instances() == 40

    # Fix the PACS, then retry: the failed files are sent by local workers.
    _reconfigure(pacs, monkeypatch)
    t0 = time.monotonic()
    proc = migrator("retry", "--workers", "1", code=0)
    retry_wall = time.monotonic() - t0
    assert "3 failed files sent again" in proc.stderr
    assert pacs.count_instances() == 43

    final = json.loads(migrator("report", "--format", "json", code=0).stdout)
    assert (final["totals"]["stored"], final["totals"]["failed"]) == (43, 0)
    assert final["studies"]["complete"] == 4 and final["studies"]["incomplete"] == 0
    sessions = [h for h in final["history"] if h["kind"] == "session"]
    assert [s["command"] for s in sessions] == ["run", "retry"]
    # The job's figures: its first start kept; the time spent sending grew by the retry's
    # own seconds, not by the minutes between the run and the retry.
    assert final["started"] == data["started"]
    grown = final["duration_s"] - data["duration_s"]
    assert 0 < grown <= retry_wall
    proc = migrator("verify", code=0)
    assert "✓ all 43 stored files confirmed by the PACS" in proc.stdout
    migrator("report", "-o", tmp_path / "after.html", code=0)
    after = (tmp_path / "after.html").read_text()
    assert after.count('data-complete="1"') == 4 and 'data-complete="0"' not in after

    print("\n".join(migrator.outputs))

    # Both reports as the lead sees them: headless Chromium, screenshots kept with the test.
    all_studies = set(rows)
    for name, page, report, incomplete in (
        ("with-failures", tmp_path / "before.html", data, bad_studies),
        ("clean", tmp_path / "after.html", final, set()),
    ):
        _check_in_chromium(page, report, all_studies, incomplete, limit=20.0)
        shot = screenshot(page, tmp_path / f"report-{name}.png")
        record_property(f"screenshot-{name}", str(shot))
        print(f"screenshot ({name}): {shot}")


def _check_in_chromium(
    page: Path,
    report: dict[str, Any],
    studies: set[str],
    incomplete: set[str],
    *,
    limit: float,
) -> None:
    """The rendered page holds the per-study table, the log-scale latency histogram and
    the rate limit on the throughput chart, each with the job's data."""
    dom, log, fetched = render(page, page.parent)
    assert dom.ready and fetched == [], fetched
    assert not [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln], log

    # Per study: its UID, accession, modality, counts, and ✓ or ✗.
    header, *cells = dom.cells["studies-table"]
    assert header[0] == "Study Instance UID" and header[-1] == "Complete", header
    assert {c[0] for c in cells} == studies
    assert all(c[1].startswith("A") and c[2] for c in cells), cells  # accession, modality
    assert {c[0] for c in cells if c[-1] == "✗"} == incomplete
    assert sum(int(c[3]) for c in cells) == report["totals"]["planned"]
    assert sum(int(c[4]) for c in cells) == report["totals"]["stored"]

    # Latency: every timed C-STORE in a bar, heights on a log scale, percentiles marked.
    bars = dom.of("latency", "rect", "bar")
    assert sum(float(b["data-value"]) for b in bars) == report["latency"]["count"] > 0
    heights = sorted(
        (float(b["data-value"]), float(b["height"])) for b in bars if b["data-value"] != "0"
    )
    (low, h_low), (high, h_high) = heights[0], heights[-1]
    assert h_high / h_low == pytest.approx(math.log10(1 + high) / math.log10(1 + low), rel=0.05)
    assert {m["data-marker"] for m in dom.of("latency", "line", "marker")} == {
        "p50",
        "p90",
        "p99",
    }

    # Why not stored: the private SOP class was never offered (no context), not "no answer".
    groups = {g["data-status"]: float(g["data-value"]) for g in dom.of("failures", "g", "row")}
    assert groups == ({"-": report["totals"]["failed"]} if report["totals"]["failed"] else {})

    # Failures over time: the cumulative line ends at the files that are failed (the ledger
    # keeps each file's last outcome: after the retry stored them, none).
    hits = dom.of("progress", "rect", "hit")
    assert float(hits[-1]["data-failed"]) == report["totals"]["failed"]
    assert [float(h["data-failed"]) for h in hits] == sorted(float(h["data-failed"]) for h in hits)

    # The rate limit drawn over the files/s bars, which hold every stored file.
    assert {float(x["data-limit"]) for x in dom.of("throughput-files", "line", "limit")} == {limit}
    per_s = dom.of("throughput-files", "rect", "bar")
    widths = [p[1] for p in report["timeline"]["points"]]
    stored = sum(float(b["data-value"]) * w for b, w in zip(per_s, widths, strict=True))
    assert round(stored) == report["totals"]["stored"]


def test_commands_attach_to_a_running_run_and_retry_moves_the_destination(
    tmp_path: Path,
) -> None:
    """While `run` sends, `status` and `limit` attach to its embedded Redis (they do not
    fight it for the state directory) and `retry` says the directory is busy; afterwards
    `retry --port` sends the failed files to another PACS, checked first by C-ECHO, the
    move kept in the job's history."""
    files = synth.write_corpus(tmp_path / "in", count=30, size="tiny", seed=2102)
    migrator = Operator(tmp_path / "state")
    with counting_scp() as first, counting_scp() as second:
        first.fail_uids = {sop_uid(f): 0xA900 for f in files[:4]}
        dest = ["--host", "127.0.0.1", "--port", str(first.port), "--called-ae", "COUNTING"]
        proc = start_run(
            tmp_path / "in",
            *dest,
            "--state-dir",
            tmp_path / "state",
            "--workers",
            "1",
            "--rate-limit",
            "4",
            "--burst",
            "1",
        )
        try:
            wait_until(lambda: sum(first.stores.values()) >= 2, 60, "the first files")
            status = migrator("status")
            assert re.search(r"\d+/30 files: .* in flight", status.stdout), status.stdout
            # (exit 1 once a file failed, also while the job runs)
            failed = re.search(r"(\d+) failed", status.stdout)
            assert failed and status.returncode == (1 if int(failed[1]) else 0), status.stdout
            assert "finished" not in status.stdout
            busy = migrator("retry", code=3)  # (before the limit is lifted: still sending)
            assert "another migrator run" in busy.stderr and "is using" in busy.stderr
            lifted = migrator("limit", "--rate-limit", "0", code=0)
            assert "no file limit" in lifted.stdout
            out, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 1, out
        # A new destination that does not answer: refused in seconds, the job unchanged.
        t0 = time.monotonic()
        moved = migrator("retry", "--port", str(free_port()), code=3)
        assert time.monotonic() - t0 < 10 and "destination was not changed" in moved.stderr
        # The right one: the failed files go there.
        moved = migrator("retry", "--port", str(second.port), "--workers", "1", code=0)
        assert "4 failed files sent again" in moved.stderr
        assert set(second.stores) == {sop_uid(f) for f in files[:4]}
    data = json.loads(migrator("report", "--format", "json", code=0).stdout)
    assert data["totals"]["stored"] == 30 and data["settings"]["port"] == second.port
    changes = [h for h in data["history"] if h["kind"] in ("destination", "limit")]
    assert [h["kind"] for h in changes] == ["limit", "destination"]
    assert changes[1]["from"].startswith(f"127.0.0.1:{first.port} ")
    assert changes[1]["to"].startswith(f"127.0.0.1:{second.port} ")
    # The rate limit as it was at each moment: 4 files/s, then none.
    html = migrator("report", "--format", "html").stdout
    assert 'class="limit" data-limit="4"' in html
    # The original command now names a destination the job left: said, exit 2.
    again = run_migrator("run", tmp_path / "in", *dest, "--state-dir", tmp_path / "state")
    assert again.returncode == 2 and "moved it from" in again.stderr


def test_run_again_with_retry_failed_sends_the_failed_files(tmp_path: Path) -> None:
    """The same `run` again retries nothing; with --retry-failed it sends the failed files
    (once the PACS takes them) and the job ends with all stored."""
    files = synth.write_corpus(tmp_path / "in", count=12, size="tiny", seed=2103)
    migrator = Operator(tmp_path / "state")
    with counting_scp() as scp:
        scp.fail_uids = {sop_uid(files[5]): 0xA900}
        dest = ["--host", "127.0.0.1", "--port", str(scp.port), "--called-ae", "COUNTING"]
        run = ["run", tmp_path / "in", *dest, "--workers", "1"]
        migrator(*run, code=1)
        scp.fail_uids = {}
        migrator(*run, code=1)
        assert sop_uid(files[5]) not in scp.stores
        proc = migrator(*run, "--retry-failed", code=0)
        assert "1 failed files sent again" in proc.stderr, proc.stderr
        assert scp.stores[sop_uid(files[5])] == 1
    data = json.loads(migrator("report", "--format", "json", code=0).stdout)
    assert (data["totals"]["stored"], data["totals"]["failed"]) == (12, 0)
