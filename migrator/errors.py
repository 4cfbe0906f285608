"""The migrator's exception tree.

    MigratorError
    ├── ConfigError            bad arguments or settings; nothing was attempted
    ├── TransientError         may succeed later: retry with backoff
    │   └── ConnectError       peer unreachable, refused, timed out, aborted
    └── PermanentError         will not succeed by retrying: record as failed
        ├── AssociationRejected  the peer said no to the association itself
        └── SourceError          the input file/object cannot be read or is not DICOM

Each carries a human-readable message that is safe to log (UIDs and AE titles,
never patient data or secrets).
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base of every error the migrator raises on purpose."""


class ConfigError(MigratorError):
    """Bad arguments or settings."""


class TransientError(MigratorError):
    """A failure that may go away: retried with backoff."""


class ConnectError(TransientError):
    """The peer could not be reached or the association was lost."""


class PermanentError(MigratorError):
    """A failure that retrying will not fix."""


class AssociationRejected(PermanentError):
    """A-ASSOCIATE-RJ from the peer.

    ``transient`` is True for result 2 (rejected-transient, e.g. a busy PACS), which the
    sender retries; result 1 (rejected-permanent) is not retried.
    """

    def __init__(self, message: str, *, result: int, source: int, reason: int) -> None:
        super().__init__(message)
        self.result = result
        self.source = source
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.result == 2


class SourceError(PermanentError):
    """The source file or object cannot be read, vanished, or is not DICOM."""
