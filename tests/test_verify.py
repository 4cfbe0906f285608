"""`migrator verify` against Orthanc after a real migration (redis-server, Celery workers).

One migration (54 files in 3 studies) into one Orthanc is shared by the module; tests that
delete an instance put it back. Orthanc 1.10.1 answers C-FIND only from AEs it knows
(``DicomAlwaysAllowFind``) and storage commitment only for AEs in ``DicomModalities``, whose
host and port it uses for the reverse association carrying the N-EVENT-REPORT.
"""

from __future__ import annotations

import csv
import io
import json
import socket
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
from migrator.settings import Settings
from migrator.verify import QueryClient, load_missing, load_summary
from tests.enginehelpers import assert_invariant, common_args, finish, only_job, start_run
from tests.peers.orthanc import OrthancPeer
from tests.peers.redis import RedisPeer, redis_peer
from tests.storehelpers import sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(120)

FILES = 54


@dataclass
class Migrated:
    orthanc: OrthancPeer
    redis: RedisPeer
    ledger: Ledger
    files: list[Path]
    commitment_port: int

    def verify(self, *args: str, as_json: bool = True) -> tuple[int, Any]:
        """`migrator verify JOB [--json] ...` in-process: (exit code, parsed JSON or the text)."""
        fmt = ["--json"] if as_json else []
        result = CliRunner().invoke(
            main, ["verify", self.ledger.job_id, "--redis-url", self.redis.url, *fmt, *args]
        )
        if not as_json:
            return result.exit_code, result.output
        try:
            return result.exit_code, json.loads(result.stdout)
        except ValueError:
            return result.exit_code, result.output


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    tmp = tmp_path_factory.mktemp("verify")
    files = synth.write_corpus(tmp / "src", count=FILES, size="tiny", studies=3, seed=505)
    port = free_port()  # Orthanc must know it before it starts (config file)
    extra = {
        "DicomAlwaysAllowFind": True,
        "DicomModalities": {"migrator": ["MIGRATOR", "127.0.0.1", port]},
    }
    with redis_peer(tmp / "redis") as redis_server:
        orthanc = OrthancPeer(tmp / "orthanc", extra=extra).start()
        try:
            with LocalWorkers(redis_server.url, 2, logfile=str(tmp / "workers.log")):
                proc = start_run(
                    tmp / "src",
                    *common_args(("127.0.0.1", orthanc.dicom_port), "ORTHANC"),
                    "--redis-url",
                    redis_server.url,
                    "--batch-files",
                    "20",
                )
                code, out = finish(proc, timeout=60)
            assert code == 0, out
            ledger = only_job(redis_server.client())
            assert assert_invariant(ledger)["stored"] == FILES
            assert orthanc.count_instances() == FILES
            yield Migrated(orthanc, redis_server, ledger, files, port)
        finally:
            orthanc.stop(wait=False)


@pytest.fixture
def one_deleted(migrated: Migrated) -> Iterator[Path]:
    """One instance deleted from Orthanc through REST; uploaded again afterwards."""
    path = migrated.files[7]
    orthanc_id = migrated.orthanc.find_instance(sop_uid(path))
    assert orthanc_id is not None
    r = requests.delete(f"{migrated.orthanc.url}/instances/{orthanc_id}", timeout=10)
    r.raise_for_status()
    assert migrated.orthanc.count_instances() == FILES - 1
    yield path
    migrated.orthanc.upload(path.read_bytes())
    assert migrated.orthanc.count_instances() == FILES


def test_verify_confirms_every_instance_after_a_migration(migrated: Migrated) -> None:
    """All 54 stored files are confirmed by C-FIND, counted per study, listed with --full."""
    code, data = migrated.verify("--full")
    assert code == 0, data
    assert data["stored"] == data["instances"] == data["confirmed"] == FILES
    assert (data["studies"], data["studies_listed"], data["missing"]) == (3, 3, 0)
    assert data["mismatched_studies"] == [] and data["missing_files"] == []
    summary = load_summary(migrated.ledger)
    assert summary is not None
    assert (summary["confirmed"], summary["missing"], summary["method"]) == ("54", "0", "c-find")
    assert load_missing(migrated.ledger) == {}


def test_verify_names_exactly_the_instance_deleted_from_orthanc(
    migrated: Migrated, one_deleted: Path
) -> None:
    """The study's count differs, so it is listed: the one missing UID and its source file."""
    code, data = migrated.verify("--sample", "0")
    assert code == 1, data
    assert (data["confirmed"], data["missing"], data["unconfirmed"]) == (FILES - 1, 1, 0)
    [missing] = data["missing_files"]
    assert missing["sop_instance_uid"] == sop_uid(one_deleted)
    assert missing["uri"] == str(one_deleted)
    [study] = data["mismatched_studies"]
    assert study["ledger"] - study["pacs"] == 1 and study["study_uid"] == missing["study_uid"]
    assert data["studies_listed"] == 1  # only the study whose count differs
    # The ledger keeps the result for reports: the one file id, with the reason.
    assert load_missing(migrated.ledger) == {missing["file_id"]: missing["reason"]}
    assert load_summary(migrated.ledger)["missing"] == "1"
    # The text output names it too, with its source.
    code, text = migrated.verify("--sample", "0", as_json=False)
    assert code == 1, text
    assert f"{missing['sop_instance_uid']}  {one_deleted}" in text
    assert f"confirmed by PACS: {FILES - 1}" in text


def test_report_lists_the_instance_missing_at_the_pacs(
    migrated: Migrated, one_deleted: Path
) -> None:
    """After `verify`, `migrator report` in every format: the confirmed count, and exactly the
    one file deleted from Orthanc (its source URI and SOP Instance UID) as missing."""
    code, data = migrated.verify("--sample", "0")
    assert code == 1, data
    uri, sop = str(one_deleted), sop_uid(one_deleted)
    reports = {}
    for fmt in ("json", "text", "csv", "html"):
        result = CliRunner().invoke(
            main,
            ["report", migrated.ledger.job_id, "--redis-url", migrated.redis.url, "--format", fmt],
        )
        assert result.exit_code == 0, result.output
        reports[fmt] = result.stdout

    report = json.loads(reports["json"])
    verification = report["verification"]
    assert (verification["stored"], verification["confirmed"]) == (FILES, FILES - 1)
    assert (verification["missing"], verification["unconfirmed"]) == (1, 0)
    assert verification["method"] == "c-find" and not verification["outdated"]
    [missing] = verification["missing_files"]
    assert (missing["uri"], missing["sop_instance_uid"]) == (uri, sop)
    assert missing["reason"] == "not found by C-FIND in its study"
    assert verification["unconfirmed_files"] == []
    assert report["totals"]["stored"] == FILES  # the ledger's counts are unchanged

    text = reports["text"]
    assert f"    Confirmed by PACS: {FILES - 1} (98.1%)\n    Missing at PACS:   1\n" in text
    assert [line for line in text.splitlines() if "missing at PACS" in line] == [
        f"  ✗ {uri}: missing at PACS: {sop} (not found by C-FIND in its study)"
    ]

    rows = list(csv.DictReader(io.StringIO(reports["csv"])))
    assert [(r["uri"], r["sop_instance_uid"], r["state"]) for r in rows] == [
        (uri, sop, "missing_at_pacs")
    ]

    page = reports["html"]
    kpi = page.split('data-kpi="confirmed by pacs">', 1)[1].split("</div></div>", 1)[0]
    assert f'<div class="v">{FILES - 1}</div>' in kpi and "1 missing" in kpi
    table = page.split('id="pacs-missing">', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr class=") == 1
    assert uri in table and sop in table


def test_storage_commitment_confirms_every_instance(migrated: Migrated) -> None:
    """N-ACTION in batches of 20; Orthanc reports each on a reverse association to us."""
    reports_before = migrated.orthanc.log_path.read_text().count("Reporting modality")
    code, data = migrated.verify(
        "--commitment",
        "--commitment-port",
        str(migrated.commitment_port),
        "--commitment-bind",
        "127.0.0.1",
        "--commitment-batch",
        "20",
    )
    assert code == 0, data
    assert (data["method"], data["committed"], data["confirmed"]) == (
        "c-find+commitment",
        FILES,
        FILES,
    )
    # 54 instances in batches of 20: three transactions, three N-EVENT-REPORTs from Orthanc.
    log = migrated.orthanc.log_path.read_text()
    assert log.count("Reporting modality") - reports_before == 3


def test_storage_commitment_failure_names_the_deleted_instance(
    migrated: Migrated, one_deleted: Path
) -> None:
    """Orthanc's report lists the deleted instance as failed (0x0112 no such object instance)."""
    code, data = migrated.verify(
        "--commitment",
        "--commitment-port",
        str(migrated.commitment_port),
        "--commitment-bind",
        "127.0.0.1",
        "--sample",
        "0",
    )
    assert code == 1, data
    assert data["committed"] == FILES - 1
    [missing] = data["missing_files"]
    assert missing["sop_instance_uid"] == sop_uid(one_deleted)


def test_unreachable_pacs_exits_3(migrated: Migrated) -> None:
    """Nothing listens on the port: 'cannot connect', and the last result stays in the ledger."""
    before = load_summary(migrated.ledger)
    code, out = migrated.verify("--port", str(free_port()))
    assert code == 3, out
    assert "cannot reach" in out
    assert load_summary(migrated.ledger) == before


def test_rejected_association_exits_4(migrated: Migrated, tmp_path: Path) -> None:
    """An Orthanc that checks the called AE rejects a wrong one (A-ASSOCIATE-RJ)."""
    strict = OrthancPeer(tmp_path / "strict", check_called_aet=True).start()
    try:
        code, out = migrated.verify("--port", str(strict.dicom_port), "--called-ae", "WRONG")
    finally:
        strict.stop(wait=False)  # its ~3 s clean stop runs in the background
    assert code == 4, out
    assert "rejected the association" in out


def test_instance_discarded_by_a_lua_filter_is_found_missing(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    """Orthanc answers 0x0000 to a C-STORE its Lua filter discards; verify names that file."""
    files = synth.write_corpus(tmp_path / "src", count=12, size="tiny", studies=2, seed=506)
    dropped = files[4]
    lua = (
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        f'  return dicom.SOPInstanceUID ~= "{sop_uid(dropped)}"\n'
        "end\n"
    )
    orthanc = OrthancPeer(tmp_path / "orthanc", lua=lua, extra={"DicomAlwaysAllowFind": True})
    orthanc.start()
    try:
        with LocalWorkers(redis_server.url, 1, logfile=str(tmp_path / "workers.log")):
            proc = start_run(
                tmp_path / "src",
                *common_args(("127.0.0.1", orthanc.dicom_port), "ORTHANC"),
                "--redis-url",
                redis_server.url,
            )
            code, out = finish(proc, timeout=60)
        assert code == 0, out  # every C-STORE was answered 0x0000
        ledger = only_job(redis_server.client())
        assert assert_invariant(ledger)["stored"] == 12
        assert orthanc.count_instances() == 11
        job = Migrated(orthanc, redis_server, ledger, files, 0)
        code, data = job.verify()
        # This Orthanc does not list our AE in DicomModalities: it aborts on the N-ACTION.
        commit_code, commit_out = job.verify("--commitment", "--commitment-timeout", "2")
    finally:
        orthanc.stop(wait=False)
    assert code == 1, data
    assert [(m["sop_instance_uid"], m["uri"]) for m in data["missing_files"]] == [
        (sop_uid(dropped), str(dropped))
    ]
    assert commit_code == 3, commit_out
    assert "registered" in commit_out


def test_back_to_back_queries_lose_no_response(migrated: Migrated) -> None:
    """600 C-FINDs on one association against a fast Orthanc: every answer complete.

    Without the reactor guard, pynetdicom 3.0.4 dropped a response in ~2 of 300 such rounds
    (a series or the final status lost: false "missing" instances, or a DIMSE timeout)."""
    config = Settings.from_dict(migrated.ledger.config())
    expected: dict[str, set[str]] = {}
    for path in migrated.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    study, sops = sorted(expected.items())[0]
    with QueryClient(config) as client:
        for _ in range(150):
            assert client.study_count(study) == len(sops)
            assert client.study_instances(study) == sops
        assert client.queries == 150 * 4  # count + series + two image-level queries


def test_verify_sockets_use_tcp_nodelay(migrated: Migrated) -> None:
    """getsockopt(TCP_NODELAY) on the live C-FIND association reads back 1."""
    config = Settings.from_dict(migrated.ledger.config())
    with QueryClient(config) as client:
        sock = client._assoc.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.study_count("1.2.3.4.5.6.7.8.9") == 0
