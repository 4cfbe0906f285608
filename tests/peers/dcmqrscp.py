"""DCMTK ``dcmqrscp`` as a second old PACS (Q/R SCP: C-FIND, C-GET, C-MOVE) for tests.

Its own configuration file: one AE (``aet``) over one storage area (``db``), a host table
naming the peers it may send to (C-MOVE destinations: AE title, host, port); files are put
into that area and indexed with ``dcmqridx`` before the server starts.
It forks a child per association (as shipped): ``--single-process`` (DCMTK 3.6.7) died
with SIGSEGV after the first association was released. A child ends with its association;
``stop`` ends the parent.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from migrator.netutil import free_port
from tests.peers.dcmtk import _env, dcmtk_binary
from tests.peers.orthanc import HOST, PeerDiedError, PeerPortBusyError, tail

_BIND_GRACE = 0.3


class DcmqrscpPeer:
    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "DCMQRSCP",
        peers: dict[str, int] | None = None,
        extra_args: Sequence[str] = (),
        nodelay: bool = True,
    ) -> None:
        """``peers``: AE title -> port on 127.0.0.1 (move destinations and known callers);
        ``nodelay=False``: as DCMTK ships, Nagle on (TESTING.md §12: a stock peer)."""
        self.dir = workdir
        self.db = workdir / "db"
        self.aet = aet
        self.host = HOST
        self.port = 0
        self.peers = dict(peers or {})
        self.extra_args = list(extra_args)
        self.nodelay = nodelay
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "dcmqrscp.cfg"

    @property
    def log_path(self) -> Path:
        return self.dir / "dcmqrscp.log"

    def log(self) -> str:
        return tail(self.log_path)

    def add(self, files: Iterable[Path]) -> None:
        """Copy ``files`` into the storage area and index them (before ``start``)."""
        self.db.mkdir(parents=True, exist_ok=True)
        copies = []
        for f in files:
            copy = self.db / f"{len(copies):06d}-{f.name}"
            shutil.copyfile(f, copy)
            copies.append(str(copy))
        subprocess.run([dcmtk_binary("dcmqridx"), str(self.db), *copies], check=True)

    def _config(self) -> str:
        hosts = "\n".join(
            f"p{i} = ({ae}, {HOST}, {port})" for i, (ae, port) in enumerate(self.peers.items())
        )
        return (
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.aet} {self.db} RW (1000, 1024mb) ANY\nAETable END\n"
        )

    def start(self) -> DcmqrscpPeer:
        self.db.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        self.config_path.write_text(self._config())
        cmd = [
            dcmtk_binary("dcmqrscp"),
            "-c",
            str(self.config_path),
            *self.extra_args,
            str(self.port),
        ]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(self.nodelay),
            )
        time.sleep(_BIND_GRACE)
        code = self._proc.poll()
        if code is not None:
            self._proc = None
            text = self.log()
            if "Address already in use" in text:
                raise PeerPortBusyError(f"dcmqrscp: port {self.port} busy\n{text}")
            raise PeerDiedError(f"dcmqrscp exited during startup ({code})\n{text}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
