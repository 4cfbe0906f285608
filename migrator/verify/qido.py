"""QIDO-RS (PS3.18 10.6): what a DICOMweb destination holds, for ``verify`` instead of C-FIND.

The same two questions as :class:`~migrator.verify.query.QueryClient`, on one keep-alive
HTTP connection (migrator/dicomweb/qido.py, which reads every page and refuses a server
that ignores ``offset``): how many instances a study has (``GET {root}/studies?
StudyInstanceUID=…`` with NumberOfStudyRelatedInstances), and which (``…/studies/{study}/
series``, then ``…/series/{series}/instances``).
"""

from __future__ import annotations

from urllib.parse import quote

from migrator.dicomweb.auth import authorization
from migrator.dicomweb.qido import (
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    PAGE,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    QidoErrors,
    QidoHttp,
    value,
)
from migrator.errors import PacsQueryError
from migrator.settings import Settings

__all__ = ["PAGE", "CredentialsRefused", "QidoClient"]


class CredentialsRefused(PacsQueryError):
    """HTTP 401 or 403: the service does not let these credentials query."""


_ERRORS = QidoErrors(
    failed=PacsQueryError,
    refused=CredentialsRefused,
    page_option="--qido-page",
    auth_options="--dicomweb-token-file or --dicomweb-basic-auth-file",
)


class QidoClient:
    """QIDO-RS queries to the job's DICOMweb root (a context manager)."""

    #: The name of the query in reasons and logs ("not found by QIDO-RS in its study").
    name = "QIDO-RS"

    def __init__(self, config: Settings, *, page: int = PAGE) -> None:
        assert config.dicomweb is not None
        self.config = config
        self.http = QidoHttp(
            config.dicomweb,
            authorization=authorization(
                config.dicomweb_token_file, config.dicomweb_basic_auth_file
            ),
            connect_timeout=config.acse_timeout,
            read_timeout=config.dimse_timeout,
            errors=_ERRORS,
            page=page,
            tls=config.dicomweb_tls,
        )

    @property
    def queries(self) -> int:
        return self.http.queries

    @property
    def page(self) -> int:
        return self.http.page

    def __enter__(self) -> QidoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def study_count(self, study_uid: str) -> int:
        """NumberOfStudyRelatedInstances at the service; 0 when it has no such study."""
        found = self.http.get(
            "/studies",
            {"StudyInstanceUID": study_uid, "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES},
        )
        # Exact matching on a unique key: a server doing fuzzy matching could add others.
        mine = [m for m in found if value(m, STUDY_INSTANCE_UID) == study_uid]
        return sum(int(value(m, NUMBER_OF_STUDY_RELATED_INSTANCES) or 0) for m in mine)

    def study_instances(self, study_uid: str) -> set[str]:
        """Every SOP Instance UID the service holds in the study (series, then instances)."""
        study = f"/studies/{quote(study_uid)}"
        uids: set[str] = set()
        for series in self.http.uids(f"{study}/series", SERIES_INSTANCE_UID):
            path = f"{study}/series/{quote(series)}/instances"
            uids.update(self.http.uids(path, SOP_INSTANCE_UID))
        return uids
