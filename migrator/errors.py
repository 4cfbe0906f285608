"""The migrator's exception tree: one place decides whether a failure is retried.

    MigratorError                  retryable = False unless a branch says otherwise
    ├── ConfigError                bad arguments or settings; nothing was attempted
    ├── TransientError             may succeed later: retried with backoff (retryable)
    │   ├── ConnectError           the destination (or a source PACS) could not be used now
    │   │   ├── AssociationLost    the association died mid-operation: outcome unknown
    │   │   ├── DestinationUnavailable   no association after the configured attempts
    │   │   └── SlotTimeout        no fleet-wide association slot in time
    │   ├── BatchBusy              another delivery is sending this batch right now
    │   ├── Deferred               files wait for another file's outcome (duplicates)
    │   │   └── DestinationUnhealthy   the fleet's breaker for the destination is open
    │   └── WouldWait              a sender that may not wait (run's inline sender) stops
    ├── PermanentError             retrying will not help: recorded as failed
    │   ├── AssociationRejected    A-ASSOCIATE-RJ; retryable when the PACS said "transient"
    │   ├── SourceError            the input cannot be read, vanished, or is not DICOM
    │   └── (TranscodeError, PacsQueryError: in their modules)
    └── JobGone                    the job left Redis (or was planned anew): drop, no retry

``is_retryable(exc)`` is the one test the senders and the Celery task use. Each error
carries a message that is safe to log (UIDs, AE titles, counts; never patient data or
secrets).
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base of every error the migrator raises on purpose."""

    @property
    def retryable(self) -> bool:
        return False


class ConfigError(MigratorError):
    """Bad arguments or settings."""


class TransientError(MigratorError):
    """A failure that may go away: retried with backoff."""

    @property
    def retryable(self) -> bool:
        return True


class ConnectError(TransientError):
    """The peer could not be reached, or the association was lost.

    ``unreachable``: nothing answered at the TCP level (refused, no route, no such host, a
    connect timeout): the PACS is down or the address is wrong. Otherwise something answered
    and misbehaved (no answer to the association request, a closed connection, an abort):
    a PACS that is up but unhealthy, which the circuit breaker counts."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class AssociationLost(ConnectError):
    """The association died mid-operation; the last operation's outcome is unknown.

    ``by_peer``: the peer ended it (A-ABORT, reset, closed) rather than our own timeout. A
    file during whose sending the PACS aborts twice is that file's fault (the policy fails
    it instead of retrying it for ever)."""

    def __init__(self, message: str, *, by_peer: bool = False) -> None:
        super().__init__(message)
        self.by_peer = by_peer


class DestinationUnavailable(ConnectError):
    """No association could be opened after the configured attempts. ``rejected``: the
    last attempt was an A-ASSOCIATE-RJ (busy), not a network failure."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class SlotTimeout(ConnectError):
    """No fleet-wide association slot became free in time."""


class BatchBusy(TransientError):
    """Another delivery of the same batch is running (Redis delivered it twice)."""

    def __init__(self, batch_id: str, retry_in: float) -> None:
        super().__init__(f"batch {batch_id} is being sent by another worker")
        self.retry_in = retry_in


class Deferred(TransientError):
    """Files of a batch wait for the outcome of another copy of their SOP Instance (sent by
    another batch, still in flight): the batch comes back for them later."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class JobPaused(Deferred):
    """The job is paused (`migrator pause`): a batch stops taking files, what it sent is
    recorded, the rest waits; a worker's task is put aside until `migrator resume`."""

    def __init__(self, job_id: str, retry_in: float = 5.0) -> None:
        super().__init__(f"job {job_id} is paused", retry_in)
        self.job_id = job_id


class ScheduledPause(Deferred):
    """The schedule's window now has ``rate=0`` (migrator/limits/schedule.py): nothing is
    sent until it ends; the batch stops and comes back then."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"a paused window of the schedule (for {retry_in:.0f} s more)", retry_in)


class DestinationUnhealthy(Deferred):
    """The destination's circuit breaker is open (migrator/limits/breaker.py): nothing is
    sent to it until a probe succeeds; the batch comes back when the next probe is due."""

    def __init__(self, message: str, retry_in: float, *, since: float, reason: str) -> None:
        super().__init__(message, retry_in)
        self.since = since
        self.reason = reason


class WouldWait(TransientError):
    """A sender that must not wait (``run`` sending while its workers boot) met something
    that needs a wait (a retry, a busy PACS): it stops and leaves the rest to the workers."""


class PermanentError(MigratorError):
    """A failure that retrying will not fix."""


class AssociationRejected(PermanentError):
    """A-ASSOCIATE-RJ from the peer.

    ``transient`` is True for result 2 (rejected-transient, e.g. a busy PACS), which the
    sender retries; result 1 (rejected-permanent: wrong AE title...) is not retried.
    """

    def __init__(self, message: str, *, result: int, source: int, reason: int) -> None:
        super().__init__(message)
        self.result = result
        self.source = source
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.result == 2

    @property
    def retryable(self) -> bool:
        return self.transient


class PacsQueryError(PermanentError):
    """The PACS answered, but refused the query or the commitment request. (Here, not in
    migrator/verify/pacs.py, so that listing an old PACS does not import pynetdicom.)"""


def rejected(server: str, exc: AssociationRejected) -> AssociationRejected:
    """Our upper layer's rejection, said as the PACS's (``server`` named first)."""
    return AssociationRejected(
        f"{server} rejected the association: {exc}",
        result=exc.result,
        source=exc.source,
        reason=exc.reason,
    )


class SourceError(PermanentError):
    """The source file or object cannot be read, vanished, or is not DICOM."""


class JobGone(MigratorError):
    """The job is no longer in Redis (its data was lost: a restart without persistence, a
    flush, an eviction), or was lost and planned again: what a worker would record has no
    place in the ledger, or would land in the new plan's files."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"job {job_id} is gone from Redis (restarted without persistence, flushed or "
            "evicted?) or was planned anew since this batch was queued"
        )
        self.job_id = job_id


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again later may succeed: the tree above decides, nothing else."""
    return isinstance(exc, MigratorError) and exc.retryable
