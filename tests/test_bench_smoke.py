"""Smoke test of bench/store_bench.py: a tiny real run, every sender against storescp.

It checks that the benchmark runs end to end and that its numbers are backed by complete
transfers (every sender exited 0 and sent every file) and by a measured process tree (CPU
seconds above 0, ``migrator run``'s orphaned pool children reaped), not the numbers themselves:
those depend on the machine. The parsers that decide "sent every file" get their own checks on
canned output, because a parser that over-counts would make a failed sender look fine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.corpora import PROBE_NAME
from bench.measure import ProcResult, Spawner
from bench.receiver import find_dcmtk_tool
from bench.senders import (
    ALL_SENDERS,
    REPORT_NAME,
    RUN,
    dcmsend_count,
    migrator_count,
    pynetdicom_cli_count,
    pynetdicom_tuned_count,
    run_count,
    storescu_quiet_count,
    storescu_verbose_count,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "store_bench.py"
FILES, PYNETDICOM_CLI_FILES = 40, 10


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_store_bench_smoke(tmp_path: Path) -> None:
    """Every sender, the 1-file probe and 40 tiny files, one repetition, no RSS probe: each
    sender sent every file, with CPU seconds and peak RSS measured, and ratios computed."""
    # PATH lookup alone could find pynetdicom's own `storescp` script in the venv's bin.
    if find_dcmtk_tool("storescp") is None:
        pytest.skip("DCMTK storescp is not on PATH")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--corpus", f"tiny:{FILES}", "--repeat", "1"]
    cmd += ["--senders", ",".join(ALL_SENDERS), "--run-workers", "2", "--no-rss-probe"]
    cmd += ["--pynetdicom-max-files", str(PYNETDICOM_CLI_FILES), "--timeout", "60"]
    cmd += ["--json", str(out)]
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
    assert doc["rss_probe"] is None

    for corpus in doc["corpora"]:
        assert {s["sender"] for s in corpus["senders"]} == expected_senders
        assert corpus["storescu_verified_files"] == corpus["files"]
        for s in corpus["senders"]:
            assert s["status"] == "ok", (corpus["name"], s["sender"], s["error"])
            want = corpus["files"]
            if s["sender"] == "pynetdicom-cli":
                want = min(want, PYNETDICOM_CLI_FILES)
            assert s["files"] == want
            (run,) = s["runs"]
            assert run["rc"] == 0 and run["files_sent"] == want, run
            assert run["left_running"] == 0, run
            for key in ("files_per_s", "mb_per_s", "cpu_s", "peak_rss_mb", "x_best_peer"):
                assert _positive(s[key]), (key, s)
            # The spawner's own ~10 MB is the floor; a sender forked by the bench would read
            # the bench's RSS instead, ~55 MB, even for DCMTK.
            if s["sender"] in ("storescu", "dcmsend"):
                assert s["peak_rss_mb"] < 40, s
        by_name = {s["sender"]: s for s in corpus["senders"]}
        # Whether the worker forked its pool children before so small a job ended depends on
        # timing (`run` sends batches itself while its worker boots); when it did, they are
        # re-parented to the spawner and reaped there (test below), none left running.
        assert by_name[RUN]["runs"][0]["left_running"] == 0, by_name[RUN]["runs"]
        phases = by_name[RUN]["phases_median"]
        assert all(v >= 0 for v in phases.values()) and phases["job_s"] > 0, phases
    goals = {(g["sender"], g["corpus"]) for g in doc["goals"]}
    assert goals == {(m, f"tiny-{FILES}") for m in ("migrator-j1", "migrator-j4", RUN)}
    assert all(isinstance(g["met"], bool) and _positive(g["value"]) for g in doc["goals"])
    assert f"tiny-{FILES}: {FILES} files" in proc.stdout
    assert "× best peer" in proc.stdout and "### goals" in proc.stdout


def _res(output: str, rc: int = 0, started_at: float = 0.0) -> ProcResult:
    return ProcResult(rc, 0.1, output, started_at)


def test_count_parsers_do_not_over_count(tmp_path: Path) -> None:
    summary = "  Total Files: 40\n  Successful:  38\n  Failed:      2\n"
    assert migrator_count(_res(summary, 1), tmp_path, 40) == (38, "2 failed")
    assert migrator_count(_res("✓ All files stored successfully!\n"), tmp_path, 40)[0] is None

    assert storescu_quiet_count(_res(""), tmp_path, 40) == (40, "")
    assert storescu_quiet_count(_res("", rc=167), tmp_path, 40)[0] is None
    assert storescu_quiet_count(_res("W: not a DICOM file: x\n"), tmp_path, 40)[0] is None
    ok = "I: Received Store Response (Success)\n"
    assert storescu_verbose_count(ok * 3 + "I: Received Store Response (Refused)\n") == 3

    # dcmsend exits 0 when every store is refused: only its report tells.
    (tmp_path / "dcmsend-report.txt").write_text("  * with status REFUSED  : 40\n")
    assert dcmsend_count(_res(""), tmp_path, 40)[0] == 0
    (tmp_path / "dcmsend-report.txt").write_text("  * with status SUCCESS  : 40\n")
    assert dcmsend_count(_res(""), tmp_path, 40) == (40, "")

    line = "I: Received Store Response (Status: {} - {})\n"
    log = line.format("0x0000", "Success") * 2 + line.format("0xA700", "Failure")
    assert pynetdicom_cli_count(_res(log), tmp_path, 3)[0] == 2

    tuned = "pynetdicom-tuned: stored {} of {} files, failed {}\n"
    assert pynetdicom_tuned_count(_res(tuned.format(40, 40, 0)), tmp_path, 40) == (40, "")
    assert pynetdicom_tuned_count(_res(tuned.format(38, 40, 2), 1), tmp_path, 40) == (
        38,
        "2 failed",
    )
    assert pynetdicom_tuned_count(_res("Traceback ...\n", 1), tmp_path, 40)[0] is None


def test_run_report_parser(tmp_path: Path) -> None:
    """A partial ``migrator run`` must not count as every file sent, nor a resumed one (its job
    started before this run was launched: it sent nothing)."""
    report = tmp_path / REPORT_NAME
    totals = {"planned": 40, "stored": 38, "failed": 2}
    doc = {"totals": totals, "fatal": None, "exit_status": 1, "started": 1000.0}
    report.write_text(json.dumps(doc))
    assert run_count(_res("", 1, 999.0), tmp_path, 40) == (38, "2 failed; report exit_status 1")
    doc.update(totals={**totals, "stored": 40, "failed": 0}, exit_status=0)
    report.write_text(json.dumps(doc))
    assert run_count(_res("", 0, 999.0), tmp_path, 40) == (40, "")
    stored, note = run_count(_res("", 0, 1010.0), tmp_path, 40)
    assert stored == 0 and "resumed" in note
    report.unlink()
    assert run_count(_res(""), tmp_path, 40)[0] is None


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
    from migrator.transfer.leases import LEASE_FILES

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


ORPHAN = """
import os, time
if os.fork() == 0:  # burns 0.3 s of CPU and exits; its parent never waits for it
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    os._exit(0)
time.sleep(1.0)
"""


def test_the_spawner_reaps_orphans_and_counts_their_cpu() -> None:
    """What `migrator run` leaves behind (pool children of a SIGKILLed worker) is counted: a
    child whose parent exits without waiting for it comes back to the spawner."""
    spawner = Spawner().start()
    try:
        if not spawner.subreaper:
            pytest.skip("no PR_SET_CHILD_SUBREAPER here")
        result = spawner.run([sys.executable, "-c", ORPHAN], dict(os.environ), timeout=30)
    finally:
        spawner.stop()
    assert result.rc == 0, result.output
    assert (result.orphans, result.left_running) == (1, 0)
    assert result.cpu_s >= 0.25


@pytest.mark.timeout(60)
def test_latency_relay_delays_each_way_and_counts_connections() -> None:
    """bench/latency_relay.py: a C-ECHO through it pays the round trips it adds (TCP
    handshake upstream, A-ASSOCIATE, C-ECHO, A-RELEASE: ≥ 3 × 2 × delay), and it counts the
    connections that were open at once. Timed in this process, best of three each way: a
    `migrator echo` subprocess's start-up (0.5–2 s on a loaded machine, varying by more
    than the 150 ms to be seen) once made the far echo look faster than the near one."""
    import time

    from bench.latency_relay import LatencyRelay
    from migrator.dicomfile import IMPLICIT_LE
    from migrator.dul.association import Association
    from migrator.dul.dimse import VERIFICATION_SOP_CLASS
    from migrator.dul.pdu import ProposedContext
    from migrator.netutil import free_port
    from migrator.settings import Settings

    storescp = find_dcmtk_tool("storescp")
    if storescp is None:
        pytest.skip("DCMTK storescp is not on PATH")
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    scp = subprocess.Popen([storescp, "--fork", "--ignore", "-aet", "STORESCP", str(port)], env=env)
    timeouts = Settings(host="127.0.0.1").timeouts

    def echo_seconds(relay_port: int) -> float:
        start = time.perf_counter()
        assoc = Association.request(
            "127.0.0.1",
            relay_port,
            "STORESCP",
            "MIGRATOR",
            [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))],
            timeouts=timeouts,
        )
        assert assoc.c_echo().status == 0x0000
        assoc.release()
        return time.perf_counter() - start

    try:
        time.sleep(0.3)
        with LatencyRelay(port, 25.0) as relay:
            far = min(echo_seconds(relay.port) for _ in range(3))
        with LatencyRelay(port, 0.0) as near_relay:
            near = min(echo_seconds(near_relay.port) for _ in range(3))
    finally:
        scp.terminate()
        scp.wait(10)
    assert far - near >= 3 * 2 * 0.025, (far, near)
    assert relay.most_open == 1 and near_relay.most_open == 1


@pytest.mark.timeout(180)
def test_latency_bench_smoke(tmp_path: Path) -> None:
    """bench/latency_bench.py end to end on 40 files, 0 and 4 ms RTT: every sender sent every
    file at each RTT, the table and the goals are printed, the JSON holds every row."""
    if find_dcmtk_tool("storescp") is None:
        pytest.skip("DCMTK storescp is not on PATH")
    out = tmp_path / "lat.json"
    cmd = [sys.executable, str(REPO / "bench" / "latency_bench.py"), "--files", "40"]
    cmd += ["--peer-files", "10", "--repeat", "1", "--rtt-ms", "0,4", "--workers", "1"]
    cmd += ["--json", str(out), "--timeout", "90"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["sender"], r["rtt_ms"]): r for r in data["rows"]}
    assert len(rows) == 8
    assert all(r["files_per_s"] and not r["failures"] for r in rows.values()), rows
    assert rows[("storescu", "4")]["files"] == 10
    assert "× storescu" in proc.stdout and max(data["most_open"]) <= 64


@pytest.mark.timeout(180)
def test_orthanc_bench_smoke(tmp_path: Path) -> None:
    """bench/orthanc_bench.py end to end on 30 files: a stock and a tuned Orthanc each held
    every file after every sender's run (counted by Orthanc), the goals are printed."""
    out = tmp_path / "orthanc.json"
    cmd = [sys.executable, str(REPO / "bench" / "orthanc_bench.py"), "--files", "30"]
    cmd += ["--peer-files", "5", "--repeat", "1", "--workers", "1", "--json", str(out)]
    cmd += ["--timeout", "90"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["sender"], r["receiver"]): r for r in data["rows"]}
    assert len(rows) == 8
    assert all(r["files_per_s"] and not r["failures"] for r in rows.values()), rows
    assert rows[("storescu", "stock")]["files"] == 5
    assert rows[("migrator-j4", "stock")]["files"] == 30
    assert "stock ÷ tuned" in proc.stdout and "goal (issue 16)" in proc.stdout


@pytest.mark.timeout(60)
def test_stow_bench_smoke(tmp_path: Path) -> None:
    """bench/stow_bench.py end to end on 12 tiny and 3 small files: STOW-RS, curl's
    STOW-RS, DIMSE and curl's REST upload each left Orthanc holding every file (counted
    by Orthanc), and the ratios and the issue's goal are printed."""
    out = tmp_path / "stow.json"
    cmd = [sys.executable, str(REPO / "bench" / "stow_bench.py"), "--tiny", "12", "--small", "3"]
    cmd += ["--repeat", "1", "-j", "2", "--json", str(out), "--timeout", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=55, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["way"], r["corpus"]): r for r in data["rows"]}
    ways = ("stow-rs", "curl-stow", "dimse", "curl")
    assert set(rows) == {(w, c) for w in ways for c in ("tiny", "small")}
    assert all(r["files_per_s"] and not r["failures"] for r in rows.values()), rows
    assert rows[("stow-rs", "small")]["files"] == 3 and rows[("curl", "tiny")]["files"] == 12
    assert [g[0] for g in data["goals"]] == [
        "STOW-RS ≥ 1.0× DIMSE and the REST upload (tiny)",
        "STOW-RS ≥ 1.0× DIMSE and the REST upload (small)",
    ]
    assert "migrator's STOW-RS ÷ curl's STOW-RS" in proc.stdout
    assert "× best other" in proc.stdout and "goal (issue 19)" in proc.stdout


@pytest.mark.timeout(120)
def test_scp_bench_smoke(tmp_path: Path) -> None:
    """bench/scp_bench.py end to end on 20 tiny and 3 small files: both senders filled both
    receivers' output directories with every file, and the ratios and goals are printed."""
    if find_dcmtk_tool("storescp") is None:
        pytest.skip("DCMTK storescp is not on PATH")
    out = tmp_path / "scp.json"
    cmd = [sys.executable, str(REPO / "bench" / "scp_bench.py"), "--tiny", "20", "--small", "3"]
    cmd += ["--repeat", "1", "--json", str(out), "--timeout", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {(r["corpus"], r["sender"], r["receiver"]): r for r in data["rows"]}
    assert len(rows) == 8
    assert all(r["files_per_s"] and not r["failures"] for r in rows.values()), rows
    assert rows[("tiny-20", "DCMTK storescu", "migrator scp")]["files"] == 20
    assert len(data["goals"]) == 4
    assert "migrator scp ÷ storescp" in proc.stdout and "goal (issue 17)" in proc.stdout


@pytest.mark.timeout(120)
def test_pacs_bench_smoke(tmp_path: Path) -> None:
    """bench/pacs_bench.py end to end on 5 studies / 20 instances (one per kind and transfer
    syntax of the corpus): migrator run by C-GET and by C-MOVE and both DCMTK pipelines
    each left the destination Orthanc holding exactly the old PACS's instance set, and the
    JSON holds every row with its proof."""
    if find_dcmtk_tool("getscu") is None:
        pytest.skip("DCMTK getscu is not on PATH")
    out = tmp_path / "pacs.json"
    cmd = [sys.executable, str(REPO / "bench" / "pacs_bench.py"), "--studies", "5"]
    cmd += ["--instances", "20", "--repeat", "1", "--workers", "1", "--timeout", "60"]
    cmd += ["--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["corpus"]["files"] == 20 and doc["corpus"]["studies"] == 5
    rows = {r["row"]: r for r in doc["rows"]}
    assert set(rows) == {"migrator-get", "migrator-move", "dcmtk-get", "dcmtk-move"}
    for name, row in rows.items():
        assert row["complete"] and _positive(row["files_per_s"]), (name, row)
        (run,) = row["runs"]
        assert (run["at_destination"], run["missing"], run["extra"]) == (20, 0, 0), run
        if name.startswith("migrator"):
            totals = run["totals"]
            assert totals["planned"] == totals["stored"] == 20, totals
            assert totals["failed"] == totals["skipped"] == 0, totals
        else:
            steps = {s["step"]: s for s in run["steps"]}
            assert steps["findscu"]["studies"] == 5, steps
            retrieve = steps["getscu" if name == "dcmtk-get" else "movescu"]
            assert retrieve["files"] == 20, steps
    assert doc["best_dcmtk"] in ("dcmtk-get", "dcmtk-move")
    assert "× best DCMTK" in proc.stdout and "goal (issue 17)" in proc.stdout


class _FakeSpawner:
    """Runs nothing: each command "exits 0" after writing the report ``report`` gives."""

    def __init__(self, report: dict[str, object]) -> None:
        self.report = report

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> ProcResult:
        path = Path(argv[argv.index("--report") + 1])
        path.write_text(json.dumps({**self.report, "started": 2000.0, "exit_status": 0}))
        return ProcResult(0, 0.5, "", 1999.0)


def test_pacs_bench_counts_a_row_complete_only_with_every_instance(tmp_path: Path) -> None:
    """A ``migrator run`` that exits 0 does not count when an instance is missing at the
    destination, nor when its report breaks planned = stored + failed + skipped."""
    from argparse import Namespace
    from types import SimpleNamespace

    from bench.pacs_bench import Context, Corpus, Destination, run_row

    uids = {"1.2.3.1", "1.2.3.2", "1.2.3.3"}

    class Dest(Destination):
        def __init__(self) -> None:
            self.held: set[str] = set()

        def sop_uids(self) -> set[str]:
            return self.held

    dest = Dest()
    args = Namespace(workers=1, timeout=10)
    good = {"totals": {"planned": 3, "stored": 3, "failed": 0, "skipped": 0}}

    def row(report: dict[str, object], held: set[str], n: int) -> list[str]:
        dest.held = held
        spawner = _FakeSpawner(report)
        pacs = SimpleNamespace(dicom_port=1)  # never called: the spawner runs nothing
        corpus = Corpus([], 1, uids, 0)
        ctx = Context(spawner, {}, pacs, dest, corpus, args, 1, 2)  # type: ignore[arg-type]
        run = run_row(ctx, "migrator-get", 0, tmp_path / f"s{n}")
        assert run.ok is not bool(run.problems)
        return run.problems

    assert row(good, uids, 0) == []
    problems = row(good, uids - {"1.2.3.2"}, 1)
    assert problems == [
        "the destination holds 2 instances: 1 of the source's missing, 0 not the source's"
    ]
    broken = {"totals": {"planned": 4, "stored": 3, "failed": 0, "skipped": 0}}
    problems = row(broken, uids, 2)
    assert "invariant broken: planned 4 != 3" in problems, problems
