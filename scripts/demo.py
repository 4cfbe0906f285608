"""The main job on one machine, with nothing else installed: a synthetic archive migrated.

Generate a deterministic corpus (CT studies, an MR, a multi-frame, implicit and big-endian
files, dataset-only files, a JPEG 2000 file, and a text file that must be skipped), start
`migrator scp` on a free port, run `migrator run` into it on the embedded default (a private
Redis and local Celery worker processes, stopped at the end), print the summary, stop the
receiver and count what arrived.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from migrator import synth

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000, help="tiny CT files to generate")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="migrator-demo-"))
    archive = work / "archive"
    print(f"demo: generating a synthetic archive in {archive}", flush=True)
    synth.write_corpus(archive / "ct", count=args.files, size="tiny", kind="CT")
    synth.write_corpus(archive / "small", count=50, size="small")
    synth.write_mixed_corpus(archive / "mixed")
    (archive / "README.txt").write_text("Not DICOM: the migrator skips it and says why.\n")

    out = work / "received"
    log = open(work / "scp.log", "w")  # noqa: SIM115 - closed below
    scp = subprocess.Popen(
        [
            BIN / "migrator",
            "scp",
            "0",
            "--bind",
            "127.0.0.1",
            "--aet",
            "DEMO-PACS",
            "--output-dir",
            out,
            "--max-pdu",
            "131072",
        ],
        stderr=log,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = _wait_port(work / "scp.log", scp)
        print(f"demo: migrator scp (pid {scp.pid}) listening on 127.0.0.1:{port}\n", flush=True)
        # No --redis-url: the embedded default (a private Redis and local Celery worker
        # processes, all stopped at the end). Its ledger lives in the work directory.
        proc = subprocess.run(
            [
                BIN / "migrator",
                "run",
                archive,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--called-ae",
                "DEMO-PACS",
                "--state-dir",
                work / "state",
                "--report",
                work / "report.json",
            ],
        )
    finally:
        scp.send_signal(signal.SIGTERM)
        scp.wait(15)
        log.close()
    received = sum(1 for _ in out.rglob("*.dcm"))
    print(f"\ndemo: the receiver holds {received} instances under {out}")
    print(f"demo: JSON report: {work / 'report.json'}")
    if not args.keep and proc.returncode == 0:
        import shutil

        shutil.rmtree(work)
        print("demo: work directory removed (use --keep to keep it)")
    return proc.returncode


def _wait_port(log_path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"listening on [\d.]+:(\d+)", log_path.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"migrator scp exited:\n{log_path.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"migrator scp not ready:\n{log_path.read_text()}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
