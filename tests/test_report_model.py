"""The report model and renderers without a migration: masking, timeline buckets, grouping,
escaping, and a live job read from a real Redis ledger (files in flight)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter

import pytest

from migrator.ledger import Ledger, PlannedFile
from migrator.outcomes import FileOutcome, State, StoreResult
from migrator.report import FORMATS, format_for_path, from_ledger, from_store_result, render
from migrator.report.masking import mask_secrets, mask_text
from migrator.report.model import MAX_TIMELINE_POINTS, Latency, build_timeline
from migrator.summary import render_text, report_dict
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator

SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _stored(i: int, **kw: object) -> FileOutcome:
    outcome = FileOutcome(
        f"/archive/{i:03d}.dcm",
        State.STORED,
        status=0,
        sop_class_uid=SC,
        sop_instance_uid=f"1.2.3.{i}",
        ts_original=EXPLICIT_LE,
        ts_sent=EXPLICIT_LE,
        bytes=1000,
        attempts=1,
        seconds=0.002,
    )
    for k, v in kw.items():
        setattr(outcome, k, v)
    return outcome


def _result() -> StoreResult:
    result = StoreResult("pacs:104 (PACS)", started=1000.0, finished=1010.0)
    result.outcomes = [_stored(i) for i in range(10)]
    result.outcomes += [
        _stored(10, status=0xB000, warning=True, reason="0xB000 Warning: coercion"),
        FileOutcome(
            "/archive/a700.dcm",
            State.FAILED,
            "0xA700 Out of resources (gave up after 4 attempts)",
            0xA700,
            sop_instance_uid="1.2.3.99",
            attempts=4,
        ),
        FileOutcome("/archive/notes.txt", State.SKIPPED, "/archive/notes.txt: not a DICOM file"),
        FileOutcome("/archive/x.txt", State.SKIPPED, "/archive/x.txt: not a DICOM file"),
        FileOutcome(
            "/archive/lost.dcm",
            State.FAILED,
            "outcome unknown: association aborted",
            None,
            sop_instance_uid="1.2.3.98",
            attempts=4,
        ),
    ]
    return result


def test_secrets_are_masked_in_keys_urls_and_query_strings() -> None:
    config = {
        "host": "pacs",
        "called_ae": "PACS",
        "redis_url": "redis://:s3cret@redis:6379/0",
        "broker": "amqp://user:pa55@rabbit/vhost",
        "s3_endpoint": "https://minio:9000/?X-Amz-Signature=abcd&region=x",
        "s3_secret_access_key": "AKIA-SECRET",
        "apiToken": "tok",
        "nested": {"password": "pw", "list": ["https://u:p@h/x"], "max_pdu": 16384},
        "key_count": 3,
        "retries": 3,
        "password_file": None,
    }
    masked = mask_secrets(config)
    assert masked["host"] == "pacs" and masked["called_ae"] == "PACS"
    assert masked["redis_url"] == "redis://***@redis:6379/0"
    assert masked["broker"] == "amqp://user:***@rabbit/vhost"
    assert masked["s3_endpoint"] == "https://minio:9000/?X-Amz-Signature=***&region=x"
    assert masked["s3_secret_access_key"] == "***" and masked["apiToken"] == "***"
    assert masked["nested"] == {"password": "***", "list": ["https://u:***@h/x"], "max_pdu": 16384}
    assert masked["key_count"] == 3 and masked["retries"] == 3
    assert masked["password_file"] is None  # nothing to hide
    assert "s3cret" not in json.dumps(masked) and "pa55" not in json.dumps(masked)
    assert mask_text("see redis://127.0.0.1:6379/0") == "see redis://127.0.0.1:6379/0"


def test_format_follows_the_extension() -> None:
    assert format_for_path("run.HTML") == "html"
    assert format_for_path("/x/not-stored.csv") == "csv"
    assert format_for_path("summary.txt") == "text"
    assert format_for_path("run.json") == "json"
    assert format_for_path("run.report") == "json"  # any other name: JSON, as before
    assert set(FORMATS) == {"text", "json", "csv", "html"}


def test_timeline_of_a_three_day_job_is_bucketed_and_keeps_its_totals() -> None:
    start = 1_700_000_000
    per_second = {start + s: (2, 2000) for s in range(0, 3 * 86400, 7)}
    per_second[start + 100] = (50, 50_000)  # the peak second
    settled = Counter({start + s: 1 for s in range(0, 3 * 86400, 11)})
    tl = build_timeline(per_second, settled)
    assert len(tl.points) <= MAX_TIMELINE_POINTS
    assert tl.bucket_s == 432  # ceil(259194 s / 600)
    assert sum(p.files for p in tl.points) == sum(f for f, _ in per_second.values())
    assert sum(p.bytes for p in tl.points) == sum(b for _, b in per_second.values())
    assert tl.points[-1].cum_settled == sum(settled.values())
    assert sum(p.width for p in tl.points) == max(per_second) - start + 1
    assert tl.peak_files_per_s == 50 and tl.peak_bytes_per_s == 50_000
    short = build_timeline({start: (3, 30), start + 2: (1, 10)})
    assert [(p.offset, p.files, p.cum_files) for p in short.points] == [
        (0, 3, 3),
        (1, 0, 3),
        (2, 1, 4),
    ]
    assert short.sending_s == 3 and build_timeline({}).points == []


def test_latency_percentiles_and_bins() -> None:
    lat = Latency()
    for ms in range(1, 101):
        lat.add(ms / 1000)
    assert lat.count == 100 and lat.percentile(50) == 0.05 and lat.percentile(99) == 0.099
    assert lat.maximum == 0.1 and abs(lat.mean - 0.0505) < 1e-9
    assert sum(lat.bins) == 100 and len(lat.bins) == len(lat.bin_labels())


def test_text_groups_failures_by_status_with_their_meaning() -> None:
    text = render_text(_result())
    assert text.splitlines()[0] == "⚠ Storage completed with 2 failures"
    assert "  Total Files: 15\n  Successful:  11\n  Failed:      2\n  Skipped:     2\n" in text
    assert "  Warnings:    1\n" in text
    assert "    0xA700  Out of resources  [1 failed]" in text
    assert "             1  0xA700 Out of resources (gave up after 4 attempts)" in text
    assert "    none    No response (association aborted or timed out)  [1 failed]" in text
    assert "    -       Not sent (refused before sending)  [2 skipped]" in text
    assert "             2  not a DICOM file" in text  # the path is not part of the cause
    assert "  ⚠ /archive/010.dcm: stored with warning 0xB000 Warning: coercion" in text
    assert "✓ planned 15 = stored 11 + failed 2 + skipped 2" in text


def test_report_dict_keeps_the_first_report_shape() -> None:
    data = report_dict(_result(), {"host": "pacs", "token": "t0k"})
    for key in ("server", "started", "finished", "duration_s", "totals", "invariant_holds"):
        assert key in data
    assert data["totals"] == {
        "planned": 15,
        "stored": 11,
        "failed": 2,
        "skipped": 2,
        "in_flight": 0,
        "warnings": 1,
        "transcoded": 0,
        "bytes_stored": 11000,
    }
    assert data["throughput"]["files_per_s"] == 1.1
    assert data["statuses"] == {"0x0000": 10, "0xA700": 1, "0xB000": 1}
    assert data["exit_status"] == 1 and data["fatal"] is None
    assert data["settings"] == {"host": "pacs", "token": "***"}
    assert len(data["files"]) == 15 and data["files"][0]["uri"] == "/archive/000.dcm"
    assert data["latency"]["count"] == 11 and data["latency"]["p50_s"] == 0.002


def test_csv_round_trips_awkward_names_and_html_escapes_them() -> None:
    result = _result()
    evil = '/archive/a,b "c"/<script>alert(1)</script>.dcm'
    result.outcomes.append(FileOutcome(evil, State.FAILED, f"{evil}: unreadable"))
    data = from_store_result(result)
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert evil in {r["uri"] for r in rows}
    assert {r["state"] for r in rows} == {"failed", "skipped"} and len(rows) == 5
    page = render(data, "html")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The embedded JSON cannot end its <script> element early either.
    embedded = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["totals"]["failed"] == 3
    # A store run has no per-second timeline: its time charts say so instead of failing.
    assert 'data-chart="throughput-files" data-points="0"' in page


def _planned(i: int) -> PlannedFile:
    uri = f"/archive/{i:03d}.dcm"
    return PlannedFile(uri, 1000, "v1", SC, f"1.2.3.{i}", EXPLICIT_LE, "1.2.3")


def test_live_job_reports_files_in_flight(redis_server: RedisPeer) -> None:
    ledger = Ledger(redis_server.client(), "job-live")
    ledger.create({"host": "pacs", "port": 104, "called_ae": "PACS", "s3_secret": "x"})
    ledger.mark_started()
    planned = ledger.add_batch("b1", [_planned(i) for i in range(6)])
    ledger.add_refused([("/archive/readme.txt", State.SKIPPED, "not a DICOM file")])
    now = time.time()
    ledger.record_many(
        [(p.file_id, _stored(i), now) for i, p in enumerate(planned[:3])], worker="w1:1"
    )
    ledger.record_many(
        [
            (
                planned[3].file_id,
                FileOutcome(planned[3].uri, State.FAILED, "0xA900 x", 0xA900, attempts=1),
                now,
            )
        ],
        worker="w2:2",
    )
    data = from_ledger(ledger, redis_url="redis://:pw@127.0.0.1:1/0")
    assert data.live and data.in_flight == 2 and data.planned == 7
    assert not data.invariant_holds and data.exit_status == 1
    assert (
        data.settings["s3_secret"] == "***"
        and data.settings["redis_url"] == "redis://***@127.0.0.1:1/0"
    )
    report = json.loads(render(data, "json"))
    assert report["totals"]["in_flight"] == 2 and report["invariant"]["ledger_agrees"] is True
    assert report["invariant"]["ledger_counts"]["in_flight"] == 2
    assert len(report["files"]) == 7
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert [(r["uri"], r["state"]) for r in rows] == [
        ("/archive/003.dcm", "failed"),
        ("/archive/004.dcm", "in_flight"),
        ("/archive/005.dcm", "in_flight"),
        ("/archive/readme.txt", "skipped"),
    ]
    text = render(data, "text")
    assert text.startswith("… In progress: 5/7 files have an outcome")
    assert "  In flight:   2" in text and "+ in flight 2" in text
    assert "  Workers:     2" in text
    html = render(data, "html")
    assert 'data-state="in_flight"' in html and "still running" in html


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_report_command_refuses_an_unknown_job(redis_server: RedisPeer, fmt: str) -> None:
    proc = run_migrator("report", "job-nope", "--redis-url", redis_server.url, "--format", fmt)
    assert proc.returncode == 2 and "no job 'job-nope'" in proc.stderr
