"""What a C-FIND of `verify` waits for: the delayed ACK, and a PACS's busy DICOM threads.

    .venv/bin/python bench/cfind_bench.py                 # ~1 min (most of it the stalls)
    .venv/bin/python bench/cfind_bench.py --queries 50

Table 1: `verify`'s query client (``QueryClient``, pynetdicom) against stock DCMTK
``dcmqrscp`` and stock Orthanc (no ``TCP_NODELAY`` in their environment: each response's
command and identifier written with Nagle on), with the quick ACKs of its reads
(``migrator.netutil.quick_ack``) as shipped and taken out. Table 2: the same client against
stock Orthanc while other associations stay open and idle (as the workers' pooled C-STORE
associations do after a job), with Orthanc's ``DicomThreadsCount`` at its default (4) and
at 8: Orthanc runs each association's next command on one of those threads, and an idle
association's turn holds a thread for its 1 s receive timeout.

Each query: SERIES level in one of 3 studies of 4 series (5 responses). Timer-bound
figures (the ~40 ms delayed-ACK timer, Orthanc's 1 s step), not throughput: they hold on a
loaded machine. Exit status 0; 2 when a peer is missing.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from migrator import netutil, synth
from migrator.dicomfile import IMPLICIT_LE
from migrator.dul.association import Association
from migrator.dul.dimse import VERIFICATION_SOP_CLASS
from migrator.dul.pdu import ProposedContext
from migrator.settings import Settings
from migrator.verify.query import QueryClient
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer, PeerMissingError

AE = "STOCKQR"


def _ms_per_query(port: int, queries: int) -> float:
    """Mean milliseconds per C-FIND over ``queries`` on one association (what `verify` pays:
    behind busy DICOM threads some C-FINDs wait a second, some none)."""
    config = Settings(host="127.0.0.1", port=port, called_ae=AE, calling_ae="MIGRATOR")
    with QueryClient(config) as q:
        studies = [str(s.StudyInstanceUID) for s in q.find("STUDY", {}, ["StudyInstanceUID"])]
        times = []
        for i in range(queries):
            started = time.monotonic()
            q.find("SERIES", {"StudyInstanceUID": studies[i % len(studies)]}, ["SeriesInstanceUID"])
            times.append(time.monotonic() - started)
    return statistics.mean(times) * 1000


def _orthanc(work: Path, files: list[Path], threads: int = 4) -> OrthancPeer:
    extra = {"DicomAlwaysAllowFind": True, "DicomThreadsCount": threads}
    peer = OrthancPeer(work, aet=AE, nodelay=False, verbose=False, extra=extra).start()
    for f in files:
        peer.upload(f.read_bytes())
    return peer


def _quick_ack_table(work: Path, files: list[Path], queries: int) -> None:
    print("| stock peer | quick ACKs | ms per C-FIND (mean) | off ÷ on |\n|---|---|---:|---:|")
    qr = DcmqrscpPeer(work / "dcmqrscp", aet=AE, nodelay=False)
    qr.add(files)
    peers: list[tuple[str, int, Callable[[], None]]] = [("dcmqrscp", qr.start().port, qr.stop)]
    orthanc = _orthanc(work / "orthanc", files)
    peers.append(("Orthanc", orthanc.dicom_port, orthanc.stop))
    shipped = netutil._QUICKACK
    try:
        for name, port, _ in peers:
            netutil._QUICKACK = shipped
            on = _ms_per_query(port, queries)
            netutil._QUICKACK = None  # what a client without them does
            off = _ms_per_query(port, queries)
            print(f"| {name} | on (as shipped) | {on:.1f} | |")
            print(f"| {name} | off | {off:.1f} | {off / on:.0f} |")
    finally:
        netutil._QUICKACK = shipped
        for _, _, stop in peers:
            stop()


def _idle_table(work: Path, files: list[Path], queries: int) -> None:
    print("\n| Orthanc DicomThreadsCount | idle associations | ms per C-FIND (mean) |")
    print("|---:|---:|---:|")
    for threads in (4, 8):
        orthanc = _orthanc(work / f"orthanc-{threads}", files, threads)
        try:
            for idle in (0, 3, 4, 6):
                echo = [ProposedContext(1, VERIFICATION_SOP_CLASS, (IMPLICIT_LE,))]
                held = [
                    Association.request("127.0.0.1", orthanc.dicom_port, AE, "IDLE", echo)
                    for _ in range(idle)
                ]
                try:
                    print(
                        f"| {threads} | {idle} | {_ms_per_query(orthanc.dicom_port, queries):.1f} |"
                    )
                finally:
                    for a in held:
                        a.release()
        finally:
            orthanc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queries", type=int, default=20, help="C-FINDs per row (e.g. 50)")
    args = p.parse_args(argv)
    if not hasattr(socket, "TCP_QUICKACK"):
        print("TCP_QUICKACK is Linux's: nothing to compare here")
        return 2
    with tempfile.TemporaryDirectory(prefix="cfind-bench-") as tmp:
        work = Path(tmp)
        files = synth.write_corpus(
            work / "src", count=12, size="tiny", studies=3, series_per_study=4, seed=1717
        )
        try:
            _quick_ack_table(work, files, args.queries)
            _idle_table(work, files, args.queries)
        except PeerMissingError as exc:
            print(exc)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
