"""The ``--dicomweb URL`` form, checked before anything is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from migrator.errors import ConfigError

if TYPE_CHECKING:
    from migrator.settings import Settings


def check_dicomweb(settings: Settings) -> None:
    """Raise ConfigError for a DICOMweb destination this tool would misuse."""
    url = settings.dicomweb or ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--dicomweb {url!r}: expected the service's root URL, "
            "e.g. https://pacs.example.org/dicom-web"
        )
    if parts.username or parts.password:
        # The URL is stored in the job and printed in reports: no credentials in it.
        raise ConfigError(
            "--dicomweb: no user or password in the URL; give them in a file with "
            "--dicomweb-basic-auth-file (or a token with --dicomweb-token-file)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"--dicomweb {parts.scheme}://{parts.netloc}{parts.path}: no query")
    if settings.transfer_syntax:
        raise ConfigError(
            "--transfer-syntax applies to DIMSE; STOW-RS sends each file in its own syntax"
        )
    if settings.tls:
        raise ConfigError("--tls is DICOM TLS (DIMSE); for DICOMweb give an https:// URL")
    if settings.stow_batch_files < 1 or settings.stow_batch_bytes < 1:
        raise ConfigError("--stow-batch-files and --stow-batch-mb must be positive")


def root_path(url: str) -> str:
    """The URL's path without a trailing slash ("" for the server's root)."""
    return urlsplit(url).path.rstrip("/")
