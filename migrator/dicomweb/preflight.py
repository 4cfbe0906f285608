"""Before planning a job to a DICOMweb destination: is the service there, and does it let
us in? (What the C-ECHO preflight of `run`, `plan` and `retry` does for DIMSE.)"""

from __future__ import annotations

import http.client
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import urllib3

from migrator.dicomweb.auth import authorization
from migrator.dicomweb.https import connection
from migrator.dicomweb.url import root_path
from migrator.dul.tls import handshake_failure
from migrator.errors import ConfigError
from migrator.exitcodes import ExitStatus

if TYPE_CHECKING:
    from migrator.settings import Settings

_HTTP_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError)


def dicomweb_preflight(settings: Settings) -> tuple[str, ExitStatus] | None:
    """One QIDO-RS request (``GET {root}/studies?limit=1``), within the connect (ACSE)
    timeout: None when the service answers; else a line and the exit status, 3 when it
    cannot be reached (or answers nothing), 4 when it refuses our credentials (401, 403).

    Any other answer passes, 404 and 405 included: some services take STOW-RS and have no
    QIDO-RS; the files' own answers will say more than a guess here. Credential files that
    cannot be read here (a cluster's workers have their own) skip the check."""
    url = settings.dicomweb or ""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    try:
        auth = authorization(settings.dicomweb_token_file, settings.dicomweb_basic_auth_file)
        conn = connection(
            https,
            parts.hostname or "",
            parts.port or (443 if https else 80),
            settings.acse_timeout,
            settings.dicomweb_tls,
        )
    except ConfigError:
        return None
    where = f"{parts.scheme}://{parts.netloc}{root_path(url)}"
    headers = {"Accept": "application/dicom+json"}
    if auth is not None:
        headers["Authorization"] = auth
    try:
        conn.request("GET", root_path(url) + "/studies?limit=1", headers=headers)
        status = conn.getresponse().status
    except ssl.SSLError as exc:
        return (
            f"✗ DICOMweb {where}: the TLS handshake failed: "
            f"{handshake_failure(exc, flag='--dicomweb')} (--dicomweb-ca trusts a private CA)",
            ExitStatus.CANNOT_CONNECT,
        )
    except _HTTP_ERRORS as exc:
        return f"✗ DICOMweb {where} cannot be reached: {exc}", ExitStatus.CANNOT_CONNECT
    finally:
        conn.close()
    if status in (401, 403):
        said = "HTTP 401: credentials missing or refused" if status == 401 else "HTTP 403"
        return (
            f"✗ DICOMweb {where} refuses us ({said}); check --dicomweb-token-file or "
            "--dicomweb-basic-auth-file",
            ExitStatus.ASSOCIATION_REJECTED,
        )
    return None
