"""Every Redis key the migrator uses, built in one place.

Keys of one job share the hash tag ``{job}`` so that, on a Redis Cluster, a Lua script that
touches several of them stays on one shard. Limiter and slot keys are per destination, not
per job: two jobs to the same PACS share its limits.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "migrator"
#: Set of every job id ever created (for `migrator jobs`).
JOBS = f"{PREFIX}:jobs"


def heartbeat_key(node: str) -> str:
    """A worker node's heartbeat (workers/heartbeat.py writes it, check-health reads it)."""
    return f"{PREFIX}:heartbeat:{node}"


def limiter_key(destination: str) -> str:
    """GCRA state and limits for one destination (``host:port:AE``)."""
    return f"{PREFIX}:limit:{{{destination}}}"


def concurrency_key(destination: str) -> str:
    """The destination's congestion epoch for ``-j auto`` (migrator/limits/adaptive.py)."""
    return f"{PREFIX}:congestion:{{{destination}}}"


def breaker_key(destination: str) -> str:
    """The destination's circuit breaker (migrator/limits/breaker.py), fleet-wide."""
    return f"{PREFIX}:breaker:{{{destination}}}"


def slots_key(destination: str) -> str:
    """Fleet-wide association leases for one destination."""
    return f"{PREFIX}:slots:{{{destination}}}"


def slots_wanted_key(destination: str) -> str:
    """Set (for 2 s) by a sender that found every slot of ``destination`` taken: the
    senders that hold idle ones give them back between batches (migrator/transfer/batch.py)."""
    return f"{PREFIX}:slots-wanted:{{{destination}}}"


def source_limiter_key(source: str) -> str:
    """GCRA state of a ``dimse://`` source's own rate limit (``--source-rate-limit``):
    instances fetched from the old PACS, fleet-wide, apart from any destination's."""
    return f"{PREFIX}:source-limit:{{{source}}}"


def source_slots_key(source: str) -> str:
    """Fleet-wide association leases to a ``dimse://`` source (``--source-max-associations``)."""
    return f"{PREFIX}:source-slots:{{{source}}}"


@dataclass(frozen=True, slots=True)
class JobKeys:
    job_id: str

    def _k(self, name: str) -> str:
        return f"{PREFIX}:job:{{{self.job_id}}}:{name}"

    @property
    def config(self) -> str:
        """JSON of the job's Settings."""
        return self._k("config")

    @property
    def meta(self) -> str:
        """Hash: created, started, finished (epoch seconds)."""
        return self._k("meta")

    @property
    def counts(self) -> str:
        """Hash: planned, stored, failed, skipped, bytes_stored, warnings, transcoded."""
        return self._k("counts")

    @property
    def failures(self) -> str:
        """Set of failed file ids ``<batch>:<index>`` (for retry and reports)."""
        return self._k("failures")

    @property
    def timeline(self) -> str:
        """Hash epoch second -> files stored in that second."""
        return self._k("timeline")

    @property
    def timeline_bytes(self) -> str:
        """Hash epoch second -> bytes stored in that second."""
        return self._k("timeline_bytes")

    @property
    def batch_seq(self) -> str:
        return self._k("batch_seq")

    @property
    def batches(self) -> str:
        """Set of batch ids written."""
        return self._k("batches")

    @property
    def enqueued(self) -> str:
        """Set of batch ids handed to the broker."""
        return self._k("enqueued")

    @property
    def history(self) -> str:
        """List of JSON entries: the job's sending sessions (run, retry) and the changes made
        to it (its destination by `retry --host`, its rate limit by `limit`), in order."""
        return self._k("history")

    @property
    def verify(self) -> str:
        """Hash: the last `verify` of the job: counts, method, destination, time (verify.py)."""
        return self._k("verify")

    @property
    def verify_missing(self) -> str:
        """Hash file id -> reason, for stored files the PACS does not hold (last `verify`)."""
        return self._k("verify_missing")

    @property
    def verify_unconfirmed(self) -> str:
        """Hash file id -> reason, for stored files `verify` could confirm neither way."""
        return self._k("verify_unconfirmed")

    @property
    def reconcile(self) -> str:
        """Hash: the last reconciliation against the source's inventory (`verify` of a
        ``dimse://`` job): counts, source, destination, time (migrator/verify/reconcile.py)."""
        return self._k("reconcile")

    @property
    def reconcile_studies(self) -> str:
        """Hash study UID -> JSON [accession, at source, stored, at destination] (last
        reconciliation; the report's per-study completeness table)."""
        return self._k("reconcile_studies")

    @property
    def reconcile_missing(self) -> str:
        """Hash SOP Instance UID -> JSON {study, series, class, file}: at the source, not at
        the destination (last reconciliation; what `retry --missing` sends)."""
        return self._k("reconcile_missing")

    @property
    def control(self) -> str:
        """String: ``paused`` or ``cancelled`` while the job is so (absent: it runs);
        migrator/control.py."""
        return self._k("control")

    @property
    def parked(self) -> str:
        """Set of batch ids whose task found the job paused and was put aside (acked):
        `migrator resume` enqueues them again."""
        return self._k("parked")

    @property
    def urgent(self) -> str:
        """List of batch ids to send before any other (`migrator urgent`): every delivery
        takes them first (migrator/transfer/delivery.py)."""
        return self._k("urgent")

    @property
    def priority_files(self) -> str:
        """Hash file id -> priority class: ``priority-list`` (named by ``--priority-list``
        when planned) or ``urgent`` (named by `migrator urgent` while unsent); the others
        are "the rest". The report's per-class table (report/classes.py)."""
        return self._k("priority_files")

    def plan_bucket(self, prefix: str) -> str:
        """Small hashes URI-hash suffix -> batch id, by URI-hash prefix (planning dedup)."""
        return self._k(f"pl:{prefix}")

    def uid_bucket(self, prefix: str) -> str:
        """Small hashes UID-hash field (8 bytes, binary) -> owner file id (``b0000123:17``
        stored as the integer 123 << 14 | 17), by UID-hash prefix (4 hex digits): the first
        file sent with each SOP Instance UID (ledger.py ``claim_uids``, duplicates.py)."""
        return self._k(f"ui:{prefix}")

    def batch(self, batch_id: str) -> str:
        """The batch's planned files: zlib-compressed JSON rows (ledger.py)."""
        return self._k(f"batch:{batch_id}")

    def states(self, batch_id: str) -> str:
        """One byte per file of the batch: '.' in flight, 's' stored, 'f' failed, 'k' skipped."""
        return self._k(f"st:{batch_id}")

    def outcomes(self, batch_id: str) -> str:
        """Outcome lines of the batch's files, appended (the last line of a file wins)."""
        return self._k(f"out:{batch_id}")

    def deliveries(self, task_id: str) -> str:
        """Starts of a task that did not finish (poison detection)."""
        return self._k(f"deliveries:{task_id}")

    def opened(self, batch_id: str) -> str:
        """Tokens of the deliveries of a batch that began and did not end in good order (a
        set): a token left here by a lost delivery means files it may have sent unrecorded."""
        return self._k(f"opened:{batch_id}")

    def running(self, batch_id: str) -> str:
        """Lease of the worker running a batch (refuses a concurrent second delivery)."""
        return self._k(f"running:{batch_id}")
