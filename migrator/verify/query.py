"""Study Root C-FIND: how many instances the PACS holds in a study, and which.

The count at STUDY level, the instances at SERIES then IMAGE level (steps 1 and 2 in
:mod:`migrator.verify`), on one association; every query holds the :class:`ReactorGuard`
lock for its request and all its responses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from migrator.errors import ConnectError, PacsQueryError
from migrator.settings import Settings
from migrator.status import fmt, meaning
from migrator.verify.pacs import associate, new_ae
from migrator.verify.reactor import ReactorGuard


class QueryClient:
    """Study Root C-FIND on one association (a context manager)."""

    #: The name of the query in reasons and logs ("not found by C-FIND in its study").
    name = "C-FIND"

    def __init__(self, config: Settings) -> None:
        self.config = config
        ae = new_ae(config)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self._assoc = associate(ae, config)
        self._guard = ReactorGuard(self._assoc)
        self.queries = 0

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._assoc.is_established:
            self._assoc.release()

    def find(
        self,
        level: str,
        keys: Mapping[str, str],
        returned: Iterable[str],
        *,
        cut: list[bool] | None = None,
    ) -> list[Dataset]:
        """The matches. ``cut``: a list the answer's "cut short" flag is appended to (a
        final 0xFE00 Cancel after matches: Orthanc's ``LimitFindResults`` answers so);
        without it, that answer is an error like any other failure status."""
        query = Dataset()
        query.QueryRetrieveLevel = level
        for name, value in keys.items():
            setattr(query, name, value)
        for name in returned:
            setattr(query, name, "")  # universal matching: "return this attribute"
        self.queries += 1
        matches = []
        try:
            with self._guard.lock:
                # Drain every response: the generator resumes pynetdicom's reactor at its end.
                responses = list(
                    self._assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                )
        except RuntimeError as exc:  # pynetdicom: "association ... must be established"
            raise ConnectError(
                f"{self.config.server} closed the association during C-FIND ({exc}); "
                f"does it allow C-FIND from AE {self.config.calling_ae}?"
            ) from None
        for status, identifier in responses:
            code = cast(int | None, getattr(status, "Status", None))
            if code is None:  # pynetdicom's empty response: timeout, abort, lost connection
                raise ConnectError(
                    f"no C-FIND response from {self.config.server} (aborted or timed out; "
                    f"does it allow C-FIND from AE {self.config.calling_ae}?)"
                )
            if code in (0xFF00, 0xFF01):  # pending: one match each
                if identifier is not None:
                    matches.append(identifier)
            elif code == 0xFE00 and cut is not None:
                cut.append(True)
            elif code != 0x0000:
                raise PacsQueryError(f"C-FIND at {level} level failed: {fmt(code)} {meaning(code)}")
        return matches

    def study_count(self, study_uid: str) -> int:
        """NumberOfStudyRelatedInstances at the PACS; 0 when it has no such study."""
        found = self.find(
            "STUDY", {"StudyInstanceUID": study_uid}, ["NumberOfStudyRelatedInstances"]
        )
        return sum(int(m.get("NumberOfStudyRelatedInstances", 0) or 0) for m in found)

    def study_instances(self, study_uid: str) -> set[str]:
        """Every SOP Instance UID the PACS holds in the study (SERIES, then IMAGE level)."""
        uids: set[str] = set()
        for series in self.find("SERIES", {"StudyInstanceUID": study_uid}, ["SeriesInstanceUID"]):
            keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series.SeriesInstanceUID}
            for image in self.find("IMAGE", keys, ["SOPInstanceUID"]):
                uids.add(str(image.SOPInstanceUID))
        return uids
