"""DCMTK 3.6.7 tools as test peers (TESTING.md §3): storescp as a receiver, storescu/echoscu as
senders. Every DCMTK process gets ``TCP_NODELAY=1`` (§1.2); without it each C-STORE costs
40–90 ms on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migrator.netutil import free_port
from tests.peers.orthanc import HOST, PeerDiedError, PeerMissingError, PeerPortBusyError, tail

_INSTALL_HINT = "install it with: apt-get install -y dcmtk (see TESTING.md §0)"
# storescp has no identity to query: a bind failure makes it exit at once, so being alive this
# long after start is the proof that it holds the port (TESTING.md §1.1).
_BIND_GRACE = 0.3


def dcmtk_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PeerMissingError(f"DCMTK's {name} is not on PATH; {_INSTALL_HINT}")
    return path


def _env(nodelay: bool = True) -> dict[str, str]:
    """DCMTK reads TCP_NODELAY=1 from its environment; without it (``nodelay=False``) it runs
    as shipped, with Nagle on (TESTING.md §12: a stock receiver)."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


class StoreScpPeer:
    """``storescp --fork +xa -pm -aet STORESCP -od OUT -fe .dcm PORT`` on a free port.

    Accepts every transfer syntax and SOP class, does **not** check the called AET and
    overwrites duplicates: not a stand-in for Orthanc in AET or duplicate tests.
    ``ignore=True`` receives without storing (throughput tests).
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        aet: str = "STORESCP",
        ignore: bool = False,
        fork: bool = True,
        extra_args: Sequence[str] = (),
        nodelay: bool = True,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="storescp-"))
        self.out_dir = self.dir / "received"
        self.aet = aet
        self.host = HOST
        self.port = 0
        self.ignore = ignore
        self.fork = fork
        self.extra_args = list(extra_args)
        self.nodelay = nodelay
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "storescp.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log(self) -> str:
        return tail(self.log_path)

    def command(self) -> list[str]:
        cmd = [dcmtk_binary("storescp")]
        if self.fork:
            cmd.append("--fork")  # one child per association: parallel senders do not queue
        cmd += ["+xa", "-pm", "-aet", self.aet, "-od", str(self.out_dir), "-fe", ".dcm"]
        if self.ignore:
            cmd.append("--ignore")
        return [*cmd, *self.extra_args, str(self.port)]

    def start(self) -> StoreScpPeer:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(self.nodelay),
            )
        time.sleep(_BIND_GRACE)
        code = self._proc.poll()
        if code is not None:
            self._proc = None
            log_text = self.log()
            if "Address already in use" in log_text:
                raise PeerPortBusyError(f"storescp: port {self.port} busy\n{log_text}")
            raise PeerDiedError(f"storescp exited during startup ({code})\n{log_text}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the parent; with ``--fork`` children finish their association on their own."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def received_files(self) -> list[Path]:
        """Stored files (``<MODALITY>.<SOPInstanceUID>.dcm``), sorted by name."""
        return sorted(self.out_dir.glob("*.dcm"))

    def received_sop_uids(self) -> set[str]:
        """The SOP Instance UIDs of the stored files, read from their headers."""
        import pydicom

        return {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in self.received_files()
        }

    def __enter__(self) -> StoreScpPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def storescp_peer(workdir: str | Path | None = None, **options: Any) -> Iterator[StoreScpPeer]:
    peer = StoreScpPeer(workdir, **options)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def run_storescu(
    host: str,
    port: int,
    files: Iterable[str | Path],
    *,
    called_ae: str = "ORTHANC",
    calling_ae: str = "MIGRATOR",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` on one association; returns the finished process (rc 0 = all sent).

    Compressed files need the option for their syntax in ``extra_args`` (``-xv`` for J2K
    lossless, ``-xs`` JPEG lossless, ``-xd`` deflated…); without one storescu refuses to send
    them (TESTING.md §3). The output is in ``.stdout`` (stderr merged).
    """
    cmd = [
        dcmtk_binary("storescu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra_args,
        host,
        str(port),
        *(str(f) for f in files),
    ]
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )


def run_echoscu(
    host: str,
    port: int,
    called_ae: str = "ORTHANC",
    calling_ae: str = "ECHOSCU",
    *,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO; rc 0 on success, 1 when rejected (e.g. ``Called AE Title Not Recognized``)."""
    cmd = [dcmtk_binary("echoscu"), "-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )
