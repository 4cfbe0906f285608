"""`migrator verify` of a job sent to a DICOMweb destination: QIDO-RS instead of C-FIND.

A real `migrator run --dicomweb` (embedded Redis, local workers) into Orthanc with its
DICOMweb plugin, through a relay that records every QIDO-RS GET; then `migrator verify` and
`migrator report` as a user runs them (subprocesses on the run's --state-dir). Only `run`
makes a job: `store` keeps no ledger, so there is nothing of it to verify.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from migrator import synth
from tests.behaviourhelpers import send
from tests.peers.http_relay import StowFaultRelay
from tests.peers.orthanc import OrthancPeer, orthanc_peer
from tests.storehelpers import sop_uid

pytestmark = pytest.mark.timeout(240)

FILES = 36  # 3 studies of 2 series of 6 instances
PAGE = 4  # --qido-page: every series takes two pages and an empty one


@dataclass
class Job:
    pacs: OrthancPeer
    relay: StowFaultRelay
    state_dir: Path
    files: list[Path]

    def migrator(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "migrator", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def verify(self, *args: str) -> tuple[int, Any]:
        """`migrator verify --json ...`: (exit code, parsed JSON, or the output if not JSON)."""
        proc = self.migrator("verify", "--json", *args)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            return proc.returncode, proc.stdout + proc.stderr


def run_job(pacs: OrthancPeer, root: str, tmp: Path, *extra: str) -> Path:
    """`migrator run --dicomweb root`; every file stored, exit 0. Returns its --state-dir."""
    result = send("run", tmp / "src", 0, "", tmp, *extra, dest=["--dicomweb", root])
    assert result.rc == 0, result.tail()
    assert result.totals()["stored"] == FILES
    [state_dir] = tmp.glob("state-*")
    return state_dir


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    tmp = tmp_path_factory.mktemp("verify-dicomweb")
    files = synth.write_corpus(tmp / "src", count=FILES, size="tiny", studies=3, seed=1919)
    with (
        orthanc_peer(tmp / "orthanc", verbose=False, dicomweb=True) as pacs,
        StowFaultRelay(pacs.url, []) as relay,
    ):
        state_dir = run_job(pacs, relay.url + "/dicom-web", tmp)
        assert pacs.count_instances() == FILES
        yield Job(pacs, relay, state_dir, files)


def qido_gets(job: Job, since: int) -> list[tuple[str, dict[str, list[str]]]]:
    return [(urlsplit(g).path, parse_qs(urlsplit(g).query)) for g in job.relay.gets()[since:]]


def test_verify_confirms_every_instance_over_qido_rs(job: Job) -> None:
    """--full: every study counted and listed over QIDO-RS (series, then instances, in pages
    of 4 read to the end), all 36 confirmed; nothing asked over DIMSE (the job has no DIMSE
    destination); the ledger keeps the result with method qido-rs."""
    before = len(job.relay.gets())
    code, data = job.verify("--full", "--qido-page", str(PAGE))
    assert code == 0, data
    assert data["method"] == "qido-rs"
    assert data["stored"] == data["instances"] == data["confirmed"] == FILES
    assert (data["studies"], data["studies_listed"], data["missing"]) == (3, 3, 0)
    assert data["mismatched_studies"] == [] and data["missing_files"] == []
    gets = qido_gets(job, before)
    counts = [q for path, q in gets if path.endswith("/dicom-web/studies")]
    assert len(counts) == 3 and all(q["includefield"] == ["00201208"] for q in counts)
    listing = [(path, q) for path, q in gets if path.endswith("/instances")]
    # 6 series of 6 instances, pages of 4: offsets 0, 4 (two left) and 6 (empty) for each.
    assert len({path for path, _ in listing}) == 6
    assert sorted(q["offset"][0] for _, q in listing) == ["0"] * 6 + ["4"] * 6 + ["6"] * 6
    assert all(q["limit"] == [str(PAGE)] for _, q in listing)


def test_instance_deleted_after_the_job_is_reported_missing(job: Job) -> None:
    """One instance deleted from Orthanc after the run: verify (exit 1) names exactly that
    file and SOP Instance UID, its study's counts differ by one; `migrator report` shows it
    missing at the PACS in JSON and text. The instance is put back afterwards."""
    gone = job.files[13]
    orthanc_id = job.pacs.find_instance(sop_uid(gone))
    assert orthanc_id is not None
    job.pacs.delete(f"/instances/{orthanc_id}")
    try:
        code, data = job.verify("--sample", "0")
        assert code == 1, data
        assert data["method"] == "qido-rs"
        assert (data["confirmed"], data["missing"], data["unconfirmed"]) == (FILES - 1, 1, 0)
        [missing] = data["missing_files"]
        assert (missing["uri"], missing["sop_instance_uid"]) == (str(gone), sop_uid(gone))
        assert missing["reason"] == "not found by QIDO-RS in its study"
        [study] = data["mismatched_studies"]
        assert (study["ledger"], study["pacs"]) == (12, 11)
        assert data["studies_listed"] == 1  # only the study whose count differs

        text = job.migrator("verify", "--sample", "0")
        assert text.returncode == 1, text.stderr
        assert f"{sop_uid(gone)}  {gone}  (not found by QIDO-RS in its study)" in text.stdout
        assert f"confirmed by PACS: {FILES - 1}" in text.stdout

        report = job.migrator("report", "--format", "json")
        assert report.returncode == 0, report.stderr
        verification = json.loads(report.stdout)["verification"]
        assert (verification["method"], verification["confirmed"]) == ("qido-rs", FILES - 1)
        assert [(m["uri"], m["sop_instance_uid"]) for m in verification["missing_files"]] == [
            (str(gone), sop_uid(gone))
        ]
        lines = job.migrator("report", "--format", "text").stdout.splitlines()
        assert [line for line in lines if "missing at PACS" in line] == [
            f"  ✗ {gone}: missing at PACS: {sop_uid(gone)} (not found by QIDO-RS in its study)"
        ]
    finally:
        job.pacs.upload(gone.read_bytes())
    assert job.pacs.count_instances() == FILES


def test_dimse_only_options_are_usage_errors(job: Job) -> None:
    """--commitment, --port, --called-ae mean nothing for a DICOMweb job: exit 2, and the
    last verification stays as it was."""
    for args in (["--commitment"], ["--port", "104"], ["--called-ae", "PACS"]):
        code, out = job.verify(*args)
        assert code == 2, out
        assert "DIMSE only" in out


def test_credentials_refused_exit_4_and_unreachable_exit_3(tmp_path: Path) -> None:
    """An Orthanc that requires HTTP basic auth: the job's --dicomweb-basic-auth-file is read
    again by verify (confirmed, exit 0); the same file with a wrong password: exit 4; the
    service stopped: exit 3 ("cannot reach")."""
    synth.write_corpus(tmp_path / "src", count=FILES, size="tiny", studies=3, seed=1920)
    auth = tmp_path / "auth.txt"
    auth.write_text("migrator:s3cret-pw\n")
    with orthanc_peer(
        tmp_path / "orthanc", verbose=False, dicomweb=True, auth=("migrator", "s3cret-pw")
    ) as pacs:
        state_dir = run_job(
            pacs, pacs.dicomweb_url, tmp_path, "--dicomweb-basic-auth-file", str(auth)
        )
        job = Job(pacs, StowFaultRelay(pacs.url, []), state_dir, [])
        code, data = job.verify()
        assert code == 0, data
        assert data["confirmed"] == FILES
        auth.write_text("migrator:wrong\n")
        code, out = job.verify()
        assert code == 4, out
        assert "HTTP 401" in out and "wrong" not in out
    code, out = job.verify()
    assert code == 3, out
    assert "cannot reach" in out
