"""An in-process pynetdicom Storage SCP that misbehaves on marked datasets (TESTING.md §8).

A dataset whose ImageComments is ``abort_marker`` makes it ABORT the association (the C-STORE
gets no response, as when Orthanc chokes on a malformed file); one whose ImageComments is
``refuse_marker`` gets ``refuse_status`` (a permanent failure, 0xC000 by default). Everything
else is accepted and recorded: per SOP Instance UID, every stored copy with the association
it came on, its transfer syntax and its ImageComments, so a test can check at the receiver
what arrived, in which syntax, and on how many associations.

Sockets use TCP_NODELAY (TESTING.md §1.2); the server binds ``("127.0.0.1", 0)`` and reads the
port back, so there is no race for a free port (§1.1).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from migrator.netutil import patch_pynetdicom_nodelay

ABORT_MARKER = "ABORT-ME"
REFUSE_MARKER = "REFUSE-ME"


@dataclass(frozen=True, slots=True)
class Received:
    """One C-STORE the SCP answered with success."""

    association: int
    sop_class_uid: str
    transfer_syntax: str
    image_comments: str


class MarkerScp:
    def __init__(
        self,
        *,
        ae_title: str = "MARKER",
        abort_marker: str = ABORT_MARKER,
        refuse_marker: str = REFUSE_MARKER,
        refuse_status: int = 0xC000,
    ) -> None:
        self.ae_title = ae_title
        self.abort_marker = abort_marker
        self.refuse_marker = refuse_marker
        self.refuse_status = refuse_status
        self.port = 0
        #: SOP Instance UID → every copy stored (a re-send shows as a second entry)
        self.stored: dict[str, list[Received]] = {}
        #: TCP connections opened to us / associations we accepted
        self.connections = 0
        self.associations = 0
        #: C-STOREs answered by an abort / by ``refuse_status``, per SOP Instance UID
        self.aborted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._assoc_ids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._server: Any = None

    # ------------------------------------------------------------------ handlers

    def _association_id(self, assoc: Any) -> int:
        with self._lock:
            key = id(assoc)
            if key not in self._assoc_ids:
                self._assoc_ids[key] = next(self._ids)
            return self._assoc_ids[key]

    def _on_conn_open(self, event: Any) -> None:
        with self._lock:
            self.connections += 1

    def _on_accepted(self, event: Any) -> None:
        self._association_id(event.assoc)
        with self._lock:
            self.associations += 1

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        uid = str(ds.SOPInstanceUID)
        comments = str(ds.get("ImageComments", ""))
        if comments == self.abort_marker:
            with self._lock:
                self.aborted[uid] += 1
            event.assoc.abort()  # the status returned below is never sent
            return 0xC000
        if comments == self.refuse_marker:
            with self._lock:
                self.refused[uid] += 1
            return self.refuse_status
        received = Received(
            association=self._association_id(event.assoc),
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            transfer_syntax=str(event.context.transfer_syntax),
            image_comments=comments,
        )
        with self._lock:
            self.stored.setdefault(uid, []).append(received)
        return 0x0000

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MarkerScp:
        patch_pynetdicom_nodelay()
        ae = AE(self.ae_title)
        ae.maximum_associations = 32
        ae.network_timeout = 30
        ae.dimse_timeout = 30
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ------------------------------------------------------------------ what arrived

    @property
    def distinct(self) -> int:
        with self._lock:
            return len(self.stored)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(len(copies) for copies in self.stored.values())

    def stores_per_association(self) -> Counter[int]:
        with self._lock:
            return Counter(r.association for copies in self.stored.values() for r in copies)


@contextmanager
def marker_scp(**options: Any) -> Iterator[MarkerScp]:
    scp = MarkerScp(**options).start()
    try:
        yield scp
    finally:
        scp.stop()
