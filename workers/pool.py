"""Per-process association pool: lazy, reused across batches, self-healing.

One worker process holds at most one association per destination at a time (a Celery
prefork child runs one task at a time; never share an association between threads). It is
reused while it covers the SOP classes the next batch needs and has not been idle long
enough for the PACS to have closed it (Orthanc closes idle associations after 30 s).
A fleet-wide cap on associations per destination is honoured through leases
(`migrator.limits.slots`) held for as long as the association is open.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

from migrator.contexts import plan_profiles
from migrator.dul.association import Association
from migrator.errors import ConfigError, ConnectError
from migrator.jobconfig import JobConfig
from workers import metrics

log = logging.getLogger(__name__)

#: Reopen rather than reuse an association idle for longer than this (seconds): PACS close
#: idle associations (Orthanc: DicomScpTimeout, 30 s by default) and a send on a closed one
#: costs a timeout before the retry.
IDLE_REOPEN = 20.0
#: Refresh the fleet-wide slot lease (30 s) at most this often: one Redis round trip per
#: few seconds, not per file.
LEASE_REFRESH = 5.0


class Lease(Protocol):
    def refresh(self) -> bool: ...
    def release(self) -> None: ...


class LeaseProvider(Protocol):
    def __call__(self, config: JobConfig) -> Lease | None: ...


@dataclass
class _Entry:
    assoc: Association
    sop_classes: frozenset[str]
    lease: Lease | None
    last_used: float = field(default_factory=time.monotonic)
    last_refresh: float = field(default_factory=time.monotonic)


class AssociationPool:
    def __init__(self, lease_provider: LeaseProvider | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lease_provider = lease_provider
        self.opened = 0
        self.discarded = 0

    def get(self, config: JobConfig, pairs: set[tuple[str, str]]) -> Association:
        """An established association whose contexts cover ``pairs`` (SOP class, syntax)."""
        tls_settings = config.tls_settings
        key = f"{config.destination}|{config.calling_ae}|{config.transfer_syntax}|{tls_settings}"
        wanted = frozenset(sop for sop, _ in pairs)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            fresh = now - entry.last_used < IDLE_REOPEN
            if entry.assoc.is_alive and fresh and wanted <= entry.sop_classes:
                lease_ok = True
                if entry.lease is not None and now - entry.last_refresh > LEASE_REFRESH:
                    # A lost lease (expired during a long limiter wait) may have been
                    # handed to another worker: reopen under a new one, never exceed the cap.
                    lease_ok = entry.lease.refresh()
                    entry.last_refresh = now
                if lease_ok:
                    entry.last_used = now
                    return entry.assoc
            self._close(key, release=entry.assoc.is_alive)
        profiles = plan_profiles(pairs, forced_syntax=config.transfer_syntax)
        if len(profiles) > 1:
            # More than 128 contexts in one batch: use the first profile's classes; the
            # batch runner asks again for the rest.
            log.info("batch needs %d association profiles", len(profiles))
        profile = profiles[0]
        tls = _tls_context(config)
        lease = self._lease_provider(config) if self._lease_provider else None
        try:
            assoc = Association.request(
                config.host,
                config.port,
                config.called_ae,
                config.calling_ae,
                list(profile.contexts),
                max_pdu=config.max_pdu,
                timeouts=config.timeouts,
                tls=tls,
            )
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        self.opened += 1
        metrics.association_opened(config.destination)
        self._entries[key] = _Entry(assoc, profile.sop_classes, lease)
        return assoc

    def discard(self, assoc: Association) -> None:
        """Forget an association that died or must not be reused (outcome unknown)."""
        for key, entry in list(self._entries.items()):
            if entry.assoc is assoc:
                self.discarded += 1
                metrics.association_aborted(key.split("|", 1)[0])
                self._close(key, release=False)

    def _close(self, key: str, *, release: bool) -> None:
        entry = self._entries.pop(key)
        if release:
            entry.assoc.release()
        else:
            entry.assoc.abort()
        if entry.lease is not None:
            entry.lease.release()

    def close_all(self) -> None:
        for key in list(self._entries):
            self._close(key, release=True)


def _tls_context(config: JobConfig) -> ssl.SSLContext | None:
    """The job's TLS context (cached per process), or None for plain TCP.

    The files are this worker's: one that lacks them (or cannot read them) cannot reach the
    PACS, which is a connection failure for this batch (retried, maybe on another worker),
    not a property of the files being sent.
    """
    settings = config.tls_settings
    if settings is None:
        return None
    try:
        return settings.client_context()
    except ConfigError as exc:
        raise ConnectError(f"TLS on this worker: {exc}") from None
