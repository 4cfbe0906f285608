"""DICOM TLS (PS3.15 B.1, the Basic TLS Secure Transport Connection Profile): SSL contexts.

``TlsSettings`` holds file *paths* only (a CA bundle, a certificate, its private key), so it
can be stored in a job's configuration and shown in reports; the key's contents are read by
OpenSSL when a context is built and never kept or printed by us.

* Sender (``store``, ``run``): the server's certificate is verified against ``ca`` (the
  system trust store without it) and must name the host we connect to; ``cert``/``key`` are
  our client certificate, for a PACS that requires one.
* Receiver (``scp``): ``cert``/``key`` are the server's; with ``ca`` every client must
  present a certificate signed by it (mutual TLS), otherwise the handshake fails.

TLS 1.2 is the oldest version offered (PS3.15 B.1 allows 1.2 and 1.3).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migrator.errors import ConfigError

# ssl is imported where it is used: loading it costs every plain-TCP command ~10 ms.
if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True, slots=True)
class TlsSettings:
    #: PEM bundle of the CA(s) to trust: the server's (sender) or the clients' (receiver)
    ca: str | None = None
    #: PEM certificate (chain) we present; may also hold the private key
    cert: str | None = None
    #: PEM private key of ``cert`` when it is in a file of its own
    key: str | None = None
    #: The options' prefix, for messages: ``--tls`` (DICOM TLS), ``--dicomweb`` (https)
    flag: str = "--tls"

    def describe(self) -> str:
        """One line for logs and banners (paths only)."""
        parts = [f"CA {self.ca}" if self.ca else "system CAs"]
        if self.cert:
            parts.append(f"certificate {self.cert}")
        return ", ".join(parts)

    def client_context(self) -> ssl.SSLContext:
        """The sender's context (built once per process per settings). Raises ConfigError."""
        return _client_context(self)

    def server_context(self, *, require_client_cert: bool | None = None) -> ssl.SSLContext:
        """The receiver's context. Client certificates are required when ``ca`` is set.

        Raises ConfigError.
        """
        import ssl

        if not self.cert:
            raise ConfigError("a TLS receiver needs its certificate: --tls-cert (and --tls-key)")
        required = bool(self.ca) if require_client_cert is None else require_client_cert
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(ctx, self.cert, self.key, self.flag)
        if self.ca:
            _load_ca(ctx, self.ca, self.flag)
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_NONE
        return ctx


@functools.lru_cache(maxsize=8)
def _client_context(settings: TlsSettings) -> ssl.SSLContext:
    import ssl

    if settings.key and not settings.cert:
        raise ConfigError(
            f"{settings.flag}-key needs {settings.flag}-cert (the certificate of that key)"
        )
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca:
        _load_ca(ctx, settings.ca, settings.flag)
    if settings.cert:
        _load_chain(ctx, settings.cert, settings.key, settings.flag)
    return ctx


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} {path} is not readable")


def _load_ca(ctx: ssl.SSLContext, path: str, flag: str) -> None:
    import ssl

    _check_file(path, f"TLS CA file ({flag}-ca)")
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"TLS CA file ({flag}-ca) {path} holds no usable PEM certificate: {_reason(exc)}"
        ) from None


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None, flag: str) -> None:
    import ssl

    _check_file(cert, f"TLS certificate ({flag}-cert)")
    if key:
        _check_file(key, f"TLS private key ({flag}-key)")
    try:
        # No password callback: an encrypted key must not make OpenSSL prompt on a terminal.
        ctx.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, ValueError, TypeError) as exc:
        # ``from None``: OpenSSL's messages name the failing step, never the key material,
        # but nothing from the key file is worth chaining into a traceback either.
        raise ConfigError(
            f"cannot load the TLS certificate {cert}"
            + (f" with the key {key}" if key else "")
            + f": {_reason(exc)} (PEM certificate and matching unencrypted private key "
            "expected)"
        ) from None


def _no_password() -> str:
    raise ValueError("the private key is encrypted (a passphrase-protected key is not supported)")


def _reason(exc: BaseException) -> str:
    import ssl

    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc)


def handshake_failure(exc: BaseException, *, receiver: bool = False, flag: str = "--tls") -> str:
    """A human explanation of a failed TLS handshake or TLS read (``receiver``: ours);
    ``flag`` prefixes the options named (``--tls``, ``--dicomweb``)."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return (
            "the peer closed the connection in the middle of TLS (it may require a client "
            "certificate, or refuse ours: see its log)"
        )
    reason = str(getattr(exc, "reason", "") or "").upper()
    not_tls = (
        "the peer does not speak TLS (a sender without --tls?)"
        if receiver
        else "the peer does not speak TLS (a plain DICOM port?)"
    )
    explanations = {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate "
        f"({flag}-cert/{flag}-key)",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer presented no client certificate",
        "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate (bad certificate)",
        "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the CA of our certificate (unknown CA)",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate",
        "TLSV1_ALERT_ACCESS_DENIED": "the peer denied access",
        "WRONG_VERSION_NUMBER": not_tls,
        "HTTP_REQUEST": "the peer does not speak TLS (an HTTP request)",
        "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the handshake",
        "RECORD_LAYER_FAILURE": not_tls,
        "PACKET_LENGTH_TOO_LONG": not_tls,
    }
    if reason in explanations:
        return f"{explanations[reason]} ({reason.lower().replace('_', ' ')})"
    if reason:
        return reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
