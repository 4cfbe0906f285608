"""A workaround for pynetdicom's reactor thread taking our own DIMSE responses (issue #875).

Used on every association that verification opens: the C-FIND queries and the storage
commitment requests (see :class:`ReactorGuard`).
"""

from __future__ import annotations

import threading
from typing import Any

from pynetdicom.association import Association


class ReactorGuard:
    """Keep pynetdicom's reactor thread off our responses while we wait for them.

    pynetdicom 3.0.4 pauses its reactor before a request with a flag it can read while the
    reactor is past its pause point; the reactor then takes the peer's fast answer off the
    DIMSE queue, logs "Received unexpected C-FIND service message" and drops it (pynetdicom
    issue #875). Measured against Orthanc with TCP_NODELAY: 2 of 300 rounds lost a match (a
    whole series, i.e. false "missing" instances) or the final response (a DIMSE timeout).
    The guard makes the reactor's non-blocking reads return nothing while we hold its lock
    for a request and all its responses; between requests the reactor still serves the
    peer's own requests (an N-EVENT-REPORT on the same association).
    """

    def __init__(self, assoc: Association) -> None:
        self.lock = threading.Lock()
        original = assoc.dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            if block:  # our own thread, inside a send_*() that holds the lock
                return original(True)
            if not self.lock.acquire(blocking=False):
                return None, None
            try:
                return original(False)
            finally:
                self.lock.release()

        assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
