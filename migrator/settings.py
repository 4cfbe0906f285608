"""One place for how and where to send: the settings of `store`, of a `run` job and of the
transfer core behind both.

A job's settings are stored in the ledger (``to_dict``) and read back by every worker, so
they hold no credentials: S3 credentials come from each worker's own environment (the
standard AWS chain), and DICOM TLS is configured by file *paths* (CA, certificate, key)
that must exist on every worker, never by their contents. The one secret is
``precheck_secret``, a random key (it keys the digests of PatientIDs in ``--precheck``'s
conflicts), masked in reports by its name as any configuration key naming a secret.

Every field but ``precheck_secret`` has a command-line option (``--host`` ...
``--concurrency``) and an environment variable ``MIGRATOR_<FIELD>``
(``migrator/commands/common.py``). Variables that configure the
processes rather than a transfer (the Redis URL, worker time limits, metrics, log format) are
read in ``migrator/env.py``.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from migrator.dul.association import Timeouts
from migrator.dul.tls import TlsSettings
from migrator.errors import ConfigError
from migrator.limits.rate import Limits

#: The syntaxes ``--transfer-syntax`` may force: the ones the project can encode into when a
#: file is in another (migrator/transcode.py UNCOMPRESSED). A compressed syntax cannot be
#: produced here, so forcing one would fail every file that is not already in it.
FORCEABLE_SYNTAXES = {
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian (explicit)",
    "1.2.840.10008.1.2": "Implicit VR Little Endian (implicit)",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (big-endian)",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Where to send and how. Defaults match the command line's."""

    host: str
    port: int = 11112
    called_ae: str = "ANY-SCP"
    calling_ae: str = "MIGRATOR"
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    #: TCP connect and any stalled socket write
    network_timeout: float = 60.0
    #: Largest PDU we accept (what we advertise); the peer's limit sizes what we send
    max_pdu: int = 16384
    #: Send every file in this syntax (re-encoded when needed); None: each in its own
    transfer_syntax: str | None = None
    allow_lossy: bool = False
    #: Re-sends of a file after a transient status or a lost association; also the
    #: connection attempts in a row before the destination counts as unavailable
    retries: int = 3
    retry_backoff: float = 0.5
    #: Files per second, all associations together (a fleet shares it through Redis)
    rate_limit: float | None = None
    #: Bytes per second
    rate_limit_bytes: float | None = None
    burst: int = 10
    #: Fleet-wide cap on simultaneous associations to this destination (None: no cap)
    max_associations: int | None = None
    #: Pause after each file, per association (seconds)
    throttle_delay: float = 0.0
    #: Associations one sending process keeps busy: `store -j`, and per worker process
    #: (and `run`'s own inline sender) in a job; 0 (``-j auto``): adapted to what the PACS
    #: and the link give (migrator/limits/adaptive.py)
    concurrency: int = 1
    #: `store`: overall deadline in seconds for the whole transfer (None: no limit)
    timeout: float | None = None
    #: A job whose destination stays unhealthy (its circuit breaker open) this long ends:
    #: its unsent files fail with the reason (None: wait for it to recover)
    give_up_after: float | None = None
    #: A job's schedule (migrator/limits/schedule.py, canonical inline text): the limits by
    #: time window, applied by the fleet-wide limiter; None: the limits above all the time
    schedule: str | None = None
    #: The order the job's files were planned in (migrator/ordering.py); `run`'s own sender
    #: then takes batches from the head of the plan, as the workers do
    order: str = "listing"
    #: The job's class among the jobs on one fleet (``--priority``: high, normal, low): its
    #: batches go to that class's queue, and every worker takes the high queue first
    priority: str = "normal"
    s3_endpoint: str | None = None
    s3_region: str | None = None
    #: DICOM TLS to the PACS; the paths are read by each sender (absolute paths advised)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: DICOMweb root URL (``https://host/dicom-web``): files go by STOW-RS instead of C-STORE
    #: (migrator/transfer/stow.py); None: DIMSE to host/port
    dicomweb: str | None = None
    #: Files naming the DICOMweb credentials, read by each sender (never the secret itself:
    #: settings are stored in the ledger and printed in reports)
    dicomweb_token_file: str | None = None
    dicomweb_basic_auth_file: str | None = None
    #: https to the DICOMweb destination: a CA to trust, our client certificate (and key)
    dicomweb_ca: str | None = None
    dicomweb_cert: str | None = None
    dicomweb_key: str | None = None
    #: A ``dicomweb+https://`` source: its credential files, CA and client certificate
    source_token_file: str | None = None
    source_basic_auth_file: str | None = None
    source_ca: str | None = None
    source_cert: str | None = None
    source_key: str | None = None
    #: Our AE title towards a ``dimse://`` source (None: ``calling_ae``); the old PACS must
    #: know it to answer C-GET
    source_calling_ae: str | None = None
    #: A ``dimse://`` source's own fleet-wide limits (the old archive, not the destination):
    #: instances fetched per second, and associations open to it at once (None: no limit)
    source_rate_limit: float | None = None
    source_max_associations: int | None = None
    #: How a ``dimse://`` source's instances are fetched: "get" (C-GET), "move" (C-MOVE to
    #: our own Storage SCP, ``move_ae`` on ``move_port``), "auto" (C-GET; C-MOVE when the
    #: source refuses C-GET's context)
    source_retrieve: str = "auto"
    move_ae: str | None = None
    move_port: int | None = None
    #: Instances per STOW-RS request at most, and bytes per request (a larger file goes alone)
    stow_batch_files: int = 16
    stow_batch_bytes: int = 16_000_000
    #: ``--coerce``: the rules file (absolute path; each sender reads it and its tables) and
    #: the sha256 the command checked it with (a sender whose copy differs fails the files)
    coerce: str | None = None
    coerce_digest: str = ""
    #: ``--on-conflict``: a later file with a stored file's SOP Instance UID and other
    #: content fails ("fail"), is skipped ("first-good"), or, with "skip", so is one whose
    #: first copy failed instead of being sent in its place (migrator/transfer/claims.py)
    on_conflict: str = "fail"
    #: ``--precheck``: before sending, ask the destination which of the files' instances it
    #: holds; one held under another PatientID or study is a conflict, not a send
    #: (migrator/transfer/precheck.py)
    precheck: bool = False
    #: ``--precheck``'s key (hex): a conflict's PatientIDs are reported as an HMAC under it,
    #: so that equal IDs show equal tokens in one job's report and no token can be looked
    #: up in a table of every possible ID. Drawn when the settings are made with
    #: ``precheck`` (a `run` job's once, at its creation, then read from Redis by every
    #: sender; each `store` command its own). The one secret here: never shown (reports
    #: mask it by its name, ``repr`` leaves it out), and it has no option.
    precheck_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.precheck and not self.precheck_secret:
            object.__setattr__(self, "precheck_secret", secrets.token_hex(16))
        forced = self.transfer_syntax
        if forced and forced not in FORCEABLE_SYNTAXES:
            can = ", ".join(FORCEABLE_SYNTAXES.values())
            raise ConfigError(
                f"--transfer-syntax {forced}: this tool cannot encode that syntax, so files in "
                f"other syntaxes could not be converted to it; it can force: {can}"
            )
        if self.on_conflict not in ("fail", "first-good", "skip"):
            raise ConfigError(f"--on-conflict: fail, first-good or skip, not {self.on_conflict}")
        if self.concurrency < 0:
            raise ConfigError(f"concurrency must be at least 1 (or auto), not {self.concurrency}")
        if self.dicomweb is not None:
            from migrator.dicomweb.url import check_dicomweb

            check_dicomweb(self)

    @property
    def dicomweb_tls(self) -> TlsSettings | None:
        """https settings of the DICOMweb destination (None: the system's CAs, no client
        certificate)."""
        if not (self.dicomweb_ca or self.dicomweb_cert):
            return None
        return TlsSettings(self.dicomweb_ca, self.dicomweb_cert, self.dicomweb_key, "--dicomweb")

    @property
    def source_tls(self) -> TlsSettings | None:
        """https settings of a ``dicomweb+https://`` source (as ``dicomweb_tls``)."""
        if not (self.source_ca or self.source_cert):
            return None
        return TlsSettings(self.source_ca, self.source_cert, self.source_key, "--source")

    @property
    def auto_concurrency(self) -> bool:
        return self.concurrency == 0

    @property
    def max_lanes(self) -> int:
        """Associations a sending process may keep at most: ``-j N`` (``-j auto``:
        adaptive.MAX_AUTO), never more than ``--max-associations``."""
        from migrator.limits.adaptive import MAX_AUTO

        lanes = self.concurrency or MAX_AUTO
        return min(lanes, self.max_associations) if self.max_associations else lanes

    @property
    def destination(self) -> str:
        """Key of the destination for fleet-wide limits: one PACS, one limit."""
        if self.dicomweb is not None:
            return f"dicomweb:{self.dicomweb}"
        return f"{self.host}:{self.port}:{self.called_ae}"

    @property
    def server(self) -> str:
        if self.dicomweb is not None:
            return f"{self.dicomweb} (STOW-RS)"
        return f"{self.host}:{self.port} ({self.called_ae})"

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            connect=self.network_timeout,
            acse=self.acse_timeout,
            dimse=self.dimse_timeout,
            network=self.network_timeout,
        )

    @property
    def limits(self) -> Limits:
        return Limits(self.rate_limit, self.rate_limit_bytes, burst_files=self.burst)

    @property
    def tls_settings(self) -> TlsSettings | None:
        if not self.tls:
            return None
        return TlsSettings(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Settings stored by any version: unknown keys are ignored, missing ones default."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
