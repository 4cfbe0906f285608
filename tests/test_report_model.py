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
from migrator.report import (
    FORMATS,
    ReportData,
    format_for_path,
    from_ledger,
    from_store_result,
    render,
)
from migrator.report.csvfmt import COLUMNS
from migrator.report.latency import Latency
from migrator.report.masking import mask_secrets, mask_text
from migrator.report.timeline import MAX_TIMELINE_POINTS, build_timeline
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
        "found_after_loss": 0,
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
    ledger.create(
        {
            "host": "pacs",
            "port": 104,
            "called_ae": "PACS",
            "s3_secret": "x",
            "broker": "redis://:pw@127.0.0.1:1/0",
        }
    )
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
    data = from_ledger(ledger)
    assert data.live and data.in_flight == 2 and data.planned == 7
    # Files in flight: the job is not done (exit 6), whatever else it holds.
    assert not data.invariant_holds and data.exit_status == 6
    # The job's settings as it was run, its broker as recorded then, secrets masked.
    assert (
        data.settings["s3_secret"] == "***"
        and data.settings["broker"] == "redis://***@127.0.0.1:1/0"
        and "redis_url" not in data.settings
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


def _finished_job(redis_server: RedisPeer, job: str, n: int) -> tuple[Ledger, list[PlannedFile]]:
    ledger = Ledger(redis_server.client(), job)
    ledger.create({"host": "pacs", "port": 104, "called_ae": "PACS"})
    ledger.mark_started()
    planned = ledger.add_batch("b1", [_planned(i) for i in range(n)])
    now = time.time()
    ledger.record_many([(p.file_id, _stored(i), now) for i, p in enumerate(planned)], worker="w:1")
    ledger.mark_finished()
    return ledger, planned


def test_report_of_a_job_never_verified_says_so(redis_server: RedisPeer) -> None:
    """No `verify` in the ledger: verification None/null, a hint in text and HTML, no CSV row."""
    ledger, _ = _finished_job(redis_server, "job-unverified", 4)
    data = from_ledger(ledger)
    assert data.verification is None and data.stored == 4 and data.exit_status == 0
    assert json.loads(render(data, "json"))["verification"] is None
    text = render(data, "text")
    assert text.startswith("✓ All files stored successfully!")  # the headline is unchanged
    assert "  Verified against the PACS: not verified — run `migrator verify job-unverified`" in (
        text
    )
    assert render(data, "csv") == ",".join(COLUMNS) + "\n"  # every file stored: no row
    page = render(data, "html")
    kpi = page.split('data-kpi="confirmed by pacs">', 1)[1].split("</div></div>", 1)[0]
    assert "not verified" in kpi and "run `migrator verify job-unverified`" in kpi
    assert "Not verified — run <code>migrator verify job-unverified</code>" in page
    embedded = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["verification"] is None
    # A `store` run has no ledger to verify: no verification line, card or section at all.
    store = from_store_result(_result())
    assert store.verification is None and not store.has_ledger
    assert "Verified against" not in render(store, "text")
    assert "confirmed by pacs" not in render(store, "html")


def test_report_of_a_verified_job_lists_a_bounded_number_of_missing_files(
    redis_server: RedisPeer,
) -> None:
    """Counts from the `verify` summary; at most ``verify_limit`` files of each kind resolved
    to URI and UID (the SOP Instance UID as sent first, the plan's otherwise)."""
    from migrator.verify import FileProblem, VerifyResult, save_result

    ledger, planned = _finished_job(redis_server, "job-verified", 8)
    result = VerifyResult(ledger.job_id, "pacs:104 (PACS)", stored=8, instances=8, studies=1)
    result.checked_at = time.time()
    result.missing = [
        FileProblem(planned[i].file_id, "", "", "", "not found by C-FIND in its study")
        for i in (5, 2, 6)
    ]
    result.unconfirmed = [FileProblem(planned[7].file_id, "", "", "", "no report")]
    save_result(ledger, result)
    data = from_ledger(ledger, verify_limit=2)
    v = data.verification
    assert v is not None and not v.outdated and v.stored_now == 8
    assert (v.stored, v.confirmed, v.missing, v.unconfirmed) == (8, 4, 3, 1)
    # The first two missing file ids (by id), sorted by URI; the third only counted.
    assert [(f.uri, f.sop_instance_uid, f.study_uid) for f in v.missing_files] == [
        ("/archive/002.dcm", "1.2.3.2", "1.2.3"),
        ("/archive/005.dcm", "1.2.3.5", "1.2.3"),
    ]
    assert (v.missing_omitted, v.unconfirmed_omitted) == (1, 0)
    assert data.exit_status == 0  # verification is reported, it does not change the exit
    report = json.loads(render(data, "json"))["verification"]
    assert (report["confirmed"], report["missing"], report["missing_files_omitted"]) == (4, 3, 1)
    assert [f["uri"] for f in report["unconfirmed_files"]] == ["/archive/007.dcm"]
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert [(r["uri"], r["state"], r["status"], r["attempts"]) for r in rows] == [
        ("/archive/002.dcm", "missing_at_pacs", "", "1"),
        ("/archive/005.dcm", "missing_at_pacs", "", "1"),
        ("/archive/007.dcm", "unconfirmed_at_pacs", "", "1"),
    ]
    text = render(data, "text")
    assert "    Confirmed by PACS: 4 (50.0%)\n    Missing at PACS:   3\n" in text
    assert "  ✗ /archive/002.dcm: missing at PACS: 1.2.3.2 (not found by C-FIND" in text
    assert "  … and 1 more: see the CSV report (`migrator report JOB --format csv`), which " in text
    assert "keeps the first 2 of each kind; `migrator verify JOB --json` lists them all" in text
    page = render(data, "html")
    assert (
        'data-kpi="confirmed by pacs"><div class="l">Confirmed by PACS</div><div class="v">4<'
        in (page)
    )
    assert page.count('<tr class="state-missing_at_pacs">') == 2
    # The ledger changed since (one more file stored): the report says to verify again.
    more = ledger.add_batch("b2", [_planned(8)])
    ledger.record_many([(more[0].file_id, _stored(8), time.time())])
    again = from_ledger(ledger).verification
    assert again is not None and again.outdated and again.stored_now == 9
    assert "the ledger now says 9 stored: run `migrator verify` again" in render(
        from_ledger(ledger), "text"
    )


_AWKWARD = [
    '/a}\x00{b"},\n      {"c": 1}',  # a row boundary and its separator, inside a string
    "/é/ü/\u2028/\U0001f600.dcm",
    "/tab\there/\\back\\slash/\x1f",
    "",
]


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"uri": "/one.dcm"}],
        [
            {
                "uri": uri,
                "state": "stored",
                "status": None if i % 2 else "0x0000",
                "transcoded": bool(i % 2),
                "bytes": -i,
                "seconds": [0.0, 1e-7, 123456.789, float("nan"), float("inf"), 0.1][i % 6],
                "at": 1700000000.25 + i,
                uri or "empty": i,  # odd keys too
                i: None,  # a number as key: both encoders write it as a string
            }
            for i, uri in enumerate(_AWKWARD * 3)
        ],
    ],
)
def test_json_files_are_written_as_json_dumps_indent_2(rows: list[dict[str, object]]) -> None:
    from migrator.report import jsonfmt

    data = from_store_result(_result())
    data.files = rows
    expected = json.dumps(jsonfmt.to_dict(data), indent=2) + "\n"
    assert jsonfmt.render(data) == expected
    assert jsonfmt._flat_rows(rows) is not None


@pytest.mark.parametrize(
    "odd_row", [{"nested": {"a": 1}}, {"list": [1, 2]}, {"tuple": (1,)}, {}, {"s": State.STORED}]
)
def test_json_rows_that_are_not_flat_take_json_dumps_itself(odd_row: dict[object, object]) -> None:
    from migrator.report import jsonfmt

    data = from_store_result(_result())
    assert data.files is not None
    data.files.insert(3, odd_row)  # type: ignore[arg-type]
    assert jsonfmt._flat_rows(data.files) is None
    assert jsonfmt.render(data) == json.dumps(jsonfmt.to_dict(data), indent=2) + "\n"


def test_file_outcome_json_has_every_field_in_declaration_order() -> None:
    import dataclasses

    outcome = _stored(7, reason="why", warning=True, transcoded=True, seconds=0.0012345678)
    expected = dataclasses.asdict(outcome)
    expected.update(state="stored", status="0x0000", seconds=0.001235)
    row = outcome.to_json()
    assert row == expected
    assert list(row) == [f.name for f in dataclasses.fields(FileOutcome)]
    assert FileOutcome("/x", State.FAILED).to_json()["status"] is None


def test_run_summary_from_its_one_ledger_read_is_store_results(redis_server: RedisPeer) -> None:
    """`migrator run` reads the ledger once (from_ledger with ``outcomes``): the StoreResult
    it makes is to_store_result's, and the summary taken from the report (store_view) is
    from_store_result's, field by field and as text."""
    from migrator.report.builder import store_view

    ledger = Ledger(redis_server.client(), "job-one-read")
    ledger.create({"host": "pacs", "port": 104, "called_ae": "PACS"})
    ledger.mark_started()
    planned = ledger.add_batch("b1", [_planned(i) for i in range(40)])
    planned += ledger.add_batch("b2", [_planned(i) for i in range(40, 70)])
    ledger.add_refused([("/archive/readme.txt", State.SKIPPED, "not a DICOM file")])
    now = time.time()
    outcomes = [_stored(i, seconds=0.001 * (i % 7 + 1)) for i in range(70)]
    outcomes[3] = FileOutcome(planned[3].uri, State.FAILED, "0xA900 x", 0xA900, attempts=1)
    outcomes[41] = _stored(41, status=0xB000, warning=True, reason="0xB000 Warning: coercion")
    outcomes[50] = FileOutcome(planned[50].uri, State.FAILED, "association aborted", attempts=2)
    pairs = enumerate(zip(planned, outcomes, strict=True))
    ledger.record_many([(p.file_id, o, now + i / 10) for i, (p, o) in pairs], worker="w1:1")
    ledger.mark_finished()

    read: list[FileOutcome] = []
    report = from_ledger(ledger, outcomes=read)
    expected = ledger.to_store_result("pacs:104 (PACS)")
    assert read == expected.outcomes and len(read) == 71
    result = StoreResult("pacs:104 (PACS)", read, started=report.started, finished=report.finished)
    assert (result.started, result.finished) == (expected.started, expected.finished)
    result.fatal = "a fatal line"

    view = store_view(report, result)
    alone = from_store_result(result, keep_files=False)
    assert view is not None
    for name in ReportData.__dataclass_fields__:
        if name == "latency":
            for part in ("sample", "bins", "count", "total", "maximum"):
                assert getattr(view.latency, part) == getattr(alone.latency, part), part
        elif name != "generated":
            assert getattr(view, name) == getattr(alone, name), name
    assert render_text(result, job_report=report) == render_text(result)
    assert "✗ a fatal line" in render_text(result, job_report=report)


def test_run_summary_of_a_job_with_files_in_flight_is_built_from_its_outcomes(
    redis_server: RedisPeer,
) -> None:
    from migrator.report.builder import store_view

    ledger = Ledger(redis_server.client(), "job-in-flight")
    ledger.create({"host": "pacs", "port": 104, "called_ae": "PACS"})
    planned = ledger.add_batch("b1", [_planned(i) for i in range(4)])
    ledger.record_many([(planned[0].file_id, _stored(0), time.time())], worker="w1:1")
    read: list[FileOutcome] = []
    report = from_ledger(ledger, outcomes=read)
    result = StoreResult("pacs:104 (PACS)", read)
    assert report.in_flight == 3 and store_view(report, result) is None
    # The summary is then the job's own (its outcomes cannot count the files in flight):
    # never "✓" for a job that is not done.
    report.live = False
    text = render_text(result, job_report=report)
    assert text.startswith("⚠ Incomplete: 3 of 4 files still in flight"), text
    assert "⚠ planned 4 = stored 1 + failed 0 + skipped 0 + in flight 3" in text, text
    assert "✓" not in text and render_text(result).startswith("✓")
