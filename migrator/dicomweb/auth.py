"""Credentials of a DICOMweb destination, read from files by each sender.

A job's settings are stored in its ledger and printed in reports, so they name files, never
secrets (as for DICOM TLS keys). The file is read again at each new connection: a cloud
token that is refreshed in place (they expire in about an hour) is picked up without a
restart. The value only ever goes into the ``Authorization`` header; no message quotes it.
"""

from __future__ import annotations

import base64

from migrator.errors import ConfigError


def authorization(
    token_file: str | None,
    basic_auth_file: str | None,
    *,
    options: tuple[str, str] = ("--dicomweb-token-file", "--dicomweb-basic-auth-file"),
) -> str | None:
    """The ``Authorization`` header value, or None when no credentials are configured.

    ``token_file``: a bearer token (surrounding whitespace ignored). ``basic_auth_file``:
    ``user:password`` on its first line. ``options`` name them in messages."""
    if token_file:
        token = _read(token_file, options[0])
        return f"Bearer {token}"
    if basic_auth_file:
        line = _read(basic_auth_file, options[1]).splitlines()[0]
        if ":" not in line:
            raise ConfigError(
                f"{options[1]} {basic_auth_file}: expected user:password on its first line"
            )
        return "Basic " + base64.b64encode(line.encode()).decode("ascii")
    return None


def _read(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{option} {path}: the file is empty")
    return value
