"""The fleet's PACS: a counting Storage SCP in its own namespace, and what it saw.

``python -m tests.fleet.pacs ADDRESS PORT EVENTS`` runs a pynetdicom Storage SCP (every
storage SOP class, every syntax; nothing kept on disk) that appends one line per event to
EVENTS, flushed at once so that the test reads it while the fleet runs and it survives the
receiver's SIGKILL at teardown:

    O <time> <peer ip>      an association's connection opened
    C <time> <peer ip>      closed
    S <time> <peer ip> <open now> <SOP Instance UID>     a C-STORE answered 0x0000

It also answers Study Root C-FIND (study, series, image level) from what it holds, so that
`migrator verify` can check a job against it, and a worker taking over a lost host's batch
can ask which of its files arrived (IMAGE level with a list of SOP Instance UIDs).

Times are ``time.time()`` (one clock: every namespace shares the machine's). What a user
checks — each instance arrived once, the association cap and the rate limit held — is
computed from these lines by :class:`tests.fleet.pacslog.PacsLog`, at the receiver, not from
the senders' own bookkeeping (as ``tests/peers/counting_scp.py`` does for a loopback peer).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

AE_TITLE = "FLEETPACS"


def serve(address: str, port: int, events: Path) -> None:
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore

    lock = threading.Lock()
    out: TextIO = open(events, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
    open_now = 0

    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    def on_open(event: Any) -> None:
        nonlocal open_now
        with lock:
            open_now += 1
            write(f"O {time.time():.6f} {event.address[0]}")

    def on_close(event: Any) -> None:
        nonlocal open_now
        with lock:
            open_now -= 1
            write(f"C {time.time():.6f} {event.address[0]}")

    # study -> series -> instances held, for `migrator verify`'s C-FIND (Study Root).
    held: dict[str, dict[str, set[str]]] = {}

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        ds = event.dataset
        with lock:
            series = held.setdefault(str(ds.StudyInstanceUID), {})
            series.setdefault(str(ds.SeriesInstanceUID), set()).add(uid)
            write(f"S {time.time():.6f} {event.assoc.requestor.address} {open_now} {uid}")
        return 0x0000

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = str(query.QueryRetrieveLevel)
        with lock:
            studies = {k: {s: set(i) for s, i in v.items()} for k, v in held.items()}
        want_study = str(query.get("StudyInstanceUID", "") or "")
        want_series = str(query.get("SeriesInstanceUID", "") or "")
        # A list of SOP Instance UIDs (UID list matching): the lookup of a lost host's files.
        sops = query.get("SOPInstanceUID", "") or ""
        want_sops = {str(u) for u in sops} if isinstance(sops, MultiValue) else {str(sops)}
        want_sops.discard("")
        for study, series in studies.items():
            if want_study and study != want_study:
                continue
            if level == "STUDY":
                n = sum(len(i) for i in series.values())
                yield 0xFF00, _match(level, StudyInstanceUID=study, NumberOfStudyRelatedInstances=n)
                continue
            for series_uid, instances in series.items():
                if want_series and series_uid != want_series:
                    continue
                if level == "SERIES":
                    yield (
                        0xFF00,
                        _match(level, StudyInstanceUID=study, SeriesInstanceUID=series_uid),
                    )
                    continue
                for sop in sorted(instances):
                    if want_sops and sop not in want_sops:
                        continue
                    yield (
                        0xFF00,
                        _match(
                            level,
                            StudyInstanceUID=study,
                            SeriesInstanceUID=series_uid,
                            SOPInstanceUID=sop,
                        ),
                    )
        yield 0x0000, None

    ae = AE(AE_TITLE)
    ae.maximum_associations = 64
    ae.network_timeout = 30
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    handlers = [
        (evt.EVT_CONN_OPEN, on_open),
        (evt.EVT_CONN_CLOSE, on_close),
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_C_FIND, on_find),
    ]
    print(f"fleet pacs: listening on {address}:{port}", flush=True)
    ae.start_server((address, port), block=True, evt_handlers=handlers)


def _match(level: str, **values: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name, value in values.items():
        setattr(ds, name, value)
    return ds


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
