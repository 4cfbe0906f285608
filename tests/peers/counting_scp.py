"""An in-process pynetdicom Storage SCP that counts what a sender did to it.

It keeps nothing on disk; it records, per SOP Instance UID, how many C-STOREs arrived, and
the largest number of connections (associations) open at the same time: the fleet-wide
association cap is checked here, at the receiver, not in the sender's own bookkeeping.
``fail_uids`` answers a chosen status for chosen instances, to make `retry` tests possible.
With ``find=True`` it also answers Study Root C-FIND at IMAGE level for a list of SOP
Instance UIDs (what it stored; ``finds`` counts the queries), as a PACS answers the lookup
of a lost delivery's files (migrator/verify/held.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from migrator.netutil import free_port


class CountingScp:
    def __init__(
        self,
        *,
        response_delay: float = 0.0,
        ae_title: str = "COUNTING",
        a700_above: int | None = None,
        find: bool = False,
    ) -> None:
        self.find = find
        self.finds = 0
        #: SOP Instance UID -> (StudyInstanceUID, PatientID) of what was stored
        self.held: dict[str, tuple[str, str]] = {}
        self.ae_title = ae_title
        self.response_delay = response_delay
        #: A PACS with room for this many associations: a C-STORE that arrives while more
        #: are open is answered 0xA700 (out of resources) and not stored
        self.a700_above = a700_above
        #: (monotonic time, associations open) at every C-STORE answered
        self.seen_open: list[tuple[float, int]] = []
        self.refused = 0
        self.port = 0
        self.stores: Counter[str] = Counter()
        self.fail_uids: dict[str, int] = {}
        self.open_now = 0
        self.max_open = 0
        self.associations = 0
        self._lock = threading.Lock()
        self._server: Any = None

    def _on_accepted(self, event: Any) -> None:
        with self._lock:
            self.open_now += 1
            self.associations += 1
            self.max_open = max(self.max_open, self.open_now)

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            self.open_now -= 1

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.response_delay:
            time.sleep(self.response_delay)
        with self._lock:
            self.seen_open.append((time.monotonic(), self.open_now))
            if self.a700_above is not None and self.open_now > self.a700_above:
                self.refused += 1
                return 0xA700
            status = self.fail_uids.get(uid)
            if status is None:
                self.stores[uid] += 1
                ds = event.dataset
                self.held[uid] = (str(ds.StudyInstanceUID), str(ds.get("PatientID", "")))
        return 0x0000 if status is None else status

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        with self._lock:
            self.finds += 1
            held = dict(self.held)
        if str(query.QueryRetrieveLevel) != "IMAGE":
            yield 0xA900, None  # "identifier does not match SOP class": only what we need
            return
        wanted = query.SOPInstanceUID
        wanted = [str(u) for u in wanted] if isinstance(wanted, MultiValue) else [str(wanted)]
        for uid in wanted:
            if uid in held:
                match = Dataset()
                match.QueryRetrieveLevel = "IMAGE"
                match.SOPInstanceUID = uid
                match.StudyInstanceUID, match.PatientID = held[uid]
                yield 0xFF00, match
        yield 0x0000, None

    def start(self) -> CountingScp:
        ae = AE(self.ae_title)
        ae.maximum_associations = 64
        ae.network_timeout = 30
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.port = free_port()
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_STORE, self._on_store),
        ]
        if self.find:
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
            handlers.append((evt.EVT_C_FIND, self._on_find))
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def distinct(self) -> int:
        return len(self.stores)

    @property
    def total(self) -> int:
        return sum(self.stores.values())


@contextmanager
def counting_scp(**options: Any) -> Iterator[CountingScp]:
    scp = CountingScp(**options).start()
    try:
        yield scp
    finally:
        scp.stop()
