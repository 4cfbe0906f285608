"""``DicomwebSource``: an archive's instances listed by QIDO-RS and fetched by WADO-RS.

``dicomweb+https://host/dicom-web`` (or ``dicomweb+http://``) is a source like a folder or
an ``s3://`` prefix. Listing asks QIDO-RS for the studies (optionally in a StudyDate window
and for one modality), then each study's series, then each series' instances, page by page
(migrator/dicomweb/qido.py); each instance becomes one item whose URI is its WADO-RS URL
with the ``dicomweb+`` prefix:
``dicomweb+https://host/dicom-web/studies/{study}/series/{series}/instances/{sop}``.

The planner plans these like a manifest's lines (``iter_entries``: UIDs known, no header
read), so planning costs one QIDO-RS query per series, not one download per instance.
Sending fetches each instance once: the worker reads its header from the downloaded
spool file, and the send that follows takes that same file (``fetch`` keeps a fetched
file until the next fetch of the item: migrator/sources/held.py).

Archives cap how many results a query returns. Every list is read page by page with
``limit``/``offset``; a server that caps the total without paging is named with
``find_limit``: a date window that returns that many studies is split in two, down to one
day, so that no study is silently missed (a day still at the cap is an error naming it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import urllib3

from migrator.dicomweb.auth import authorization
from migrator.dicomweb.https import ssl_kwargs
from migrator.dicomweb.qido import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    QidoErrors,
    QidoHttp,
)
from migrator.dicomweb.wado import ACCEPT, BLOCK, boundary_of, save_single_part
from migrator.errors import ConfigError, ConnectError, SourceError, TransientError
from migrator.sources.base import Payload, SourceItem
from migrator.sources.held import HeldFiles, unlink
from migrator.sources.manifest import ManifestEntry
from migrator.sources.windows import StudyQuery, dicom_range, studies

if TYPE_CHECKING:
    from migrator.dul.tls import TlsSettings

PREFIX = "dicomweb+"

_CREDENTIAL_OPTIONS = ("--source-token-file", "--source-basic-auth-file")
_ERRORS = QidoErrors(
    failed=SourceError,
    refused=SourceError,
    page_option="page",
    auth_options=" or ".join(_CREDENTIAL_OPTIONS),
)


def is_dicomweb(uri: str) -> bool:
    return uri.startswith(("dicomweb+http://", "dicomweb+https://"))


def service_url(uri: str) -> str:
    """The HTTP(S) root of a source or item URI (``dicomweb+`` and any ``/studies/…`` cut)."""
    url = uri[len(PREFIX) :] if uri.startswith(PREFIX) else uri
    at = url.find("/studies/")
    return (url[:at] if at >= 0 else url).rstrip("/")


class DicomwebSource:
    """The instances of a DICOMweb service (see the module's docstring)."""

    def __init__(
        self,
        uri: str,
        *,
        query: StudyQuery | None = None,
        credentials: tuple[str | None, str | None] = (None, None),
        tls: TlsSettings | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        page: int = 1000,
    ) -> None:
        url = service_url(uri)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{uri!r}: expected dicomweb+https://host/dicom-web (the service's root URL)"
            )
        if parts.username or parts.password or parts.query:
            raise ConfigError(f"{uri!r}: no user, password or query in a DICOMweb source URL")
        self.url = url
        self.uri = PREFIX + url
        self.query = query or StudyQuery()
        #: (token file, basic auth file): read again at each request (a refreshed token)
        self._credentials = credentials
        self._tls = tls
        self._timeouts = (connect_timeout, read_timeout)
        self._page = page
        self._pool: urllib3.PoolManager | None = None
        self._held = HeldFiles("migrator-wado-")

    def __repr__(self) -> str:
        return f"DicomwebSource({self.uri!r})"

    # -- listing ---------------------------------------------------------------------------

    def iter_items(self) -> Iterator[SourceItem]:
        for entry in self.iter_entries():
            yield SourceItem(entry.uri, 0)

    def iter_entries(self) -> Iterator[ManifestEntry]:
        """Every instance, study by study, with its UIDs (sizes are unknown: 0)."""
        with self._qido() as qido:
            for study in studies(self.query, lambda d: self._window(qido, d), self.uri):
                path = f"/studies/{quote(study)}"
                for series in qido.uids(f"{path}/series", SERIES_INSTANCE_UID):
                    spath = f"{path}/series/{quote(series)}/instances"
                    for sop in qido.uids(spath, SOP_INSTANCE_UID):
                        uri = f"{self.uri}{spath}/{quote(sop)}"
                        yield ManifestEntry(0, uri, 0, sop, study)

    def _authorization(self) -> str | None:
        try:
            return authorization(*self._credentials, options=_CREDENTIAL_OPTIONS)
        except ConfigError as exc:
            raise SourceError(f"{self.uri}: {exc}") from None

    def _qido(self) -> QidoHttp:
        return QidoHttp(
            self.url,
            authorization=self._authorization(),
            tls=self._tls,
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
            errors=_ERRORS,
            page=self._page,
        )

    def _window(
        self, qido: QidoHttp, dates: tuple[dt.date, dt.date] | None
    ) -> tuple[list[str], bool]:
        params: dict[str, str] = {}
        if dates is not None:
            params["StudyDate"] = dicom_range(dates)
        if self.query.modality:
            params["ModalitiesInStudy"] = self.query.modality
        # QIDO-RS has no "cut short" signal: only --find-limit tells a capped answer.
        return qido.uids("/studies", STUDY_INSTANCE_UID, params), False

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, item: SourceItem) -> contextlib.AbstractContextManager[Payload]:
        return self._held.fetch(item.uri, lambda: self._download(item))

    def _download(self, item: SourceItem) -> tuple[str, int]:
        if not is_dicomweb(item.uri):
            raise SourceError(f"{item.uri}: not a DICOMweb instance URI")
        url = item.uri[len(PREFIX) :]
        headers = {"Accept": ACCEPT}
        auth = self._authorization()
        if auth is not None:
            headers["Authorization"] = auth
        try:
            resp = self._http().request(
                "GET", url, headers=headers, preload_content=False, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectError(f"cannot reach {self.url} (WADO-RS: {exc})") from None
        try:
            return self._save(item, resp)
        finally:
            resp.release_conn()

    def _save(self, item: SourceItem, resp: Any) -> tuple[str, int]:
        where = item.uri
        if resp.status in (401, 403):
            raise SourceError(
                f"{where}: the source refuses our credentials (HTTP {resp.status}); check "
                "--source-token-file or --source-basic-auth-file"
            )
        if resp.status == 404:
            raise SourceError(f"{where}: no longer at the source (WADO-RS: HTTP 404)")
        if resp.status in (429, 503) or resp.status >= 500:
            raise TransientError(f"{where}: the source answered HTTP {resp.status}")
        if resp.status != 200:
            raise SourceError(f"{where}: the source answered HTTP {resp.status} (WADO-RS)")
        boundary = boundary_of(resp.headers.get("Content-Type", ""))
        if boundary is None:
            raise SourceError(
                f"{where}: the WADO-RS answer is {resp.headers.get('Content-Type')!r}, "
                "not multipart/related"
            )
        path = self._held.new_path()
        try:
            with open(path, "wb") as out:
                size = save_single_part(resp.stream(BLOCK), boundary, out, where)
        except urllib3.exceptions.HTTPError as exc:
            unlink(path)
            raise TransientError(f"{where}: the download was interrupted ({exc})") from None
        except BaseException:
            unlink(path)
            raise
        return path, size

    def _http(self) -> urllib3.PoolManager:
        if self._pool is None:
            connect, read = self._timeouts
            self._pool = urllib3.PoolManager(
                maxsize=4,
                timeout=urllib3.Timeout(connect=connect, read=read),
                retries=urllib3.Retry(total=1, redirect=False),
                **ssl_kwargs(self._tls, self.url.startswith("https:")),
            )
        return self._pool
