"""Start-up: `store` and `echo` load no Redis or Celery client; `run` no DICOM toolkit.

Each `migrator store` is a new process, and on a batch of a few hundred files its start-up
is a large part of the wall time (bench/RESULTS.md, issue 19): importing the Redis client
alone cost ~90 ms on this machine, for a command that talks to no Redis unless a fleet-wide
limit is asked for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from migrator import synth
from tests.peers.dcmtk import StoreScpPeer

#: Run the CLI, then say which heavy packages the process loaded (at exit, after the work).
_PROBE = """
import atexit, sys
heavy = ("redis", "celery", "kombu", "pydicom", "pynetdicom", "boto3")
atexit.register(lambda: print("LOADED=" + ",".join(m for m in heavy if m in sys.modules)))
sys.argv = ["migrator", *sys.argv[1:]]
from migrator.cli import main
main()
"""


def _loaded(*args: str) -> tuple[int, set[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LOADED="))
    loaded = set(filter(None, line[len("LOADED=") :].split(",")))
    return proc.returncode, loaded, proc.stdout + proc.stderr


def test_store_sends_without_loading_redis_celery_or_pydicom(
    storescp: StoreScpPeer, tmp_path: Path
) -> None:
    files = synth.write_corpus(tmp_path / "in", count=3, size="tiny", seed=1)
    rc, loaded, out = _loaded(
        "store", "--host", "127.0.0.1", "--port", str(storescp.port), "--dir", str(tmp_path / "in")
    )
    assert rc == 0, out
    assert "Successful:  3" in out
    assert len(list(storescp.out_dir.rglob("*.dcm"))) == len(files) == 3
    assert loaded == set(), f"store loaded {sorted(loaded)}"


def test_echo_loads_no_redis_or_celery(storescp: StoreScpPeer) -> None:
    rc, loaded, out = _loaded("echo", "127.0.0.1", str(storescp.port))
    assert rc == 0, out
    assert not loaded & {"redis", "celery", "kombu"}, f"echo loaded {sorted(loaded)}"


def test_run_sends_without_loading_pydicom_or_pynetdicom(
    storescp: StoreScpPeer, tmp_path: Path
) -> None:
    """`run`'s own process (planner, inline sender, progress, report): pynetdicom and
    pydicom (~0.18 s) come only with what needs them (verify, a lost delivery's look-up)."""
    synth.write_corpus(tmp_path / "in", count=3, size="tiny", seed=2)
    rc, loaded, out = _loaded(
        "run",
        str(tmp_path / "in"),
        "--host",
        "127.0.0.1",
        "--port",
        str(storescp.port),
        "--state-dir",
        str(tmp_path / "state"),
        "--workers",
        "1",
    )
    assert rc == 0, out
    assert "Successful:  3" in out
    assert len(list(storescp.out_dir.rglob("*.dcm"))) == 3
    assert not loaded & {"pydicom", "pynetdicom"}, f"run loaded {sorted(loaded)}"
