"""Smoke test of bench/store_bench.py: a tiny real run, every sender against storescp.

It checks that the benchmark runs end to end and that its numbers are backed by complete
transfers (every sender exited 0 and sent every file), not the numbers themselves: those depend
on the machine. The parsers that decide "sent every file" get their own checks on canned
output, because a parser that over-counts would make a failed sender look fine.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.run_bench import REPORT_NAME, RUN, SCU, STORE, _run_count
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


@pytest.mark.timeout(180)
def test_run_bench_smoke(tmp_path: Path) -> None:
    """bench/run_bench.py end to end: migrator run (embedded Redis + 2 workers), migrator store
    and storescu each sent every file, and the ratios are numbers."""
    if find_dcmtk_tool("storescp") is None or find_dcmtk_tool("storescu") is None:
        pytest.skip("DCMTK storescp/storescu is not on PATH")
    out = tmp_path / "run-bench.json"
    cmd = [sys.executable, str(REPO / "bench" / "run_bench.py"), "--corpus", f"tiny:{FILES}"]
    cmd += ["--repeat", "1", "--workers", "2", "--timeout", "120", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    corpora = {c["name"]: c for c in doc["corpora"]}
    assert set(corpora) == {PROBE_NAME, f"tiny-{FILES}"}
    for corpus in doc["corpora"]:
        want = corpus["files"]
        assert corpus["storescu_verified_files"] == want
        assert {s["sender"] for s in corpus["senders"]} == {RUN, STORE, SCU}
        for s in corpus["senders"]:
            assert s["status"] == "ok", (corpus["name"], s["sender"], s["error"])
            assert s["files"] == want and len(s["runs"]) == 1
            assert all(r["rc"] == 0 and r["files_sent"] == want for r in s["runs"]), s["runs"]
            for key in ("files_per_s", "mb_per_s", "run_over_x"):
                value = s[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, s)
        for key in ("run_over_storescu", "run_over_store"):
            value = corpus["ratios"][key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, corpus)
        # One fresh --state-dir per run: its job started after the launch (not resumed).
        (phases,) = corpus["run_phases"]
        assert all(v >= 0 for v in phases.values()) and phases["job_s"] > 0, phases
    assert f"tiny-{FILES}: {FILES} files" in proc.stdout
    assert "migrator run / X" in proc.stdout

    # The report parser: a partial run must not count as every file sent (a resumed one is
    # caught by the start-time check in measure(), shown by run_phases above).
    report = tmp_path / REPORT_NAME
    totals = {"planned": 40, "stored": 38, "failed": 2}
    report.write_text(json.dumps({"totals": totals, "fatal": None, "exit_status": 1}))
    assert _run_count(_res("", rc=1), tmp_path, 40) == (38, "2 failed; report exit_status 1")
    report.write_text(
        json.dumps({"totals": {**totals, "stored": 40, "failed": 0}, "exit_status": 0})
    )
    assert _run_count(_res(""), tmp_path, 40) == (40, "")
    report.unlink()
    assert _run_count(_res(""), tmp_path, 40)[0] is None


@pytest.mark.timeout(180)
def test_scale_bench_smoke(tmp_path: Path) -> None:
    """bench/scale.py end to end at tiny sizes: a manifest planned into a real Redis (twice:
    default and a small listpack limit), then files sent by real workers with and without a
    rate limit, and a MONITOR pass; the JSON has every figure the report is built on."""
    if find_dcmtk_tool("storescp") is None:
        pytest.skip("DCMTK storescp is not on PATH")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli not on PATH")
    lines, files, monitored = 3000, 200, 100
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--lines", str(lines)]
    cmd += ["--files", str(files), "--attribution-files", str(monitored), "--idle-seconds", "1"]
    cmd += ["--timeout", "120", "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] is True

    def positive(value: object) -> bool:
        return isinstance(value, int | float) and math.isfinite(value) and value > 0

    assert [p["hash_max_listpack_entries"] for p in doc["plans"]][1] == 16
    for plan in doc["plans"]:
        assert plan["planned"] == lines and plan["batches_queued"] > 0
        p, r = plan["planner"], plan["redis"]
        for value in (p["wall_s"], p["lines_per_s"], p["cpu_s"], p["peak_rss_mb"]):
            assert positive(value), plan
        for value in (r["mb_per_million_files"], r["ledger_bytes_per_file"], r["cpu_us_per_file"]):
            assert positive(value), r
        assert positive(r["queue_bytes_per_file"]) and positive(r["queue_bytes_per_batch"])
        assert r["groups"]["ledger: dedup index"]["keys"] == r["dedup_buckets"]["buckets"] > 0
        assert r["commands"]["hsetnx"] == lines  # one HSETNX per line, inside the batch write

    sends = {s["name"]: s for s in doc["sends"]}
    assert set(sends) == {"unlimited", "rate-limited", "monitor"}
    for s in sends.values():
        want = monitored if s["name"] == "monitor" else files
        assert s["counts"]["stored"] == want == s["counts"]["planned"], s["counts"]
        for key in ("send_s", "files_per_s", "commands_per_file", "redis_cpu_us_per_file"):
            assert positive(s[key]), (key, s)
    # The limiter runs one script (with TIME inside it) per lease of up to LEASE_FILES files;
    # unlimited, it is cached.
    from workers.batch import LEASE_FILES

    assert files / LEASE_FILES <= sends["rate-limited"]["commands"]["time"] < files
    assert sends["unlimited"]["commands"].get("time", 0) < files
    assert sends["unlimited"]["idle"]["seconds"] == 1
    attribution = sends["monitor"]["attribution"]
    assert positive(attribution["lua_per_file"]) and positive(attribution["evalsha_per_file"])
    assert attribution["lua"].get("time", 0) >= monitored / LEASE_FILES  # inside the limiter
    assert len(doc["targets"]) == 5 and all(isinstance(t["holds"], bool) for t in doc["targets"])
    assert "### targets (issue 9)" in proc.stdout


def test_scale_monitor_attribution(tmp_path: Path) -> None:
    """MONITOR lines are split by source: ``[0 lua]`` inside a script, anything else a client;
    the bench's own commands are taken off."""
    from bench.scale import attribute, key_group

    log = tmp_path / "monitor.txt"
    log.write_text(
        "OK\n"
        '1764448000.000001 [0 127.0.0.1:5000] "evalsha" "abc" "1" "k"\n'
        '1764448000.000002 [0 lua] "time"\n'
        '1764448000.000003 [0 lua] "hmget" "k" "files"\n'
        '1764448000.000004 [0 127.0.0.1:5001] "script" "load" "return 1"\n'
        '1764448000.000005 [0 127.0.0.1:5002] "hgetall" "counts"\n'
    )
    out = attribute(log, Counter({"hgetall": 1, "config|resetstat": 1}), 1)
    assert out["client"] == {"evalsha": 1, "script|load": 1}
    assert out["lua"] == {"time": 1, "hmget": 1}
    assert key_group("migrator:job:{j}:pl:abcd", "j") == "ledger: dedup index"
    assert key_group("migrator.batches", "j") == key_group("unacked_index", "j") == "queue"
