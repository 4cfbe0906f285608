"""QIDO-RS (PS3.18 10.6): what a DICOMweb destination holds, for ``verify`` instead of C-FIND.

The same two questions as :class:`~migrator.verify.query.QueryClient`, on one keep-alive
HTTP connection: how many instances a study has (``GET {root}/studies?StudyInstanceUID=…``
with NumberOfStudyRelatedInstances), and which (``…/studies/{study}/series``, then
``…/series/{series}/instances``).

Every list is read page by page with ``limit``/``offset`` until a page comes back empty. A
short page is not taken as the end: servers may cap a page below the ``limit`` asked for
without saying so (PS3.18 only suggests a Warning header), and a missed page would report
stored instances as missing. A server that ignores ``offset`` (the same full page again) is
an error rather than a silent truncation.

Servers return more attributes than asked for (Orthanc adds patient name and ID); only the
UIDs and the count are read, nothing else is kept or logged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from migrator.dicomweb.auth import authorization
from migrator.dicomweb.url import root_path
from migrator.errors import ConnectError
from migrator.settings import Settings
from migrator.verify.pacs import PacsQueryError

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
#: Results asked for per request (``verify --qido-page``).
PAGE = 1000


class CredentialsRefused(PacsQueryError):
    """HTTP 401 or 403: the service does not let these credentials query."""


class QidoClient:
    """QIDO-RS queries to the job's DICOMweb root (a context manager)."""

    #: The name of the query in reasons and logs ("not found by QIDO-RS in its study").
    name = "QIDO-RS"

    def __init__(self, config: Settings, *, page: int = PAGE) -> None:
        assert config.dicomweb is not None
        self.config = config
        self.page = page
        self.queries = 0
        parts = urlsplit(config.dicomweb)
        self._where = f"{parts.scheme}://{parts.netloc}{root_path(config.dicomweb)}"
        self._root = root_path(config.dicomweb)
        self._headers = {"Accept": "application/dicom+json"}
        auth = authorization(config.dicomweb_token_file, config.dicomweb_basic_auth_file)
        if auth is not None:
            self._headers["Authorization"] = auth
        # One connection, kept alive: verify asks one question at a time.
        self._pool = urllib3.connection_from_url(
            config.dicomweb,
            maxsize=1,
            timeout=urllib3.Timeout(connect=config.acse_timeout, read=config.dimse_timeout),
            # A kept-alive connection the server closed between queries: ask once more
            # (GET is safe to repeat); no redirects (credentials must not follow them).
            retries=urllib3.Retry(total=1, redirect=False),
        )

    def __enter__(self) -> QidoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.close()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self._root}{path}?{urlencode(params)}"
        self.queries += 1
        try:
            resp = self._pool.request("GET", url, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectError(f"cannot reach {self._where} (QIDO-RS: {exc})") from None
        if resp.status in (401, 403):
            raise CredentialsRefused(
                f"{self._where} refuses our QIDO-RS queries (HTTP {resp.status}); check "
                "--dicomweb-token-file or --dicomweb-basic-auth-file"
            )
        if resp.status == 204:  # "no match" as some servers say it
            return []
        if resp.status != 200:
            raise PacsQueryError(
                f"QIDO-RS GET {self._where}{path} answered HTTP {resp.status}; does the "
                "service offer QIDO-RS at the same root as STOW-RS?"
            )
        try:
            data = json.loads(resp.data) if resp.data.strip() else []
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise PacsQueryError(f"QIDO-RS GET {self._where}{path}: not a DICOM JSON array")
        return [d for d in data if isinstance(d, dict)]

    def _all(self, path: str, key: str, params: dict[str, str] | None = None) -> list[str]:
        """Every value of ``key`` (a UID) in the matches, page by page until an empty page."""
        uids: list[str] = []
        seen: set[str] = set()
        offset = 0
        while True:
            query = {**(params or {}), "limit": str(self.page), "offset": str(offset)}
            page = [u for u in (_value(m, key) for m in self._get(path, query)) if u]
            fresh = [u for u in page if u not in seen]
            if not page:
                return uids
            if not fresh:
                if len(page) >= self.page:
                    raise PacsQueryError(
                        f"QIDO-RS {self._where}{path} ignores offset (the same page again); "
                        f"a larger --qido-page than {self.page} may list it in one page"
                    )
                return uids
            uids += fresh
            seen.update(fresh)
            offset += len(page)

    def study_count(self, study_uid: str) -> int:
        """NumberOfStudyRelatedInstances at the service; 0 when it has no such study."""
        found = self._get(
            "/studies",
            {"StudyInstanceUID": study_uid, "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES},
        )
        # Exact matching on a unique key: a server doing fuzzy matching could add others.
        mine = [m for m in found if _value(m, STUDY_INSTANCE_UID) == study_uid]
        return sum(int(_value(m, NUMBER_OF_STUDY_RELATED_INSTANCES) or 0) for m in mine)

    def study_instances(self, study_uid: str) -> set[str]:
        """Every SOP Instance UID the service holds in the study (series, then instances)."""
        study = f"/studies/{quote(study_uid)}"
        uids: set[str] = set()
        for series in self._all(f"{study}/series", SERIES_INSTANCE_UID):
            path = f"{study}/series/{quote(series)}/instances"
            uids.update(self._all(path, SOP_INSTANCE_UID))
        return uids


def _value(match: dict[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` as a string (IS comes as a number or a string in JSON)."""
    element = match.get(tag)
    if not isinstance(element, dict):
        return None
    value = element.get("Value")
    if not isinstance(value, list) or not value or value[0] is None:
        return None
    return str(value[0]).strip()
