"""Run `migrator scp` as a real subprocess peer for tests.

    with start_migrator_scp(tmp_path, "--fail-status", "A700") as scp:
        send_to("127.0.0.1", scp.port, scp.ae_title)
        summary = scp.stop()           # SIGTERM, wait, return the shutdown summary
    assert "Successful stores: 0" in summary

The receiver is started on port 0 and bound to 127.0.0.1, so the kernel picks a free
port and there is no window in which another process can take it (TESTING.md §1.1,
rule 1). The ready line ``migrator scp: listening on 127.0.0.1:PORT as AE T (pid N)``
must report the PID we started (rule 2); otherwise the fixture fails with the log.
stderr goes to a file (not a pipe that could fill up and block the receiver).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

READY_RE = re.compile(
    r"^migrator scp: listening on (?P<host>\S+):(?P<port>\d+) as AE (?P<aet>.+) "
    r"\(pid (?P<pid>\d+)\)$",
    re.MULTILINE,
)
SUMMARY_MARKER = "shutdown summary:"
# `python -m migrator.commands.scp` runs the same click command as `migrator scp`
# without importing every other command (one broken module must not take down every
# test that needs a receiver).
_COMMAND = [sys.executable, "-m", "migrator.commands.scp"]
_REPO = Path(__file__).resolve().parents[2]


class ScpStartError(RuntimeError):
    """The receiver died, did not become ready, or is not the process we started."""


@dataclass
class RunningScp:
    proc: subprocess.Popen[bytes]
    port: int
    ae_title: str
    output_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    returncode: int | None = field(default=None)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the log; fail with the log if not."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log_text(), re.MULTILINE)
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the receiver log:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> str:
        """SIGTERM, wait for exit (SIGKILL after ``timeout``), return the summary text.

        Raises AssertionError with the log if the receiver did not exit 0 by itself.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"migrator scp ignored SIGTERM for {timeout} s:\n{self.log_text()}"
                ) from None
        self.returncode = self.proc.returncode
        text = self.log_text()
        if self.returncode != 0:
            raise AssertionError(f"migrator scp exited {self.returncode}:\n{text}")
        if SUMMARY_MARKER not in text:
            raise AssertionError(f"no shutdown summary in the receiver log:\n{text}")
        return text[text.index(SUMMARY_MARKER) :]

    def kill(self) -> None:
        if self.proc.poll() is None:
            # Its own process group (start_new_session): --processes children go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> RunningScp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A clean stop is the test's business (stop()); here we only make sure no
        # receiver outlives its test, whatever happened.
        self.kill()


def scp_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the receiver: ours minus any MIGRATOR_SCP_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_SCP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@contextlib.contextmanager
def receivers(workdir: Path) -> Iterator[Callable[..., RunningScp]]:
    """``start(*args, **kw)`` starts a receiver in ``workdir`` (``start_migrator_scp``);
    none outlives the block: what a test module's receiver fixture yields."""
    started: list[RunningScp] = []

    def start(*args: str, **kw: Any) -> RunningScp:
        scp = start_migrator_scp(workdir, *args, **kw)
        started.append(scp)
        return scp

    try:
        yield start
    finally:
        for scp in started:
            scp.kill()


def start_migrator_scp(
    workdir: Path,
    *extra_args: str,
    ae_title: str = "MIGRATOR-SCP",
    output_dir: Path | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 15.0,
) -> RunningScp:
    """Start `migrator scp 0 --bind 127.0.0.1` with ``extra_args``; return once ready.

    ``workdir`` holds the log (``scp-<n>.log``) and, unless ``output_dir`` is given,
    the output directory ``received-<n>`` (n counts the receivers started there).
    ``env`` adds environment variables.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("scp-*.log")))
    out = output_dir if output_dir is not None else workdir / f"received-{n}"
    log_path = workdir / f"scp-{n}.log"
    cmd = [
        *_COMMAND,
        "0",
        "--bind",
        "127.0.0.1",
        "--aet",
        ae_title,
        "--output-dir",
        str(out),
        *extra_args,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=scp_env(env),
            cwd=workdir,
            # Own session: a Ctrl-C in the test runner's terminal does not reach it.
            start_new_session=True,
        )
    deadline = time.monotonic() + ready_timeout
    while True:
        text = log_path.read_text(errors="replace")
        match = READY_RE.search(text)
        if match:
            break
        if proc.poll() is not None:
            raise ScpStartError(f"migrator scp exited {proc.returncode} during startup:\n{text}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise ScpStartError(f"migrator scp not ready after {ready_timeout} s:\n{text}")
        time.sleep(0.02)
    if int(match["pid"]) != proc.pid or proc.poll() is not None:
        proc.kill()
        raise ScpStartError(
            f"ready line names pid {match['pid']}, we started {proc.pid}; not our receiver:\n{text}"
        )
    return RunningScp(
        proc=proc,
        port=int(match["port"]),
        ae_title=match["aet"],
        output_dir=out,
        log_path=log_path,
        host=match["host"],
    )


def make_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    transfer_syntax: str = "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
) -> Dataset:
    """A small valid image instance (synthetic, no real patient) as a pydicom Dataset.

    UIDs are used as given, valid or not: tests craft hostile ones on purpose.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = "SYNTH-0001"
    ds.Modality = "CT" if sop_class.endswith(".1.2") else "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    seed = sum(sop_uid.encode()) % 65536
    pixels = (np.arange(rows * columns * frames, dtype=np.uint32) + seed) % 65536
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds
