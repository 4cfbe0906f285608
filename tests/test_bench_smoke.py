"""Smoke test of bench/store_bench.py: a tiny real run, every sender against storescp.

It checks that the benchmark runs end to end and that its numbers are backed by complete
transfers (every sender exited 0 and sent every file), not the numbers themselves: those depend
on the machine. The parsers that decide "sent every file" get their own checks on canned
output, because a parser that over-counts would make a failed sender look fine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.store_bench import (
    ALL_SENDERS,
    PROBE_NAME,
    ProcResult,
    _dcmsend_count,
    _migrator_count,
    _pynetdicom_count,
    _storescu_quiet_count,
    find_dcmtk_tool,
    storescu_verbose_count,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "store_bench.py"
FILES, PYNETDICOM_FILES = 40, 20


@pytest.mark.timeout(120)
def test_store_bench_smoke(tmp_path: Path) -> None:
    # PATH lookup alone could find pynetdicom's own `storescp` script in the venv's bin.
    if find_dcmtk_tool("storescp") is None:
        pytest.skip("DCMTK storescp is not on PATH")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--corpus", f"tiny:{FILES}", "--repeat", "1"]
    cmd += ["--pynetdicom-max-files", str(PYNETDICOM_FILES), "--timeout", "60", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    # dcmsend ships with storescp in Debian's dcmtk; it is the only sender allowed to be missing.
    assert set(doc["skipped"]) <= {"dcmsend"}
    expected_senders = set(ALL_SENDERS) - set(doc["skipped"])
    corpora = {c["name"]: c for c in doc["corpora"]}
    assert set(corpora) == {PROBE_NAME, f"tiny-{FILES}"}
    assert corpora[f"tiny-{FILES}"]["files"] == FILES

    for corpus in doc["corpora"]:
        assert {s["sender"] for s in corpus["senders"]} == expected_senders
        assert corpus["storescu_verified_files"] == corpus["files"]
        for s in corpus["senders"]:
            assert s["status"] == "ok", (corpus["name"], s["sender"], s["error"])
            want = corpus["files"]
            if s["sender"] == "pynetdicom":
                want = min(want, PYNETDICOM_FILES)
            assert s["files"] == want
            assert len(s["runs"]) == 1
            assert all(r["rc"] == 0 and r["files_sent"] == want for r in s["runs"]), s["runs"]
            for key in ("files_per_s", "migrator_j1_over_x", "migrator_j4_over_x"):
                value = s[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, s)
    assert "migrator -j1 / X" in proc.stdout


def _res(output: str, rc: int = 0) -> ProcResult:
    return ProcResult(rc, 0.1, output)


def test_count_parsers_do_not_over_count(tmp_path: Path) -> None:
    summary = "  Total Files: 40\n  Successful:  38\n  Failed:      2\n"
    assert _migrator_count(_res(summary, 1), tmp_path, 40) == (38, "2 failed")
    assert _migrator_count(_res("✓ All files stored successfully!\n"), tmp_path, 40)[0] is None

    assert _storescu_quiet_count(_res(""), tmp_path, 40) == (40, "")
    assert _storescu_quiet_count(_res("", rc=167), tmp_path, 40)[0] is None
    assert _storescu_quiet_count(_res("W: not a DICOM file: x\n"), tmp_path, 40)[0] is None
    ok = "I: Received Store Response (Success)\n"
    assert storescu_verbose_count(ok * 3 + "I: Received Store Response (Refused)\n") == 3

    # dcmsend exits 0 when every store is refused: only its report tells.
    (tmp_path / "dcmsend-report.txt").write_text("  * with status REFUSED  : 40\n")
    assert _dcmsend_count(_res(""), tmp_path, 40)[0] == 0
    (tmp_path / "dcmsend-report.txt").write_text("  * with status SUCCESS  : 40\n")
    assert _dcmsend_count(_res(""), tmp_path, 40) == (40, "")

    line = "I: Received Store Response (Status: {} - {})\n"
    log = line.format("0x0000", "Success") * 2 + line.format("0xA700", "Failure")
    assert _pynetdicom_count(_res(log), tmp_path, 3)[0] == 2
