"""QIDO-RS (PS3.18 10.6) over one keep-alive HTTP connection: GET a query, read every page.

Shared by `verify` against a DICOMweb destination (migrator/verify/qido.py) and by the
DICOMweb source's listing (migrator/sources/dicomweb.py), which differ only in what their
errors are (a query that fails verify vs a source that cannot be listed) and in the option
a user changes the page size with.

Every list is read page by page with ``limit``/``offset`` until a page comes back empty. A
short page is not taken as the end: servers may cap a page below the ``limit`` asked for
without saying so (PS3.18 only suggests a Warning header), and a missed page would lose
instances. A server that ignores ``offset`` (the same full page again) is an error rather
than a silent truncation.

Servers return more attributes than asked for (Orthanc adds patient name and ID); callers
read UIDs, dates and counts, and nothing of a match is logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import urllib3

from migrator.dicomweb.https import ssl_kwargs
from migrator.dicomweb.url import root_path
from migrator.errors import ConnectError, MigratorError

if TYPE_CHECKING:
    from migrator.dul.tls import TlsSettings

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
SOP_CLASS_UID = "00080016"
STUDY_DATE = "00080020"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
#: Results asked for per request.
PAGE = 1000


@dataclass(frozen=True)
class QidoErrors:
    """What a caller's failures are: ``failed`` for an answer that is not a result,
    ``refused`` for HTTP 401/403; ``page_option`` names the option that sets the page
    size, ``auth_options`` those that give credentials (both quoted in messages)."""

    failed: type[MigratorError]
    refused: type[MigratorError]
    page_option: str
    auth_options: str


class QidoHttp:
    """QIDO-RS queries to one DICOMweb root (a context manager)."""

    def __init__(
        self,
        url: str,
        *,
        authorization: str | None,
        connect_timeout: float,
        read_timeout: float,
        errors: QidoErrors,
        page: int = PAGE,
        tls: TlsSettings | None = None,
    ) -> None:
        self.page = page
        self.queries = 0
        self.errors = errors
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.netloc}{root_path(url)}"
        self._root = root_path(url)
        self._headers = {"Accept": "application/dicom+json"}
        if authorization is not None:
            self._headers["Authorization"] = authorization
        self._pool = urllib3.connection_from_url(
            url,
            maxsize=1,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # A kept-alive connection the server closed between queries: ask once more
            # (GET is safe to repeat); no redirects (credentials must not follow them).
            retries=urllib3.Retry(total=1, redirect=False),
            **ssl_kwargs(tls, parts.scheme == "https"),
        )

    def __enter__(self) -> QidoHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """One query's matches (one page)."""
        url = f"{self._root}{path}?{urlencode(params)}"
        self.queries += 1
        try:
            resp = self._pool.request("GET", url, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectError(f"cannot reach {self.where} (QIDO-RS: {exc})") from None
        if resp.status in (401, 403):
            raise self.errors.refused(
                f"{self.where} refuses our QIDO-RS queries (HTTP {resp.status}); check "
                f"{self.errors.auth_options}"
            )
        if resp.status == 204:  # "no match" as some servers say it
            return []
        if resp.status != 200:
            raise self.errors.failed(
                f"QIDO-RS GET {self.where}{path} answered HTTP {resp.status}; does the "
                "service offer QIDO-RS at this root?"
            )
        try:
            data = json.loads(resp.data) if resp.data.strip() else []
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise self.errors.failed(f"QIDO-RS GET {self.where}{path}: not a DICOM JSON array")
        return [d for d in data if isinstance(d, dict)]

    def matches(
        self, path: str, key: str, params: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every match with a value of ``key`` (a UID), each UID once, page by page until an
        empty page; a page is asked for only when the previous one was used up."""
        seen: set[str] = set()
        offset = 0
        while True:
            query = {**(params or {}), "limit": str(self.page), "offset": str(offset)}
            page = [(u, m) for m in self.get(path, query) if (u := value(m, key))]
            fresh = [(u, m) for u, m in page if u not in seen]
            if not page:
                return
            if not fresh:
                if len(page) >= self.page:
                    raise self.errors.failed(
                        f"QIDO-RS {self.where}{path} ignores offset (the same page again); "
                        f"a larger {self.errors.page_option} than {self.page} may list it "
                        "in one page"
                    )
                return
            for uid, match in fresh:
                seen.add(uid)
                yield match
            offset += len(page)

    def uids(self, path: str, key: str, params: dict[str, str] | None = None) -> list[str]:
        """Every value of ``key`` in the matches (see ``matches``)."""
        return [value(m, key) or "" for m in self.matches(path, key, params)]


def value(match: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` as a string (IS comes as a number or a string in JSON)."""
    element = match.get(tag)
    if not isinstance(element, dict):
        return None
    found = element.get("Value")
    if not isinstance(found, list) or not found or found[0] is None:
        return None
    return str(found[0]).strip()
