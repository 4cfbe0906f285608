"""Every exit code of the README's table, through the command line, and one line (never a
traceback) for every error a user meets on the way.

README, "Exit codes": 0 all stored; 1 one or more failed; 2 bad arguments; 3 cannot
connect; 4 association rejected; 5 no input files; 6 (`run`) job incomplete; 130
interrupted.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrator import synth
from migrator.exitcodes import ExitStatus
from migrator.netutil import free_port
from tests.peers.counting_scp import counting_scp
from tests.peers.migrator_scp import start_migrator_scp
from tests.storehelpers import run_migrator, sop_uid

pytestmark = pytest.mark.timeout(180)

#: No AWS credentials anywhere, and no instance metadata service to ask for them.
NO_AWS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SESSION_TOKEN": "",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "MIGRATOR_FLOWER_BASIC_AUTH": "admin:secret",
}


def _no_traceback(proc: subprocess.CompletedProcess[str], where: str) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, (where, out)
    return out


def _dest(port: int, ae: str = "ANY-SCP") -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--called-ae", ae]


def test_every_exit_code_of_the_readme(tmp_path: Path) -> None:
    files = synth.write_corpus(tmp_path / "in", count=12, size="tiny", seed=2001)
    empty = tmp_path / "empty"
    empty.mkdir()
    state = ["--state-dir", str(tmp_path / "state")]
    seen: dict[int, str] = {}

    def check(code: int, *args: str, timeout: float = 120) -> str:
        proc = run_migrator(*args, timeout=timeout)
        out = _no_traceback(proc, " ".join(args))
        assert proc.returncode == code, (args, out)
        seen[code] = " ".join(args[:1])
        return out

    with counting_scp() as scp:
        # 0: every file stored; 1: one refused by the PACS.
        check(0, "store", *_dest(scp.port, "COUNTING"), "--dir", str(tmp_path / "in"))
        scp.fail_uids = {sop_uid(files[3]): 0xA900}
        check(1, "store", *_dest(scp.port, "COUNTING"), "--dir", str(tmp_path / "in"))
    # 2: bad arguments, and a source that does not exist (a usage error, not a job).
    check(2, "store", "--host", "h", "--port", "0", "x.dcm")
    out = check(2, "run", str(tmp_path / "archve"), *_dest(free_port()), *state)
    assert f"no such file or directory: {tmp_path / 'archve'}" in out
    assert not (tmp_path / "state").exists()  # nothing was started
    # 3: nothing listens on the port: the preflight's C-ECHO says so in seconds, as `echo`.
    port = free_port()
    t0 = time.monotonic()
    out = check(3, "run", str(tmp_path / "in"), *_dest(port), *state)
    assert time.monotonic() - t0 < 5
    echo = run_migrator("echo", "127.0.0.1", str(port))
    assert echo.returncode == 3
    assert echo.stderr.strip().splitlines()[0] in out  # the same line as `migrator echo`
    assert "nothing was planned" in out
    # 4: the PACS rejects the association.
    with start_migrator_scp(tmp_path / "refusing", "--refuse") as refusing:
        out = check(4, "run", str(tmp_path / "in"), *_dest(refusing.port), *state)
        assert "C-ECHO to 127.0.0.1" in out and "rejected" in out
    # 5: no input file at all.
    with counting_scp() as scp:
        check(5, "store", *_dest(scp.port, "COUNTING"), "--dir", str(empty))
        # 6: a job stopped waiting for with files in flight (--timeout).
        out = check(
            6,
            "run",
            str(tmp_path / "in"),
            *_dest(scp.port, "COUNTING"),
            *state,
            "--workers",
            "1",
            "--rate-limit",
            "1",
            "--burst",
            "1",
            "--timeout",
            "3s",
        )
        assert "⚠ Incomplete" in out
    # 130: interrupted (Ctrl-C).
    with counting_scp(response_delay=0.5) as slow:
        store = ["store", *_dest(slow.port, "COUNTING"), "--dir", str(tmp_path / "in")]
        proc = subprocess.Popen(
            [sys.executable, "-m", "migrator", *store],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while sum(slow.stores.values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert "Traceback" not in out, out
        assert proc.returncode == 130, out
        seen[130] = "store"
    assert sorted(seen) == sorted(int(s) for s in ExitStatus), seen


def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, int(sock.getsockname()[1])


def test_errors_are_one_line_never_a_traceback(tmp_path: Path) -> None:
    """A broad set of failing commands: each says what is wrong in one line, with the
    README's exit code, and no Python traceback."""
    synth.write_corpus(tmp_path / "in", count=2, size="tiny", seed=2002)
    nothing = tmp_path / "never-used"
    s3 = ["--s3-endpoint", "http://127.0.0.1:1", "--s3-region", "us-east-1"]
    dest = _dest(free_port())
    listener, busy = _busy_port()
    cases: list[tuple[int, list[str], str]] = [
        (2, ["run", "s3://bucket/2019/", *dest, *s3, "--dry-run"], "no usable AWS credentials"),
        (2, ["store", "s3://bucket/2019/", *dest, *s3], "no usable AWS credentials"),
        (2, ["run", str(tmp_path / "nope"), *dest], "no such file or directory"),
        (2, ["run", str(tmp_path / "in"), *dest, "--manifest", "missing.csv"], "missing.csv"),
        (2, ["plan", str(tmp_path / "in"), *dest], "plan needs --redis-url"),
        (2, ["status", "--state-dir", str(nothing)], "no job in"),
        (2, ["report", "--state-dir", str(nothing)], "no job in"),
        (2, ["verify", "job-x", "--state-dir", str(nothing)], "no job in"),
        (2, ["retry", "--state-dir", str(nothing)], "no job in"),
        (2, ["jobs", "--state-dir", str(nothing)], "no job in"),
        (2, ["limit", "--rate-limit", "5", "--state-dir", str(nothing)], "no job in"),
        (2, ["report", "--format", "html", "--by", "study"], "--by study is for --format csv"),
        (2, ["flower", "--state-dir", str(nothing)], "no migrator run is using"),
        (
            2,
            ["flower", "--redis-url", "redis://127.0.0.1:1/0", "--port", str(busy)],
            f"cannot listen on 127.0.0.1:{busy}",
        ),
        (3, ["run", str(tmp_path / "in"), *dest, "--state-dir", str(tmp_path / "s")], "C-ECHO"),
        (3, ["echo", "127.0.0.1", dest[3]], "connection refused"),
    ]
    try:
        for code, args, said in cases:
            proc = run_migrator(*args, env=NO_AWS, timeout=60)
            out = _no_traceback(proc, " ".join(args))
            assert proc.returncode == code, (args, out)
            assert said in proc.stderr, (args, out)
            errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
            assert len(errors) <= 1, (args, proc.stderr)
    finally:
        listener.close()
    assert not nothing.exists()  # looking for jobs creates no state directory
