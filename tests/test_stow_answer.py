"""How a STOW-RS answer becomes each file's outcome (migrator/dicomweb/response.py and
StowConnection._per_instance): the DICOM JSON bodies PS3.18 10.5.3 describes, with the
reason codes classified as C-STORE statuses are. Pure functions: the behaviour against a real
server is in tests/test_stow.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migrator import status as st
from migrator.dicomweb.response import BadAnswer, InstanceAnswer, parse
from migrator.transfer.stow import StowConnection, _Pending, _retry_after


def _ref(uid: str, **extra: object) -> dict[str, object]:
    item: dict[str, object] = {"00081155": {"vr": "UI", "Value": [uid]}}
    item.update(extra)
    return item


BODY = json.dumps(
    {
        "00081199": {
            "vr": "SQ",
            "Value": [_ref("1.1"), _ref("1.2", **{"00081196": {"vr": "US", "Value": [0xB000]}})],
        },
        "00081198": {
            "vr": "SQ",
            "Value": [
                _ref("1.3", **{"00081197": {"vr": "US", "Value": [0xA700]}}),
                _ref("1.4", **{"00081197": {"vr": "US", "Value": [0xC000]}}),
                _ref("1.5"),
            ],
        },
    }
).encode()


def test_each_instance_of_a_202_answer_is_read() -> None:
    assert parse(BODY) == {
        "1.1": InstanceAnswer(True, 0x0000),
        "1.2": InstanceAnswer(True, 0xB000),
        "1.3": InstanceAnswer(False, 0xA700),
        "1.4": InstanceAnswer(False, 0xC000),
        "1.5": InstanceAnswer(False, None),
    }


@pytest.mark.parametrize(
    ("uid", "outcome", "status", "words"),
    [
        ("1.1", st.Outcome.STORED, 0x0000, ""),
        ("1.2", st.Outcome.WARNING, 0xB000, "WarningReason"),
        ("1.3", st.Outcome.TRANSIENT, 0xA700, "0xA700 Out of resources (STOW-RS FailureReason)"),
        ("1.4", st.Outcome.PERMANENT, 0xC000, "0xC000 Cannot understand"),
        ("1.5", st.Outcome.PERMANENT, None, "without a FailureReason"),
        ("9.9", st.Outcome.PERMANENT, None, "neither"),
    ],
)
def test_reasons_map_to_the_outcomes_of_dimse_statuses(
    uid: str, outcome: st.Outcome, status: int | None, words: str
) -> None:
    """0xA7xx is retried, 0xCxxx fails, a WarningReason is stored with a warning: as the
    same codes in a C-STORE response."""
    answers = parse(BODY)
    result = StowConnection._per_instance(
        _Pending(uid, 100, "1.2.840.10008.1.2.1", ""), answers.get(uid), "neither", 0.1
    )
    assert (result.outcome, result.status) == (outcome, status)
    assert words in result.error


def test_a_body_that_is_not_dicom_json_is_refused() -> None:
    with pytest.raises(BadAnswer):
        parse(b"<html>oops</html>")
    assert parse(b"") == {}


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) == 0.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert _retry_after("86400") == 300.0  # capped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--host (DIMSE) or --dicomweb URL"),
        (["--dicomweb", "http://user:pw@pacs/dicom-web"], "no user or password in the URL"),
        (["--dicomweb", "ftp://pacs/dicom-web"], "expected the service's root URL"),
        (["--dicomweb", "http://pacs/dw", "--transfer-syntax", "explicit"], "applies to DIMSE"),
        (["--dicomweb", "http://pacs/dw", "--dicomweb-token-file", "/nonexistent"], "/nonexistent"),
        (["--host", "pacs", "--dicomweb-token-file", "/etc/hostname"], "need --dicomweb"),
    ],
)
def test_a_bad_destination_is_a_usage_error(args: list[str], message: str, tmp_path: Path) -> None:
    """Exit 2 before anything is sent, with what to do; the password is not echoed."""
    proc = subprocess.run(
        [sys.executable, "-m", "migrator", "store", "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "pw@" not in proc.stderr
