"""One way to open a DICOMweb HTTP(S) connection: STOW-RS, QIDO-RS, WADO-RS and the
preflight all go through here, so a custom CA or a client certificate (mutual TLS) given
for a service applies to every request made to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection, HTTPSConnection

if TYPE_CHECKING:
    from migrator.dul.tls import TlsSettings


def ssl_kwargs(tls: TlsSettings | None, https: bool) -> dict[str, Any]:
    """urllib3's ``ssl_context=`` when ``https`` with our own CA or certificate; else none
    (the system's CAs). Raises ConfigError for unreadable or mismatched files."""
    if not https or tls is None:
        return {}
    return {"ssl_context": tls.client_context()}


def connection(
    https: bool, host: str, port: int, timeout: float, tls: TlsSettings | None
) -> HTTPConnection:
    """An unopened HTTP(S) connection to ``host:port``."""
    if https:
        return HTTPSConnection(host, port, timeout=timeout, **ssl_kwargs(tls, True))
    return HTTPConnection(host, port, timeout=timeout)
