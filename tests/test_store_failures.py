"""`migrator store` when the PACS misbehaves: statuses, aborts, rejections, no listener.

The misbehaving PACS is our own `migrator scp` with its fault-injection flags (a pynetdicom
SCP underneath), DCMTK storescp, or Orthanc with called-AE checking on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from migrator import synth
from migrator.exitcodes import ExitStatus
from migrator.netutil import free_port
from tests.peers.dcmtk import StoreScpPeer
from tests.peers.migrator_scp import RunningScp, start_migrator_scp
from tests.peers.orthanc import OrthancPeer
from tests.storehelpers import load_report, run_migrator, sop_uid


def _received(scp: RunningScp) -> set[str]:
    return {sop_uid(p) for p in scp.output_dir.rglob("*.dcm")}


def _store(scp_port: int, folder: Path, *extra: str | Path, called: str = "MIGRATOR-SCP"):  # type: ignore[no-untyped-def]
    return run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        scp_port,
        "--called-ae",
        called,
        "--dir",
        folder,
        *extra,
    )


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return synth.write_corpus(tmp_path / "corpus", count=12, size="tiny")


# -j 3: three associations driven from one thread (send on each, collect the answers).
@pytest.mark.parametrize("jobs", ["1", "3"])
def test_transient_a700_twice_then_success_stores_everything(
    tmp_path: Path, corpus: list[Path], jobs: str
) -> None:
    with start_migrator_scp(tmp_path / "scp", "--fail-status", "A700", "--fail-first", "2") as scp:
        report = tmp_path / "r.json"
        proc = _store(scp.port, tmp_path / "corpus", "--report", report, "-j", jobs)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "✓ All files stored successfully!" in proc.stdout
        assert _received(scp) == {sop_uid(p) for p in corpus}
        data = load_report(report)
        assert sum(f["attempts"] for f in data["files"]) == len(corpus) + 2
        scp.stop()


@pytest.mark.parametrize(
    ("status", "meaning"),
    [("A900", "Data set does not match SOP class"), ("C000", "Cannot understand")],
)
def test_permanent_status_fails_those_files_with_the_status_shown(
    tmp_path: Path, corpus: list[Path], status: str, meaning: str
) -> None:
    with start_migrator_scp(tmp_path / "scp", "--fail-status", status, "--fail-every", "3") as scp:
        report = tmp_path / "r.json"
        proc = _store(scp.port, tmp_path / "corpus", "--report", report)
        assert proc.returncode == ExitStatus.PARTIAL_FAILURE, proc.stdout + proc.stderr
        assert "⚠ Storage completed with 4 failures" in proc.stdout
        assert f"0x{status} {meaning}" in proc.stdout
        data = load_report(report)
        failed = [f for f in data["files"] if f["state"] == "failed"]
        assert len(failed) == 4 and all(f["status"] == f"0x{status}" for f in failed)
        # Permanent failures are not retried.
        assert all(f["attempts"] == 1 for f in failed)
        assert len(_received(scp)) == len(corpus) - 4
        scp.stop()


def test_out_of_resources_forever_runs_out_of_retries_and_fails(
    tmp_path: Path, corpus: list[Path]
) -> None:
    with start_migrator_scp(tmp_path / "scp", "--fail-status", "A700") as scp:
        report = tmp_path / "r.json"
        proc = _store(scp.port, tmp_path / "corpus", "--report", report, "--retries", "2")
        assert proc.returncode == ExitStatus.PARTIAL_FAILURE
        data = load_report(report)
        assert data["totals"]["failed"] == len(corpus)
        assert all(f["attempts"] == 3 and f["status"] == "0xA700" for f in data["files"])
        assert "0xA700 Out of resources" in proc.stdout
        scp.stop()


# (12 files over 3 associations: 4 each, so abort after 2 for the aborts to happen)
@pytest.mark.parametrize(("jobs", "abort_after"), [("1", "4"), ("3", "2")])
def test_association_aborted_after_n_stores_is_reopened_and_all_stored(
    tmp_path: Path, corpus: list[Path], jobs: str, abort_after: str
) -> None:
    with start_migrator_scp(tmp_path / "scp", "--abort-after", abort_after) as scp:
        report = tmp_path / "r.json"
        proc = _store(scp.port, tmp_path / "corpus", "--report", report, "-j", jobs)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert _received(scp) == {sop_uid(p) for p in corpus}
        data = load_report(report)
        # Every (n+1)th store on an association is aborted: those files needed a second try.
        assert sum(f["attempts"] for f in data["files"]) > len(corpus)
        scp.stop()


def test_wrong_called_ae_against_orthanc_is_a_distinct_exit_code(
    orthanc_factory: Callable[..., OrthancPeer], corpus: list[Path], tmp_path: Path
) -> None:
    orthanc = orthanc_factory(check_called_aet=True)
    t0 = time.monotonic()
    proc = _store(orthanc.dicom_port, tmp_path / "corpus", called="NOT-ORTHANC")
    assert time.monotonic() - t0 < 20, "a permanent rejection must not be retried for long"
    assert proc.returncode == ExitStatus.ASSOCIATION_REJECTED, proc.stdout + proc.stderr
    assert "called AE title not recognized" in proc.stdout
    assert f"Failed:      {len(corpus)}" in proc.stdout
    assert orthanc.count_instances() == 0


def test_closed_port_gives_a_clear_message_within_the_timeout(
    tmp_path: Path, corpus: list[Path]
) -> None:
    port = free_port()
    t0 = time.monotonic()
    proc = _store(port, tmp_path / "corpus", "--retries", "2", "--timeout", "20s")
    assert time.monotonic() - t0 < 20
    assert proc.returncode == ExitStatus.CANNOT_CONNECT, proc.stdout + proc.stderr
    assert "connection refused" in proc.stdout
    assert f"Failed:      {len(corpus)}" in proc.stdout


def test_refused_associations_fail_fast(tmp_path: Path, corpus: list[Path]) -> None:
    with start_migrator_scp(tmp_path / "scp", "--refuse") as scp:
        proc = _store(scp.port, tmp_path / "corpus")
        assert proc.returncode == ExitStatus.ASSOCIATION_REJECTED
        assert "association rejected" in proc.stdout
        scp.stop()


def test_slow_pacs_beyond_dimse_timeout_is_retried_then_reported(tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "few", count=4, size="tiny")
    with start_migrator_scp(tmp_path / "scp", "--response-delay", "1500") as scp:
        report = tmp_path / "r.json"
        proc = _store(
            scp.port,
            tmp_path / "few",
            "--dimse-timeout",
            "0.5s",
            "-j",
            "4",
            "--retries",
            "1",
            "--report",
            report,
        )
        assert proc.returncode == ExitStatus.PARTIAL_FAILURE
        data = load_report(report)
        assert len(data["files"]) == len(files)
        # The PACS may well have stored them: the outcome is unknown, and said so.
        assert all("outcome unknown" in f["reason"] for f in data["files"])
        assert all("DIMSE timeout" in f["reason"] for f in data["files"])
        assert all(f["attempts"] == 2 for f in data["files"])
        scp.stop()


def test_thousands_of_tiny_files_to_a_fast_peer_lose_no_response(
    storescp_factory: Callable[..., StoreScpPeer], tmp_path: Path
) -> None:
    """The pynetdicom send/reactor race (BENCHMARKS.md) cannot happen here: no reactor."""
    peer = storescp_factory(ignore=True)
    synth.write_corpus(tmp_path / "tiny", count=3000, size="tiny")
    report = tmp_path / "r.json"
    proc = run_migrator(
        "store",
        "--host",
        "127.0.0.1",
        "--port",
        peer.port,
        "--dir",
        tmp_path / "tiny",
        "-j",
        "4",
        "--report",
        report,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = load_report(report)
    assert data["totals"]["stored"] == 3000
    assert all(f["attempts"] == 1 for f in data["files"]), "no response may go missing"


def test_overall_timeout_ends_the_run_and_reports_unsent_files(tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "slow", count=20, size="tiny")
    with start_migrator_scp(tmp_path / "scp", "--response-delay", "300") as scp:
        report = tmp_path / "r.json"
        t0 = time.monotonic()
        proc = _store(scp.port, tmp_path / "slow", "--timeout", "1s", "--report", report)
        elapsed = time.monotonic() - t0
        assert proc.returncode == ExitStatus.PARTIAL_FAILURE, proc.stdout + proc.stderr
        assert elapsed < 10
        data = load_report(report)
        assert len(data["files"]) == len(files)
        late = [f for f in data["files"] if "overall timeout" in f["reason"]]
        assert late and data["totals"]["stored"] >= 1
        assert data["totals"]["stored"] + len(late) == len(files)
        scp.stop()


def test_store_options_come_from_environment_variables(
    storescp: StoreScpPeer, tmp_path: Path
) -> None:
    synth.write_corpus(tmp_path / "env", count=2, size="tiny")
    proc = run_migrator(
        "store",
        env={
            "MIGRATOR_HOST": "127.0.0.1",
            "MIGRATOR_PORT": str(storescp.port),
            "MIGRATOR_CALLED_AE": "STORESCP",
            "MIGRATOR_DIR": str(tmp_path / "env"),
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(storescp.received_files()) == 2


def test_bad_arguments_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    proc = run_migrator("store", "--host", "127.0.0.1", "--transfer-syntax", "bogus", tmp_path)
    assert proc.returncode == ExitStatus.BAD_CONFIG
    assert "unknown transfer syntax 'bogus'" in proc.stderr
    proc = run_migrator("store", "--host", "127.0.0.1")
    assert proc.returncode == ExitStatus.BAD_CONFIG
    assert "nothing to send" in proc.stderr
