"""What the transfer core tells the outside world: metrics hooks and the per-file log line.

``Observer`` is how a worker's Prometheus metrics (``workers/metrics.py``) learn of files,
associations and limiter waits without the core importing Celery-side code. The per-file
line goes to the ``migrator.files`` logger at INFO: ``-v`` on `store`, `run` and `worker`
shows it (one line per file), the default level does not.
"""

from __future__ import annotations

import logging
from typing import Protocol

from migrator import status as st
from migrator.outcomes import FileOutcome, State
from migrator.uidnames import name as uid_name

#: One line per file at INFO (``-v``). Lines name the file (its path or URI) as the user
#: gave it, which is why they are not on by default: paths may carry patient names.
files_log = logging.getLogger("migrator.files")


class Observer(Protocol):
    def file_done(self, outcome: FileOutcome) -> None: ...
    def limiter_waited(self, seconds: float) -> None: ...
    def association_opened(self) -> None: ...
    def association_aborted(self) -> None: ...


class _Null:
    def file_done(self, outcome: FileOutcome) -> None:
        pass

    def limiter_waited(self, seconds: float) -> None:
        pass

    def association_opened(self) -> None:
        pass

    def association_aborted(self) -> None:
        pass


NULL_OBSERVER: Observer = _Null()


def log_outcome(outcome: FileOutcome) -> None:
    """``stored /a/b.dcm: CT Image Storage, Explicit VR Little Endian, 0x0000, 1.8 ms``
    (and ``; reason`` when there is one)."""
    if not files_log.isEnabledFor(logging.INFO):
        return
    parts = []
    if outcome.sop_class_uid:
        parts.append(uid_name(outcome.sop_class_uid))
    ts = outcome.ts_sent or outcome.ts_original
    if ts:
        parts.append(uid_name(ts) + (" (re-encoded)" if outcome.transcoded else ""))
    if outcome.status is not None or outcome.state is not State.SKIPPED:
        parts.append(st.fmt(outcome.status))
    if outcome.seconds:
        parts.append(f"{outcome.seconds * 1000:.1f} ms")
    text = f"{outcome.state} {outcome.uri}: {', '.join(parts)}"
    if outcome.reason:
        text += f"; {outcome.reason}"
    files_log.info("%s", text)
