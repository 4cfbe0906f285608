"""A migration job's settings as stored in the ledger: what every worker needs to send.

No secrets are stored: S3 credentials come from each worker's own environment (the standard
AWS chain), and DICOM TLS is configured by file *paths* (CA, certificate, key) that must
exist on every worker, never by their contents; so a job's config can be printed in reports
as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from migrator.dul.association import Timeouts
from migrator.dul.tls import TlsSettings
from migrator.limits.rate import Limits


@dataclass(frozen=True, slots=True)
class JobConfig:
    host: str
    port: int = 11112
    called_ae: str = "ANY-SCP"
    calling_ae: str = "MIGRATOR"
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 16384
    transfer_syntax: str | None = None
    allow_lossy: bool = False
    retries: int = 3
    retry_backoff: float = 0.5
    rate_limit: float | None = None
    rate_limit_bytes: float | None = None  # bytes per second
    burst: int = 10
    #: Fleet-wide cap on simultaneous associations to this destination (None: no cap)
    max_associations: int | None = None
    throttle_delay: float = 0.0
    s3_endpoint: str | None = None
    s3_region: str | None = None
    #: DICOM TLS to the PACS; the paths are read on each worker (absolute paths advised)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def destination(self) -> str:
        """Key of the destination for fleet-wide limits: one PACS, one limit."""
        return f"{self.host}:{self.port}:{self.called_ae}"

    @property
    def server(self) -> str:
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
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
