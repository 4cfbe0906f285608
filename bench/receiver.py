"""The receiver every sender sends to (DCMTK ``storescp``), and finding DCMTK's tools."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.measure import SetupError, sender_env, stop_group, tail

HOST = "127.0.0.1"
AET = "STORESCP"
DEFAULT_PDU = 131072  # the largest PDU DCMTK accepts; the receiver's value sets the send size

# storescp has no identity to query: a bind failure makes it exit at once, so still running
# this long after start means it holds the port (TESTING.md §1.1).
_BIND_GRACE_S = 0.3


def version_line(binary: str | Path) -> str | None:
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def find_dcmtk_tool(name: str, extra_dir: str | Path | None = None) -> str | None:
    """The first ``name`` on PATH (or in ``extra_dir``) that is DCMTK's.

    pynetdicom installs ``storescu``/``storescp`` scripts of its own into the venv's bin, which
    come first on PATH in an activated venv; they are told apart by ``--version``, which for
    DCMTK reads ``$dcmtk: storescu v3.6.7 ...``.
    """
    dirs = [str(extra_dir)] if extra_dir else []
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    dirs += ["/usr/bin", "/usr/local/bin"]
    seen: set[Path] = set()
    for d in dirs:
        if not d:
            continue
        candidate = Path(d) / name
        if candidate in seen or not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        seen.add(candidate)
        line = version_line(candidate)
        if line and "dcmtk" in line.lower():
            return str(candidate)
    return None


class Receiver:
    """``storescp --fork --ignore -pdu N -aet STORESCP PORT`` with ``TCP_NODELAY=1``.

    ``--ignore`` receives each dataset completely but does not write it, so disk speed stays out
    of the comparison; ``--fork`` gives each association its own process, so ``-j 4`` does not
    queue behind one accept loop.
    """

    def __init__(self, storescp: str, workdir: Path, pdu: int, *, stock: bool = False) -> None:
        self.storescp = storescp
        #: As shipped: no TCP_NODELAY=1 in its environment, Nagle on (issue 16)
        self.stock = stock
        self.log_path = workdir / "storescp.log"
        self.pdu = pdu
        self.port = 0
        self._proc: subprocess.Popen[Any] | None = None

    def start(self, attempts: int = 3) -> None:
        from migrator.netutil import free_port

        last = ""
        for _ in range(attempts):
            # Another process can take the port between free_port() and the bind: retry then.
            self.port = free_port(HOST)
            argv = [self.storescp, "--fork", "--ignore", "-pdu", str(self.pdu), "-aet", AET]
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [*argv, str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    start_new_session=True,  # its forked children share the group we kill
                )
            time.sleep(_BIND_GRACE_S)
            if self._proc.poll() is None:
                return
            last = self.log()
            self._proc = None
            if "Address already in use" not in last:
                break
        raise SetupError(f"storescp did not start on port {self.port}:\n{tail(last)}")

    def _env(self) -> dict[str, str]:
        env = sender_env()
        if self.stock:
            del env["TCP_NODELAY"]
        return env

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_group(proc)  # children that were mid-association included
