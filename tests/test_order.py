"""`--order`: the planner puts the newest (or oldest) studies first, and a real worker sends
them in that order to a receiver that notes the order C-STOREs arrive in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from migrator import synth
from migrator.ledger import PlannedFile
from migrator.ordering import StudyOrder
from tests.enginehelpers import (
    assert_invariant,
    common_args,
    finish,
    only_job,
    start_run,
    wait_until,
)
from tests.peers.counting_scp import CountingScp
from tests.peers.redis import RedisPeer
from tests.storehelpers import run_migrator
from workers.local import LocalWorkers

#: Studies as the listing gives them (file names sort in this order), and their dates.
DATES = ["20190612", "20240105", "20110930"]


class OrderScp(CountingScp):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def _on_store(self, event: Any) -> int:
        self.order.append(str(event.request.AffectedSOPInstanceUID))
        return super()._on_store(event)


def _three_studies(folder: Path) -> dict[str, str]:
    """5 files in each of 3 studies, dated DATES in listing order; SOP UID -> its date."""
    synth.write_corpus(folder, count=15, size="tiny", studies=3, seed=31, accessions=True)
    paths = sorted(folder.iterdir())
    dates: dict[str, str] = {}
    studies: dict[str, str] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.StudyInstanceUID not in studies:
            studies[ds.StudyInstanceUID] = DATES[len(studies)]
        date = studies[ds.StudyInstanceUID]
        ds.StudyDate = date
        ds.save_as(path, enforce_file_format=True)
        dates[ds.SOPInstanceUID] = date
    assert sorted(set(dates.values())) == sorted(DATES)
    return dates


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("newest-study-first", sorted(DATES, reverse=True)),
        ("oldest-first", sorted(DATES)),
        ("listing", DATES),
    ],
)
def test_the_receiver_gets_the_studies_in_the_order_asked(
    tmp_path: Path, redis_server: RedisPeer, order: str, expected: list[str]
) -> None:
    dates = _three_studies(tmp_path / "in")
    url = redis_server.url
    scp = OrderScp().start()
    try:
        # One worker process, one association: batches in the order they were enqueued.
        with LocalWorkers(url, 1, logfile=str(tmp_path / "w.log")):
            dest = common_args(("127.0.0.1", scp.port), scp.ae_title)
            proc = start_run(
                tmp_path / "in", *dest, "--redis-url", url, "--order", order, "-j", "1",
                "--batch-files", "5", "--no-preflight",
            )  # fmt: skip
            code, out = finish(proc, timeout=120)
    finally:
        scp.stop()
    assert code == 0, out
    assert_invariant(only_job(redis_server.client()))
    arrived = [dates[uid] for uid in scp.order]
    assert len(arrived) == 15
    seen = list(dict.fromkeys(arrived))  # each study's first arrival, in order
    assert seen == expected, arrived
    assert arrived == sorted(arrived, key=expected.index), arrived  # never interleaved


@pytest.mark.timeout(180)
def test_a_priority_list_puts_the_studies_it_names_first(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Named by Accession Number (the last study listed) and by Patient ID (the second):
    those two first, in listing order, then the first study."""
    dates = _three_studies(tmp_path / "in")
    by_date = {}
    for path in sorted((tmp_path / "in").iterdir()):
        ds = pydicom.dcmread(path)
        by_date[ds.StudyDate] = (str(ds.AccessionNumber), str(ds.PatientID))
    urgent = tmp_path / "urgent.txt"
    urgent.write_text(f"# wanted today\n{by_date[DATES[2]][0]}\n\n{by_date[DATES[1]][1]}\n")
    url = redis_server.url
    scp = OrderScp().start()
    try:
        with LocalWorkers(url, 1, logfile=str(tmp_path / "w.log")):
            dest = common_args(("127.0.0.1", scp.port), scp.ae_title)
            proc = start_run(
                tmp_path / "in", *dest, "--redis-url", url, "--priority-list", urgent,
                "-j", "1", "--batch-files", "5", "--no-preflight",
            )  # fmt: skip
            code, out = finish(proc, timeout=120)
    finally:
        scp.stop()
    assert code == 0, out
    arrived = [dates[uid] for uid in scp.order]
    assert list(dict.fromkeys(arrived)) == [DATES[1], DATES[2], DATES[0]], arrived
    # The report: the two named studies against the rest, in every format.
    job = only_job(redis_server.client()).job_id
    made = run_migrator("report", job, "--redis-url", url, "--format", "json")
    rows = {r["class"]: r for r in json.loads(made.stdout)["priority_classes"]}
    assert rows.keys() == {"priority-list", "rest"}, rows
    first, rest = rows["priority-list"], rows["rest"]
    assert (first["planned"], first["stored"], rest["planned"], rest["stored"]) == (10, 10, 5, 5)
    assert first["finished"] < rest["finished"], rows  # the named studies were done first
    text = run_migrator("report", job, "--redis-url", url).stdout
    assert "priority-list: 10 files: 10 stored, 0 failed, 0 skipped, 0 in flight" in text, text
    html = run_migrator("report", job, "--redis-url", url, "--format", "html").stdout
    assert '<table id="priority-classes">' in html and ">priority-list</td>" in html
    missing = run_migrator("run", tmp_path / "in", *dest, "--priority-list", tmp_path / "nope")
    assert missing.returncode == 2 and "--priority-list" in missing.stderr


@pytest.mark.timeout(180)
def test_an_urgent_list_added_mid_job_is_served_next(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    synth.write_corpus(tmp_path / "in", count=30, size="tiny", studies=6, seed=32, accessions=True)
    study_of: dict[str, int] = {}
    accession_of: dict[int, str] = {}
    for path in sorted((tmp_path / "in").iterdir()):
        ds = pydicom.dcmread(path)
        n = int(str(ds.AccessionNumber)[-6:])  # 1..6, in listing order
        study_of[str(ds.SOPInstanceUID)] = n
        accession_of[n] = str(ds.AccessionNumber)
    urgent = tmp_path / "urgent.txt"
    urgent.write_text(accession_of[6] + "\n")
    url = redis_server.url
    scp = OrderScp().start()
    try:
        with LocalWorkers(url, 1, logfile=str(tmp_path / "w.log")):
            dest = common_args(("127.0.0.1", scp.port), scp.ae_title)
            proc = start_run(
                tmp_path / "in", *dest, "--redis-url", url, "-j", "1", "--batch-files", "5",
                "--rate-limit", "5", "--burst", "1", "--no-preflight",
            )  # fmt: skip
            ledger = only_job(redis_server.client())
            wait_until(lambda: ledger.counts()["stored"] >= 3, 60, "the first files")
            said = run_migrator("urgent", ledger.job_id, "--redis-url", url, "--list", urgent)
            at = len(scp.order)
            assert said.returncode == 0 and "5 unsent files in 1 batches" in said.stdout, said
            code, out = finish(proc, timeout=120)
    finally:
        scp.stop()
    assert code == 0, out
    arrived = [study_of[uid] for uid in scp.order]
    first = arrived.index(6)
    # Next: after at most the batch being sent when the list came (5 files).
    assert first <= at + 5 and arrived[first : first + 5] == [6] * 5, (at, arrived)
    assert arrived.index(5) > first, arrived  # before the studies listed ahead of it
    made = run_migrator("report", ledger.job_id, "--redis-url", url, "--format", "json")
    rows = {r["class"]: r for r in json.loads(made.stdout)["priority_classes"]}
    assert (rows["urgent"]["stored"], rows["rest"]["stored"]) == (5, 25), rows
    assert rows["urgent"]["finished"] < rows["rest"]["finished"], rows


def test_files_without_a_study_date_go_last_and_a_study_stays_together() -> None:
    held = StudyOrder("newest-study-first")
    try:
        rows = [("a", "20200101"), ("b", ""), ("c", "20230101"), ("a", "20200101")]
        for n, (study, date) in enumerate(rows):
            held.add(PlannedFile(f"/f{n}", 1, "", "", f"1.{n}", "", study), date, "", "")
        assert [f.uri for f, _, _ in held] == ["/f2", "/f0", "/f3", "/f1"]
    finally:
        held.close()
