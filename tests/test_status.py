"""DIMSE status classification (PS3.4 Annex B.2.3, PS3.7 Annex C): what each C-STORE answer
means and what the sender does about it.

The table tests pin ``migrator.status`` itself; the peer tests send to a real receiver
(`migrator scp --fail-status S`, our fault-injecting SCP) that answers each warning and
each class of failure, and check what a user checks: the exit code, the summary and the
report (state, warning flag, status, attempts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator import status as st
from migrator import synth
from migrator.exitcodes import ExitStatus
from tests.peers.migrator_scp import start_migrator_scp
from tests.storehelpers import load_report, run_migrator, sop_uid

# -- the table ---------------------------------------------------------------------------

# PS3.4 B.2.3 (Storage Service Class) and PS3.7 C (general statuses). Warnings: 0001
# (optional attributes not supported, PS3.7 C.4.x), 0107, 0116 (PS3.7 C), B000, B006, B007
# (Storage) and any other Bxxx. Out of resources: A7xx, and 0213 (resource limitation).
CLASSES: dict[st.Outcome, list[int]] = {
    st.Outcome.STORED: [0x0000],
    st.Outcome.WARNING: [0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007, 0xB001, 0xB123, 0xBFFF],
    st.Outcome.TRANSIENT: [0xA700, 0xA701, 0xA7FF, 0xA710, 0x0213],
    st.Outcome.PERMANENT: [
        0xA900,  # data set does not match SOP class
        0xA9FF,
        0xC000,  # cannot understand
        0xC001,
        0xCFFF,
        0xC211,
        0x0110,  # processing failure
        0x0111,  # duplicate SOP instance
        0x0117,
        0x0119,
        0x0122,  # SOP class not supported
        0x0124,  # not authorized
        0x0210,
        0x0211,
        0x0212,
        0x0214,  # next to 0213, not it
        0x0002,  # next to 0001, not it
        0x0106,
        0xA600,  # next to A7xx, not it
        0xA800,
        0xAF00,
        0xFE00,  # cancel: not stored
        0xFF00,  # pending: not an answer a C-STORE may end with
        0x0F00,
    ],
}


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(code, outcome) for outcome, codes in CLASSES.items() for code in codes],
    ids=lambda v: f"0x{v:04X}" if isinstance(v, int) else str(v),
)
def test_each_status_is_classified_as_the_standard_says(code: int, outcome: st.Outcome) -> None:
    assert st.classify(code) is outcome


def test_no_answer_is_an_unknown_outcome() -> None:
    assert st.classify(None) is st.Outcome.UNKNOWN
    assert st.meaning(None) == "No response (association aborted or timed out)"
    assert st.fmt(None) == "none"


# The meanings a report prints next to a status (PS3.4 B.2.3, PS3.7 C).
MEANINGS = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP instance",
    0x0117: "Invalid object instance",
    0x0119: "Class-instance conflict",
    0x0122: "SOP class not supported",
    0x0124: "Not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xA700: "Out of resources",
    0xA900: "Data set does not match SOP class",
    0xC000: "Cannot understand",
    0xC211: "Unable to process (the SCP's handler raised an error)",
    0xFE00: "Cancel",
    # codes outside the table: by their class
    0xA7FE: "Out of resources",
    0xA712: "Out of resources",
    0xA701: "Out of resources",  # odd codes too: the class is the high byte, all of it
    0xA9FE: "Data set does not match SOP class",
    0xA9FF: "Data set does not match SOP class",
    0xC123: "Cannot understand",
    0xB123: "Warning",
    0xB001: "Warning",
    0x0106: "Failure",
    0xA800: "Failure",
    0xFF00: "Failure",
    0x0F00: "Failure",
}


@pytest.mark.parametrize(("code", "text"), MEANINGS.items(), ids=lambda v: str(v))
def test_each_status_has_its_meaning(code: int, text: str) -> None:
    assert st.meaning(code) == text


def test_statuses_print_as_four_hex_digits() -> None:
    assert [st.fmt(c) for c in (0, 1, 0xA700, 0xC211)] == ["0x0000", "0x0001", "0xA700", "0xC211"]


# -- a receiver that answers each class ---------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.write_corpus(tmp_path_factory.mktemp("status-corpus"), count=3, size="tiny")


def _store_to(tmp: Path, corpus: list[Path], *scp_args: str) -> tuple[int, str, dict, set[str]]:  # type: ignore[type-arg]
    """`migrator store` the corpus to `migrator scp` with ``scp_args``: exit code, output,
    the JSON report, the SOP Instance UIDs the receiver wrote."""
    with start_migrator_scp(tmp / "scp", *scp_args) as scp:
        report = tmp / "report.json"
        proc = run_migrator(
            "store",
            "--host",
            scp.host,
            "--port",
            str(scp.port),
            "--called-ae",
            scp.ae_title,
            "--retries",
            "2",
            "--report",
            report,
            *corpus,
            timeout=60,
        )
        written = {sop_uid(p) for p in scp.output_dir.rglob("*.dcm")}
        scp.stop()
    return proc.returncode, proc.stdout + proc.stderr, load_report(report), written


@pytest.mark.parametrize("code", ["0001", "0107", "B000", "B006", "B007"])
def test_a_warning_is_stored_with_the_warning_shown(
    tmp_path: Path, corpus: list[Path], code: str
) -> None:
    """A warning means the PACS kept the instance (maybe coerced): stored, not retried, not
    failed, and the report says which warning (PS3.4 B.2.3)."""
    rc, out, report, _ = _store_to(tmp_path, corpus, "--fail-status", code)
    assert rc == ExitStatus.OK, out
    assert report["totals"]["stored"] == 3 and report["totals"]["warnings"] == 3, out
    for f in report["files"]:
        assert (f["state"], f["warning"], f["status"], f["attempts"]) == (
            "stored",
            True,
            f"0x{code}",
            1,
        ), f
    assert "Warnings: 3" in " ".join(out.split()), out


@pytest.mark.parametrize("code", ["A700", "A7FF", "0213"])
def test_out_of_resources_is_retried_on_a_fresh_association(
    tmp_path: Path, corpus: list[Path], code: str
) -> None:
    """0xA7xx and 0x0213 are transient: the two files refused first are sent again and
    stored; nothing fails."""
    rc, out, report, written = _store_to(
        tmp_path, corpus, "--fail-status", code, "--fail-first", "2"
    )
    assert rc == ExitStatus.OK, out
    assert written == {sop_uid(p) for p in corpus}
    assert sorted(f["attempts"] for f in report["files"]) == [1, 2, 2], report["files"]
    assert all(f["state"] == "stored" and not f["warning"] for f in report["files"])


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        ("0110", "Processing failure"),
        ("0122", "SOP class not supported"),
        ("0124", "Not authorized"),
        ("A900", "Data set does not match SOP class"),
        ("A801", "Failure"),
        ("C211", "Unable to process"),
        ("0212", "Mistyped argument"),
    ],
)
def test_a_failure_status_fails_the_file_at_once_with_its_meaning(
    tmp_path: Path, corpus: list[Path], code: str, meaning: str
) -> None:
    """Any other failure is permanent: the files it answers fail after one attempt, with
    the status and its meaning; the others are stored."""
    rc, out, report, written = _store_to(
        tmp_path, corpus, "--fail-status", code, "--fail-first", "2"
    )
    assert rc == ExitStatus.PARTIAL_FAILURE, out
    failed = [f for f in report["files"] if f["state"] == "failed"]
    assert len(failed) == 2, report["files"]
    assert all(f["status"] == f"0x{code}" and f["attempts"] == 1 for f in failed), failed
    stored = [f for f in report["files"] if f["state"] == "stored"]
    assert written == {f["sop_instance_uid"] for f in stored} and len(stored) == 1
    assert f"0x{code} {meaning}" in out, out
