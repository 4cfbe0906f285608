"""Reconciliation with the old PACS's inventory, `retry --missing`, and the source's own
fleet-wide limits (issue 17), against real peers.

The old PACS is an Orthanc (C-FIND, C-GET) holding 12 instances in 3 studies, each with an
accession number and a patient name that must never be printed; the destination a second
Orthanc (it can lose an instance by REST DELETE, and answer C-FIND). One `migrator run
dimse://…` with real Celery worker processes and Redis is shared by the module; the tests
that change either Orthanc put it back. What a user checks: `verify`'s exit code and the
instances it names, the report's per-study table, the instance back at the destination
after `retry --missing`, the invariant, and, seen on the wire between the workers and the
old PACS, how many associations it had at once and how fast instances were fetched.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from click.testing import CliRunner

from migrator import synth
from migrator.cli import main
from migrator.ledger import Ledger
from migrator.netutil import free_port
from tests.enginehelpers import assert_invariant, common_args, finish, start_run, wait_until
from tests.peers.assoc_counter import AssociationCounter
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer, redis_peer
from tests.peers.tcp_proxy import TcpProxy
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(180)

OUR_AE = "MIGRATOR"
FILES = 12
#: Never to be seen in any output: reconciliation asks for UIDs, accessions and counts only.
PATIENT = "Reconcile^Secret"
#: The Study Root C-GET model: the associations that fetch (the listing's is C-FIND only).
C_GET_MODEL = b"1.2.840.10008.5.1.4.1.2.2.3"


@dataclass
class Migrated:
    old: OrthancPeer
    new: OrthancPeer
    redis: RedisPeer
    ledger: Ledger
    files: list[Path]
    tmp: Path

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--redis-url", self.redis.url])
        assert "Traceback" not in result.output, result.output
        return result.exit_code, result.output

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        code, out = self.cli("verify", self.ledger.job_id, "--json", *args)
        return code, json.loads(out)

    def wait_settled(self) -> None:
        wait_until(lambda: self.ledger.counts()["in_flight"] == 0, 60, "the job to settle")


def _source(pacs: OrthancPeer, port: int | None = None) -> str:
    return f"dimse://{pacs.aet}@127.0.0.1:{port or pacs.dicom_port}"


def _old_pacs(workdir: Path) -> OrthancPeer:
    return OrthancPeer(
        workdir,
        aet="OLDPACS",
        extra={
            "DicomModalities": {OUR_AE: [OUR_AE, "127.0.0.1", 1]},
            "DicomAlwaysAllowGet": True,
        },
    ).start()


def _named(path: Path, n: int) -> bytes:
    """The file with the patient name no output may show, and an accession per study."""
    ds = pydicom.dcmread(path, force=True)
    ds.PatientName = PATIENT
    ds.AccessionNumber = f"ACC{int(str(ds.StudyInstanceUID).rsplit('.', 1)[-1]) % 1000:03d}"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    tmp = tmp_path_factory.mktemp("reconcile")
    # One instance per series: the workers ask for a batch's instances series by series, so
    # each fetch is one association, which the relay test counts.
    files = synth.write_corpus(
        tmp / "src", count=FILES, size="tiny", studies=3, series_per_study=4, seed=1717
    )
    with redis_peer(tmp / "redis") as redis_server:
        old = _old_pacs(tmp / "old")
        new = OrthancPeer(tmp / "new", aet="NEWPACS", extra={"DicomAlwaysAllowFind": True})
        new.start()
        try:
            for n, f in enumerate(files):
                old.upload(_named(f, n))
            with LocalWorkers(redis_server.url, 2, logfile=str(tmp / "workers.log")):
                proc = start_run(
                    _source(old),
                    *common_args(("127.0.0.1", new.dicom_port), "NEWPACS"),
                    "--source-calling-ae",
                    OUR_AE,
                    "--redis-url",
                    redis_server.url,
                    "--batch-files",
                    "4",
                )
                code, out = finish(proc, timeout=90)
                assert code == 0, out
                [job] = [j.decode() for j in redis_server.client().smembers("migrator:jobs")]
                ledger = Ledger(redis_server.client(), job)
                assert assert_invariant(ledger)["stored"] == FILES
                assert new.count_instances() == FILES
                yield Migrated(old, new, redis_server, ledger, files, tmp)
        finally:
            old.stop(wait=False)
            new.stop(wait=False)


def _study_rows(data: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {
        r["study_uid"]: (r["at_source"], r["stored"], r["at_destination"])
        for r in data["reconciliation"]["studies_table"]
    }


def test_a_complete_migration_reconciles_with_the_source_and_names_no_patient(
    migrated: Migrated,
) -> None:
    """Every study: the same count at the source, in the ledger and at the destination;
    exit 0; the report's completeness table in every format, with accessions, no names."""
    code, data = migrated.verify("--full")
    assert code == 0, data
    rec = data["reconciliation"]
    assert rec["source"] == _source(migrated.old)
    assert (rec["studies"], rec["studies_listed"], rec["missing"], rec["extra"]) == (3, 3, 0, 0)
    assert (rec["at_source"], rec["stored"], rec["at_destination"]) == (FILES,) * 3
    assert sum(s[0] for s in _study_rows(data).values()) == FILES
    assert all(r["accession"].startswith("ACC") for r in rec["studies_table"])

    code, text = migrated.cli("verify", migrated.ledger.job_id)
    assert code == 0 and "✓ every instance at the source is at the destination" in text, text
    outputs = [text]
    job = migrated.ledger.job_id
    for fmt in ("text", "json", "html"):
        code, out = migrated.cli("report", job, "--format", fmt)
        assert code == 0, out
        outputs.append(out)
    report = json.loads(outputs[2])
    table = report["completeness"]
    assert (table["studies"], table["studies_differing"], table["missing"]) == (3, 0, 0)
    assert all(r["at_source"] == r["stored"] == r["at_destination"] for r in table["rows"])
    assert "Reconciled with the source" in outputs[1]
    assert 'id="completeness-table"' in outputs[3]
    code, out = migrated.cli("report", job, "--format", "csv", "--by", "study")
    assert code == 0, out
    outputs.append(out)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3
    assert all(r["at_source"] == r["at_destination"] == r["stored"] for r in rows), rows
    assert all(r["accession_number"].startswith("ACC") for r in rows), rows
    for out in outputs:
        assert "Secret" not in out  # PATIENT's family name is "Reconcile": too common a word


def test_an_instance_lost_by_the_destination_is_reported_and_restored_by_retry_missing(
    migrated: Migrated,
) -> None:
    """Deleted from the destination after the run (REST DELETE), and one instance added to
    a study at the source after planning: verify names both and exits 1; the report's
    table shows the study differing; `retry --missing` sends both through the job's
    batches (the invariant holds, the lost one counted once); verify is then clean."""
    lost = migrated.files[5]
    lost_uid = str(pydicom.dcmread(lost, stop_before_pixels=True).SOPInstanceUID)
    orthanc_id = migrated.new.find_instance(lost_uid)
    assert orthanc_id is not None
    requests.delete(f"{migrated.new.url}/instances/{orthanc_id}", timeout=10).raise_for_status()
    # A new instance in the lost one's study, at the source only.
    ds = pydicom.dcmread(lost, force=True)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    added = io.BytesIO()
    ds.save_as(added)
    migrated.old.upload(added.getvalue())
    before = migrated.ledger.counts()
    try:
        code, data = migrated.verify("--sample", "0")
        assert code == 1, data
        rec = data["reconciliation"]
        missing = {m["sop_instance_uid"]: m for m in rec["missing_instances"]}
        assert set(missing) == {lost_uid, str(ds.SOPInstanceUID)}
        assert missing[lost_uid]["file_id"] and not missing[str(ds.SOPInstanceUID)]["file_id"]
        assert rec["studies_differing"] == 1 and rec["studies_listed"] == 1
        study = str(ds.StudyInstanceUID)
        counts = _study_rows(data)[study]
        assert counts[0] == counts[1] + 1 == counts[2] + 2, counts  # source, stored, dest
        # The ledger-only check sees the lost one too (it was stored per ledger).
        assert [f["sop_instance_uid"] for f in data["missing_files"]] == [lost_uid]
        job = migrated.ledger.job_id
        code, text = migrated.cli("verify", job, "--sample", "0")
        assert code == 1 and "missing at the destination: 2" in text, text
        assert f"`migrator retry {job} --missing` sends them" in text, text
        code, text = migrated.cli("report", job)
        assert f"✗ {study}" in text, text

        code, out = migrated.cli("retry", migrated.ledger.job_id, "--missing")
        assert code == 0, out
        assert "2 missing instances enqueued again" in out, out
        migrated.wait_settled()
        after = assert_invariant(migrated.ledger)
        assert after["planned"] == before["planned"] + 1  # the new one planned, not the lost
        assert after["stored"] == before["stored"] + 1
        assert migrated.new.find_instance(lost_uid) is not None
        assert migrated.new.find_instance(str(ds.SOPInstanceUID)) is not None
        code, html = migrated.cli("report", job, "--format", "html")
        assert "missing sent again" in html and "1 new at the source" in html
        # Twice sends nothing more: what was handled left the reconciliation's list. (As a
        # sending session this time, with a local worker: `retry`'s default path.)
        code, out = migrated.cli("retry", job, "--missing", "--workers", "1")
        assert code == 0 and "0 missing instances sent again" in out, out
        assert migrated.ledger.counts() == after

        code, data = migrated.verify("--sample", "0")
        assert code == 0, data
        assert data["reconciliation"]["missing"] == 0 and data["missing"] == 0
        assert data["reconciliation"]["at_destination"] == FILES + 1
    finally:
        # As the ledger now says, whatever failed above: both instances at the destination
        # (the added one stays at the source too: the job planned it).
        if migrated.new.find_instance(str(ds.SOPInstanceUID)) is None:
            migrated.new.upload(added.getvalue())
        if migrated.new.find_instance(lost_uid) is None:
            migrated.new.upload(_named(lost, 5))


def test_an_instance_only_at_the_destination_is_extra_and_not_a_failure(
    migrated: Migrated, tmp_path: Path
) -> None:
    """Extra instances are named, but nothing is missing: exit 0. (Asked with
    --against-source, which reconciles every file of a job with the archive given.)"""
    ds = pydicom.dcmread(migrated.files[0], force=True)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    ds.save_as(out)
    stored = migrated.new.upload(out.getvalue())
    try:
        code, data = migrated.verify("--sample", "0", "--against-source", _source(migrated.old))
        assert code == 0, json.dumps(data, indent=1)
        rec = data["reconciliation"]
        assert rec["source"] == _source(migrated.old)
        assert rec["extra_instances"] == [
            {"study_uid": str(ds.StudyInstanceUID), "sop_instance_uid": str(ds.SOPInstanceUID)}
        ]
        assert rec["missing"] == 0
    finally:
        requests.delete(f"{migrated.new.url}/instances/{stored['ID']}", timeout=10)


def test_retry_missing_needs_a_reconciliation_and_ledger_only_skips_the_source(
    migrated: Migrated,
) -> None:
    """Usage errors (exit 2) name what to do; an old PACS that cannot be reached exits 3
    naming it; --ledger-only is verify as before."""
    code, data = migrated.verify("--ledger-only")
    assert code == 0 and "reconciliation" not in data, data
    code, out = migrated.cli(
        "verify", migrated.ledger.job_id, "--ledger-only", "--against-source", "dimse://A@h:1"
    )
    assert code == 2 and "exclude each other" in out, out
    code, out = migrated.cli("verify", migrated.ledger.job_id, "--against-source", "nope")
    assert code == 2 and "dimse://AE@host:port" in out, out
    gone = free_port()
    code, out = migrated.cli(
        "verify", migrated.ledger.job_id, "--against-source", f"dimse://OLDPACS@127.0.0.1:{gone}"
    )
    assert code == 3 and f"cannot reach 127.0.0.1:{gone} (OLDPACS)" in out, out
    never = Ledger(migrated.redis.client(), "never-verified")
    never.create(migrated.ledger.config())
    code, out = migrated.cli("retry", "never-verified", "--missing")
    assert code == 2 and "run `migrator verify never-verified` first" in out, out
    # The archive's limits live in the fleet's Redis, which `store` has not.
    result = CliRunner().invoke(
        main,
        ["store", _source(migrated.old), "--host", "127.0.0.1", "--source-rate-limit", "5"],
    )
    assert result.exit_code == 2, result.output
    assert "--source-rate-limit is for jobs" in result.output


def test_the_old_pacs_sees_the_fleet_wide_association_cap_and_rate(
    migrated: Migrated, storescp: StoreScpPeer
) -> None:
    """Two worker processes fetch from the old PACS through a relay that reads each
    association's PDUs: with --source-max-associations 1 never two C-GET associations at
    once, with --source-rate-limit 4 (a burst of one) never more than 4 + 2 opened within
    a second (see below) and the n spread over at least (n - 1) / 4 s, less a 10 % margin.
    (Both are upper bounds on the rate: a slow machine only spreads the fetches more.)
    Without the options the same job had two C-GET associations open at once and fetched
    the 12 within 0.2–0.35 s (checked by hand, not here: it would double the time)."""
    n = migrated.old.count_instances()  # FILES, or one more after the retry test
    counter = AssociationCounter(C_GET_MODEL)
    with TcpProxy("127.0.0.1", migrated.old.dicom_port, tap_each=counter.feed) as relay:
        proc = start_run(
            _source(migrated.old, relay.port),
            *common_args(("127.0.0.1", storescp.port), storescp.aet),
            "--source-calling-ae",
            OUR_AE,
            "--redis-url",
            migrated.redis.url,
            "--batch-files",
            "3",
            "--source-max-associations",
            "1",
            "--source-rate-limit",
            "4",
            "--job",
            "protected",
        )
        code, out = finish(proc, timeout=90)
    assert code == 0, out
    assert len(storescp.received_files()) == n
    # One C-GET association per request: a batch asks for its instances series by series
    # (one instance a series, but the retry test's added one shares its series).
    plan = Ledger(migrated.redis.client(), "protected")
    requests_made = sum(
        len({f.uri.split("/instances/")[0] for f in plan.batch(b)}) for b in plan.batch_ids()
    )
    assert n - 1 <= requests_made <= n
    assert len(counter.opened) == requests_made
    assert counter.max_open == 1
    gaps = [round(b - a, 3) for a, b in zip(counter.opened, counter.opened[1:], strict=False)]
    # The limiter spaces the reservations 0.25 s apart (4 in any second); the A-ASSOCIATE-RQ
    # follows its reservation after a connect and a process switch that vary by a few
    # hundred ms on a loaded machine, which can pull one more in at each end of a window.
    assert counter.most_in_one_second() <= 4 + 2, gaps
    span = counter.opened[-1] - counter.opened[0]
    assert span >= (n - 1) / 4 * 0.9, span
    assert_invariant(Ledger(migrated.redis.client(), "protected"))
