"""Manifests: planning from a file list, bad lines, and a planner killed midway.

Real redis-server, real Celery worker processes and a real receiver for the migration; the
kill test plans 50,000 lines into a real Redis and SIGKILLs the planner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator import synth
from migrator.ledger import Ledger
from migrator.sources.manifest import BadLine, ManifestEntry, read_manifest
from tests.enginehelpers import assert_invariant, common_args, finish, start_run, wait_until
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.storehelpers import sop_uid
from workers.local import LocalWorkers

pytestmark = pytest.mark.timeout(240)


def test_ndjson_and_csv_with_bad_lines(tmp_path: Path) -> None:
    nd = tmp_path / "m.ndjson"
    nd.write_text(
        '{"uri": "/a/1.dcm", "size": 10, "sop_instance_uid": "1.2.3"}\n'
        "\n"
        "{not json\n"
        '{"size": 5}\n'
        '["a"]\n'
        '{"uri": "s3://b/k.dcm", "size": "x"}\n'
        '{"uri": "s3://b/2.dcm", "study_instance_uid": "9.8"}\n'
    )
    rows = list(read_manifest(str(nd)))
    assert rows[0] == ManifestEntry(1, "/a/1.dcm", 10, "1.2.3", "")
    bad = [str(r) for r in rows if isinstance(r, BadLine)]
    assert bad[0].startswith("line 3: not JSON")
    assert bad[1:] == [
        "line 4: no uri",
        "line 5: not a JSON object",
        "line 6: size is not a whole number: 'x'",
    ]
    assert rows[-1] == ManifestEntry(7, "s3://b/2.dcm", 0, "", "9.8")

    csv = tmp_path / "m.csv"
    csv.write_text("size,uri\n10,/a/1.dcm\n,/a/2.dcm\nbig,/a/3.dcm\n")
    rows = list(read_manifest(str(csv)))
    assert rows[0] == ManifestEntry(2, "/a/1.dcm", 10)
    assert rows[1] == ManifestEntry(3, "/a/2.dcm", 0)
    assert str(rows[2]) == "line 4: size is not a whole number: 'big'"
    (tmp_path / "nouri.csv").write_text("path,size\n/a,1\n")
    assert [str(r) for r in read_manifest(str(tmp_path / "nouri.csv"))] == [
        "line 1: the CSV header has no 'uri' column"
    ]


def test_a_manifest_job_migrates_and_settles_what_cannot_be_sent(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    files = synth.write_corpus(tmp_path / "in", count=30, size="tiny", seed=71)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    lines = [json.dumps({"uri": str(p), "sop_instance_uid": sop_uid(p)}) for p in files[:29]]
    # The old PACS's database was wrong about this one: never send what does not match.
    lines.append(json.dumps({"uri": str(files[29]), "sop_instance_uid": "1.2.3.4"}))
    lines.append(json.dumps({"uri": str(tmp_path / "in" / "notes.txt")}))
    lines.append("{broken")
    manifest = tmp_path / "export.ndjson"
    manifest.write_text("\n".join(lines) + "\n")
    with counting_scp() as scp, LocalWorkers(redis_server.url, 2):
        code, out = finish(
            start_run(
                "--manifest",
                manifest,
                *common_args(("127.0.0.1", scp.port), "COUNTING"),
                "--redis-url",
                redis_server.url,
                "--batch-files",
                "10",
            )
        )
    assert code == 1, out
    assert "manifest line 32: not JSON" in out
    assert scp.distinct == 29
    ledger = Ledger(redis_server.client(), _only_job(redis_server))
    counts = assert_invariant(ledger)
    assert (counts["planned"], counts["stored"], counts["failed"], counts["skipped"]) == (
        31,
        29,
        1,
        1,
    )
    reasons = {o.uri: o.reason for _, o, _ in ledger.iter_outcomes() if o.reason}
    assert "not the one the manifest gives" in reasons[str(files[29])]
    assert "not a DICOM file" in reasons[str(tmp_path / "in" / "notes.txt")]


def _only_job(redis_server: RedisPeer) -> str:
    from migrator.ledger import list_jobs

    [job] = list_jobs(redis_server.client())
    return job


def test_planner_killed_midway_then_rerun_plans_each_line_once(
    tmp_path: Path, redis_server: RedisPeer
) -> None:
    manifest = tmp_path / "big.ndjson"
    with manifest.open("w") as f:
        for i in range(50_000):
            f.write(f'{{"uri": "/archive/{i // 1000:03d}/{i:06d}.dcm", "size": 10000}}\n')
    args = [
        sys.executable, "-m", "migrator", "plan", "--manifest", str(manifest),
        "--host", "127.0.0.1", "--port", "104", "--called-ae", "PACS",
        "--redis-url", redis_server.url, "--job", "big",
        "--no-preflight",  # no PACS: planning only
    ]  # fmt: skip
    client = redis_server.client()
    ledger = Ledger(client, "big")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: ledger.exists() and ledger.counts()["planned"] >= 10_000, 60, "planning")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    partial = ledger.counts()["planned"]
    assert 10_000 <= partial < 50_000, partial

    t0 = time.monotonic()
    second = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"{50_000 - partial} files planned" in second.stdout
    assert f"{partial} already planned" in second.stdout
    assert ledger.counts()["planned"] == 50_000
    # Every line is in exactly one batch, and every batch was handed to the broker.
    uris = [f.uri for _, plan, _, _ in ledger.iter_batches() for f in plan]
    assert len(uris) == len(set(uris)) == 50_000
    assert ledger.unenqueued_batches() == []
    print(f"re-plan of {50_000 - partial} lines: {time.monotonic() - t0:.1f} s")
