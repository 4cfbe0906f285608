"""Orthanc 1.10.1 (Debian 12) as the destination PACS in tests (TESTING.md §2).

``OrthancPeer`` starts a throw-away Orthanc on free ports with a generated config, proves that the
server answering is ours (unique ``Name`` in ``/system``, PID alive), and wraps the REST calls the
tests need. Missing binaries, busy ports, an early death and a slow start are distinct errors
carrying the log: a test must fail loudly, never skip or run against a foreign server.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"  # Debian installs it outside a non-root PATH
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
HOST = "127.0.0.1"
_INSTALL_HINT = "install it with: apt-get install -y orthanc dcmtk (see TESTING.md §0)"

# The nine group toggles of TESTING.md §2.4; all false = the "no compression" peer.
_COMPRESSION_TOGGLES = (
    "JpegTransferSyntaxAccepted",
    "Jpeg2000TransferSyntaxAccepted",
    "DeflatedTransferSyntaxAccepted",
    "RleTransferSyntaxAccepted",
    "JpegLosslessTransferSyntaxAccepted",
    "JpipTransferSyntaxAccepted",
    "Mpeg2TransferSyntaxAccepted",
    "Mpeg4TransferSyntaxAccepted",
    "H265TransferSyntaxAccepted",
)

Compression = Literal["all", "none", "no-j2k"]


class PeerStartError(RuntimeError):
    """A test peer could not be started; the message carries its log."""


class PeerMissingError(PeerStartError):
    """The peer's program is not installed."""


class PeerPortBusyError(PeerStartError):
    """The port was taken (before or while the peer bound it)."""


class PeerDiedError(PeerStartError):
    """The peer exited during startup."""


class PeerNotReadyError(PeerStartError):
    """The peer did not answer in time."""


class PeerIdentityError(PeerStartError):
    """Something answers on the port, but it is not the process we started."""


# Orthanc 1.10.1 needs ~3.5 s to stop cleanly (its web server alone waits ~2 s), so fixtures
# stop it in the background; these threads finish the stop (SIGKILL after the timeout) and are
# joined at exit so no Orthanc outlives the test run.
_reapers: list[threading.Thread] = []


def _reap(proc: subprocess.Popen[bytes], timeout: float, remove: Path | None) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if remove is not None:
        shutil.rmtree(remove, ignore_errors=True)


@atexit.register
def _join_reapers() -> None:
    for thread in _reapers:
        thread.join()


def port_free_on_all_interfaces(port: int) -> bool:
    """Whether ``port`` can be bound on 0.0.0.0, which is where Orthanc 1.10.1 binds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def free_move_port() -> int:
    """A port for our C-MOVE receiver: free on 0.0.0.0 now, and below the kernel's
    ephemeral range. The receiver listens there only while a move runs; between moves an
    ephemeral port can be handed to any outgoing connection (the old PACS's, a Redis
    client's), and binding it again then fails with "Address already in use" (seen in CI).
    A real move port is a fixed one registered at the PACS, usually low, for the same
    reason."""
    low = 20000
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    for _ in range(200):
        port = random.randrange(low, max(low + 1000, high))
        if port_free_on_all_interfaces(port):
            return port
    return free_port_all_interfaces()


def free_port_all_interfaces() -> int:
    """A port free on 0.0.0.0 (and so on loopback) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def tail(path: Path, limit: int = 4000) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return "(no log)"


def instance_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's deterministic instance ID (TESTING.md §2.5): sha1 of the four keys."""
    h = hashlib.sha1(f"{patient_id}|{study_uid}|{series_uid}|{sop_uid}".encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


class OrthancPeer:
    """One Orthanc process in its own directory. Use as a context manager or start()/stop().

    Options map onto TESTING.md §2.2: ``check_called_aet`` → DicomCheckCalledAet,
    ``compression`` "none" switches off all nine compressed groups and "no-j2k" only JPEG 2000,
    ``scp_timeout`` → DicomScpTimeout, ``overwrite`` → OverwriteInstances, ``auth`` turns on
    HTTP basic auth, ``lua`` installs a Lua script, ``dicomweb`` loads the DICOMweb plugin
    (Debian ``orthanc-dicomweb``; STOW-RS / QIDO-RS under ``dicomweb_url``), ``extra`` is merged
    last into the config.
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        aet: str = "ORTHANC",
        check_called_aet: bool = False,
        compression: Compression = "all",
        scp_timeout: int = 30,
        overwrite: bool = False,
        unknown_sop_class_accepted: bool = False,
        auth: tuple[str, str] | None = None,
        lua: str | None = None,
        dicomweb: bool = False,
        verbose: bool = True,
        extra: dict[str, Any] | None = None,
        startup_timeout: float = 20.0,
        nodelay: bool = True,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.aet = aet
        self.host = HOST
        self.name = f"pytest-orthanc-{uuid.uuid4().hex[:12]}"
        self.dicom_port = 0
        self.http_port = 0
        self.verbose = verbose
        #: False: as Debian ships it, Nagle on (TESTING.md §12: a stock receiver)
        self.nodelay = nodelay
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._options: dict[str, Any] = {
            "check_called_aet": check_called_aet,
            "compression": compression,
            "scp_timeout": scp_timeout,
            "overwrite": overwrite,
            "unknown_sop_class_accepted": unknown_sop_class_accepted,
            "auth": auth,
            "lua": lua,
            "dicomweb": dicomweb,
            "extra": extra or {},
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = requests.Session()
        if auth:
            self._http.auth = auth

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (with ``dicomweb=True``)."""
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        return self.dir / "orthanc.log"

    def log(self) -> str:
        """Orthanc's log plus what it printed (start-up errors go to stdout/stderr)."""
        return tail(self.log_path) + "\n--- stdout/stderr ---\n" + tail(self.dir / "stdout.log")

    def config(self) -> dict[str, Any]:
        o = self._options
        cfg: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "Plugins": [],  # skip /usr/share/orthanc/plugins
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(o["auth"]),
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": o["check_called_aet"],
            "UnknownSopClassAccepted": o["unknown_sop_class_accepted"],
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScpTimeout": o["scp_timeout"],
            "OverwriteInstances": o["overwrite"],
            "SaveJobs": False,
            "StorageCompression": False,
        }
        if o["auth"]:
            user, password = o["auth"]
            cfg["RegisteredUsers"] = {user: password}
        if o["compression"] == "none":
            cfg.update(dict.fromkeys(_COMPRESSION_TOGGLES, False))
        elif o["compression"] == "no-j2k":
            cfg["Jpeg2000TransferSyntaxAccepted"] = False
        if o["lua"]:
            cfg["LuaScripts"] = [str(self.dir / "script.lua")]
        if o["dicomweb"]:
            if not os.path.exists(DICOMWEB_PLUGIN):
                raise PeerMissingError(
                    f"{DICOMWEB_PLUGIN} not found: apt-get install -y orthanc-dicomweb "
                    "(scripts/bootstrap.sh --dev does)"
                )
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        cfg.update(o["extra"])
        return cfg

    def start(self) -> OrthancPeer:
        if not os.access(ORTHANC_BINARY, os.X_OK):
            raise PeerMissingError(f"Orthanc not found at {ORTHANC_BINARY}; {_INSTALL_HINT}")
        self.dir.mkdir(parents=True, exist_ok=True)
        # Orthanc binds 0.0.0.0 (1.10.1 has no bind-address option): both ports must be free
        # there, not only on loopback (TESTING.md §1.1).
        self.dicom_port = free_port_all_interfaces()
        self.http_port = free_port_all_interfaces()
        while self.http_port == self.dicom_port:
            self.http_port = free_port_all_interfaces()
        for port in (self.dicom_port, self.http_port):
            if not port_free_on_all_interfaces(port):
                raise PeerPortBusyError(f"port {port} is busy on 0.0.0.0 before start")
        if self._options["lua"]:
            (self.dir / "script.lua").write_text(self._options["lua"])
        cfg_path = self.dir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))

        cmd = [ORTHANC_BINARY, f"--logfile={self.log_path}"]
        if self.verbose:
            cmd.append("--verbose")  # logs "New instance stored" / "Already stored"
        cmd.append(str(cfg_path))
        # TCP_NODELAY=1: DCMTK (inside Orthanc) disables Nagle, else 40–90 ms per C-STORE (§1.2).
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        if self.nodelay:
            env["TCP_NODELAY"] = "1"
        started = time.monotonic()
        with open(self.dir / "stdout.log", "wb") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.startup_timeout
        while True:
            # Check our PID first in every loop: a dead Orthanc must not leave us polling
            # whatever else answers on the port (TESTING.md §2.1).
            code = self._proc.poll()
            if code is not None:
                log = self.log()
                # Orthanc 1.10.1: "The TCP port of the DICOM server is privileged or already in
                # use" (same for HTTP): another process took the port after our check.
                if "already in use" in log:
                    raise PeerPortBusyError(
                        f"Orthanc exited ({code}): port {self.dicom_port} or {self.http_port} "
                        f"busy\n{log}"
                    )
                raise PeerDiedError(f"Orthanc died during startup (exit {code})\n{log}")
            try:
                r = self._http.get(f"{self.url}/system", timeout=1)
            except requests.RequestException:
                r = None
            if r is not None and r.status_code == 200:
                name = r.json().get("Name")
                if name != self.name:
                    raise PeerIdentityError(
                        f"port {self.http_port} answered as {name!r}, not {self.name!r}\n"
                        + self.log()
                    )
                return
            if time.monotonic() > deadline:
                raise PeerNotReadyError(
                    f"Orthanc not ready after {self.startup_timeout:.0f} s\n{self.log()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """SIGTERM, then SIGKILL if it is not gone within ``timeout``.

        With ``wait=False`` the ports and the process are left to a background thread (joined at
        interpreter exit): for fixtures whose next test does not need this peer gone.
        """
        self._http.close()
        proc, self._proc = self._proc, None
        remove = self.dir if self._own_dir else None
        if proc is None or proc.poll() is not None:
            if remove is not None:
                shutil.rmtree(remove, ignore_errors=True)
            return
        proc.send_signal(signal.SIGTERM)
        if wait:
            _reap(proc, timeout, remove)
            return
        thread = threading.Thread(target=_reap, args=(proc, timeout, remove), daemon=True)
        thread.start()
        _reapers.append(thread)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- REST

    def get(self, path: str, **params: Any) -> Any:
        r = self._http.get(f"{self.url}{path}", params=params or None, timeout=30)
        r.raise_for_status()
        return r.json()

    def delete(self, path: str) -> None:
        self._http.delete(f"{self.url}{path}", timeout=30).raise_for_status()

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        r = self._http.post(f"{self.url}{path}", data=data, timeout=60)
        r.raise_for_status()
        return r.json()

    def statistics(self) -> dict[str, Any]:
        """``/statistics``: CountInstances, CountSeries, CountStudies, TotalDiskSize…"""
        result: dict[str, Any] = self.get("/statistics")
        return result

    def count_instances(self) -> int:
        return int(self.statistics()["CountInstances"])

    instance_id = staticmethod(instance_id)

    def find_instance(self, sop_uid: str) -> str | None:
        """The Orthanc ID of the instance with this SOP Instance UID, or None."""
        ids = self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        return str(ids[0]) if ids else None

    def get_file(self, orthanc_id: str) -> bytes:
        """The stored file. Its File Meta is Orthanc's own; compare datasets, not hashes."""
        r = self._http.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def metadata(self, orthanc_id: str) -> dict[str, str]:
        """TransferSyntax, RemoteAET, CalledAET, RemoteIP, Origin, SopClassUid, …"""
        result: dict[str, str] = self.get(f"/instances/{orthanc_id}/metadata", expand="")
        return result

    def simplified_tags(self, orthanc_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/instances/{orthanc_id}/simplified-tags")
        return result

    def all_sop_instance_uids(self, page: int = 500) -> set[str]:
        """Every stored SOP Instance UID, paginated (plain ``/instances`` returns all at once)."""
        uids: set[str] = set()
        since = 0
        while True:
            batch = self.get("/instances", limit=page, since=since, expand="")
            uids.update(item["MainDicomTags"]["SOPInstanceUID"] for item in batch)
            if len(batch) < page:
                return uids
            since += page

    def upload(self, data: bytes) -> dict[str, Any]:
        """REST ``POST /instances``; a duplicate answers ``"Status": "AlreadyStored"``."""
        result: dict[str, Any] = self.post("/instances", data)
        return result


@contextmanager
def orthanc_peer(
    workdir: str | Path | None = None, *, wait_stop: bool = False, **options: Any
) -> Iterator[OrthancPeer]:
    """``with orthanc_peer(tmp_path, check_called_aet=True) as pacs: ...``

    At the end of the block: SIGTERM, and Orthanc's own ~3.5 s of shutdown is left to a
    background thread (as the ``orthanc`` fixtures do), since what follows a test's Orthanc
    never needs it gone: each start takes new free ports. ``wait_stop=True`` waits for the
    exit (a benchmark, whose next measurement must not share the CPU with it)."""
    peer = OrthancPeer(workdir, **options)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop(wait=wait_stop)
